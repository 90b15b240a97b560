"""For each method shared with HF peft: peftlab options and the equivalent peft config, per architecture.

A peft factory takes the architecture and the module names peftlab's options adapt on it (exact names,
which peft's list matching accepts), so both sides adapt the same layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import peft
import torch

# peft's own short names for the modules peftlab's presets pick on the tiny models.
LORA_TARGETS = {"bert": ["query", "value"], "t5": ["q", "v"], "llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
IA3_TARGETS = {
    "bert": (r".*layer\.\d+\.(attention\.self\.(key|value)|output\.dense)", r".*layer\.\d+\.output\.dense"),
    "t5": (["k", "v", "wo"], ["wo"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
}
TASKS = {"bert": "SEQ_CLS", "t5": "SEQ_2_SEQ_LM", "llama": "CAUSAL_LM", "gpt2": "CAUSAL_LM"}


def lora(arch: str, names: list[str] | None = None, **extra) -> peft.LoraConfig:
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[arch], fan_in_fan_out=arch == "gpt2", **extra)


def ia3(arch: str, names: list[str]) -> peft.IA3Config:
    targets, feedforward = IA3_TARGETS[arch]
    return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, fan_in_fan_out=arch == "gpt2")


Factory = Callable[[str, list[str]], Any]
# method -> (peftlab options, peft config factory)
CASES: dict[str, tuple[dict, Factory]] = {
    "lora": ({"rank": 4, "alpha": 8.0}, lora),
    "ia3": ({}, ia3),
    "dora": ({"rank": 4, "alpha": 8.0}, lambda arch, names: lora(arch, use_dora=True)),
    "loha": ({"rank": 4, "alpha": 4.0}, lambda arch, names: peft.LoHaConfig(r=4, alpha=4, target_modules=names)),
    "lokr": ({"rank": 4, "alpha": 4.0}, lambda arch, names: peft.LoKrConfig(r=4, alpha=4, target_modules=names)),
    "adalora": ({"total_steps": 10, "init_rank": 3, "target_rank": 2, "alpha": 6.0},
                lambda arch, names: peft.AdaLoraConfig(init_r=3, target_r=2, lora_alpha=6, total_step=10,
                                                       target_modules=names)),
    "vera": ({"rank": 8, "d_initial": 1.0}, lambda arch, names: peft.VeraConfig(r=8, target_modules=names, d_initial=1.0)),
    "oft": ({"oft_block_size": 8},
            lambda arch, names: peft.OFTConfig(oft_block_size=8, use_cayley_neumann=False, target_modules=names)),
    "boft": ({"boft_block_size": 4, "boft_n_butterfly_factor": 2},
             lambda arch, names: peft.BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=2, target_modules=names)),
    "hra": ({"r": 4}, lambda arch, names: peft.HRAConfig(r=4, target_modules=names)),
    "prompt_tuning": ({"num_virtual_tokens": 3},
                      lambda arch, names: peft.PromptTuningConfig(task_type=TASKS[arch], num_virtual_tokens=3)),
    "prefix_tuning": ({"num_virtual_tokens": 3, "reparameterize": False, "positions": "after_prefix"},
                      lambda arch, names: peft.PrefixTuningConfig(task_type=TASKS[arch], num_virtual_tokens=3)),
    "ln_tuning": ({}, lambda arch, names: peft.LNTuningConfig(target_modules=names)),
    "trainable_tokens": ({"token_indices": (53, 67, 5)},  # 53 and 67 are in the probe input
                         lambda arch, names: peft.TrainableTokensConfig(token_indices=[53, 67, 5])),
}
# Extra peftlab options per (method, architecture).
EXTRA = {("prompt_tuning", "bert"): {"modules_to_save": ["classifier"]}}
# Combinations peft itself cannot build.
SKIP = {("loha", "gpt2"): "peft's LoHa does not wrap Conv1D", ("oft", "gpt2"): "peft's OFT does not wrap Conv1D",
        ("hra", "gpt2"): "peft's HRA does not wrap Conv1D", ("boft", "gpt2"): "peft's BOFT does not wrap Conv1D",
        ("lokr", "gpt2"): "peft's LoKr does not wrap Conv1D",
        ("prefix_tuning", "bert"): "peft's prefix tuning needs past_key_values, which transformers 5's BertModel lacks",
        ("prefix_tuning", "t5"): "peft's T5 prefix gets relative position bias as cached tokens; peftlab's gets none"}


class CPUBlockDiagonal:
    """A CPU stand-in for peft's CUDA ``fbd_cuda`` kernel (block-diagonal matrices from (N, D, H, H) blocks).
    Without that kernel peft's BOFT silently keeps one butterfly factor and retries the CUDA build for every
    layer; with this, peft builds BOFT on CPU as it does on a GPU."""

    @staticmethod
    def forward(blocks):
        return [torch.stack([torch.block_diag(*factor) for factor in blocks])]

    @staticmethod
    def backward(grad, blocks):
        n, d, h, _ = blocks.shape
        index = torch.arange(d)
        grad = grad.reshape(n, d, h, d, h)[:, index, :, index].permute(1, 0, 2, 3)  # the diagonal blocks
        return [grad.contiguous()]


@contextlib.contextmanager
def peft_boft_on_cpu():
    """peft's BOFT with its block-diagonal kernel replaced by :class:`CPUBlockDiagonal`."""
    from peft.tuners.boft import layer

    original = layer.get_fbd_cuda
    layer.get_fbd_cuda = lambda: CPUBlockDiagonal
    try:
        yield
    finally:
        layer.get_fbd_cuda = original

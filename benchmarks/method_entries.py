"""Each method the side-by-side benchmark runs, in peftlab and in HF peft, on the same modules with the same
hyper-parameters. A method is one :class:`MethodEntry`; adding a method both libraries have is adding an
entry to :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftlab.core.targeting import find_modules
from workloads import Workload


def module_names(model: nn.Module, preset: str) -> list[str]:
    """Full names of the modules a peftlab preset selects, so peft adapts exactly the same ones."""
    return [name for name, _ in find_modules(model, (preset,))]


PEFT_TASK = {"causal": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "classify": "SEQ_CLS"}


@dataclass(frozen=True)
class MethodEntry:
    """One method in both libraries, on the same modules with the same hyper-parameters.

    ``peftlab_options(model, workload)`` are keywords for ``peftlab.apply``; ``peft_config(model,
    workload)`` is a ready peft config. ``peft_after_step(model, step)`` is peft's per-step call
    (AdaLoRA's budget); peftlab's goes through ``peftlab.training_hooks``. ``prepare_base`` changes
    the base model before either library adapts it (QLoRA's 4-bit base). ``peft_optimizer(model, lr)``
    is peft's optimizer for methods that live there (LoRA+, LoRA-FA); peftlab's comes from
    ``peftlab.make_optimizer``.
    """

    name: str
    peftlab_options: Callable[[nn.Module, Workload], dict[str, Any]]
    peft_config: Callable[[nn.Module, Workload], Any]
    mergeable: bool = False
    peft_after_step: Callable[[nn.Module, int], None] | None = None
    prepare_base: Callable[[nn.Module, Workload], None] | None = None  # e.g. quantize, for both libraries
    peft_optimizer: Callable[[nn.Module, float], torch.optim.Optimizer] | None = None  # peft's own, else AdamW
    notes: str = ""
    peftlab_method: str = ""  # the registered name when the row is a LoRA option (rslora, pissa), not a method
    lead_tokens: int = 0  # input tokens the method adds in front (prompt tuning), which its own floor runs too

    @property
    def changes_the_base(self) -> bool:
        """Whether the frozen base computes more or differently under this method (a longer input, 4-bit
        weights): then its adapter math is measured against a floor of that base, its "own floor"."""
        return self.lead_tokens > 0 or self.prepare_base is not None

    @property
    def registered_name(self) -> str:
        return self.peftlab_method or self.name


def _heads(workload: Workload) -> tuple[str, ...]:
    """A classifier is new, so both libraries train it beside the method (peft does so for SEQ_CLS)."""
    return ("classifier",) if workload.task == "classify" else ()


def _lora_peftlab(model: nn.Module, workload: Workload) -> dict[str, Any]:
    return {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ("attention_qv",),
            "modules_to_save": _heads(workload)}


def _lora_peft(model: nn.Module, workload: Workload) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=module_names(model, "attention_qv"),
                      task_type=PEFT_TASK[workload.task])


def _ia3_peftlab(model: nn.Module, workload: Workload) -> dict[str, Any]:
    return {"target_modules": ("attention_kv", "feed_forward_output"),
            "feedforward_modules": ("feed_forward_output",), "modules_to_save": _heads(workload)}


def _ia3_peft(model: nn.Module, workload: Workload) -> Any:
    from peft import IA3Config

    feed_forward = module_names(model, "feed_forward_output")
    return IA3Config(target_modules=module_names(model, "attention_kv") + feed_forward,
                     feedforward_modules=feed_forward, task_type=PEFT_TASK[workload.task])


PROMPT_TOKENS = 20


def _prompt_peftlab(model: nn.Module, workload: Workload) -> dict[str, Any]:
    return {"num_virtual_tokens": PROMPT_TOKENS, "init": "random", "modules_to_save": _heads(workload)}


def _prompt_peft(model: nn.Module, workload: Workload) -> Any:
    from peft import PromptTuningConfig

    # peft prompts T5's decoder too by default (two prompt tables); peftlab prompts the encoder input only
    submodules = {"num_transformer_submodules": 1} if workload.task == "seq2seq" else {}
    return PromptTuningConfig(num_virtual_tokens=PROMPT_TOKENS, task_type=PEFT_TASK[workload.task], **submodules)


def _prefix_peftlab(model: nn.Module, workload: Workload) -> dict[str, Any]:
    # peft prefixes T5's decoder self-attention only; peftlab's default adds the encoder's
    decoder_only = {"encoder_self_attention": False} if workload.task == "seq2seq" else {}
    return {"num_virtual_tokens": 10, "reparameterize": False, "modules_to_save": _heads(workload), **decoder_only}


def _prefix_peft(model: nn.Module, workload: Workload) -> Any:
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(num_virtual_tokens=10, prefix_projection=False, task_type=PEFT_TASK[workload.task])


ADALORA = {"init_rank": 12, "target_rank": 8, "alpha": 32.0, "total_steps": 100, "orth_reg_weight": 0.1}


def _adalora_peftlab(model: nn.Module, workload: Workload) -> dict[str, Any]:
    return {**ADALORA, "target_modules": ("attention_qv",), "modules_to_save": _heads(workload)}


def _adalora_peft(model: nn.Module, workload: Workload) -> Any:
    from peft import AdaLoraConfig

    return AdaLoraConfig(init_r=ADALORA["init_rank"], target_r=ADALORA["target_rank"], lora_alpha=ADALORA["alpha"],
                         total_step=ADALORA["total_steps"], tinit=0, tfinal=0, deltaT=1, beta1=0.85, beta2=0.85,
                         orth_reg_weight=ADALORA["orth_reg_weight"], lora_dropout=0.0,
                         target_modules=module_names(model, "attention_qv"), task_type=PEFT_TASK[workload.task])


def _adalora_peft_step(model: nn.Module, step: int) -> None:
    model.base_model.update_and_allocate(step)


QLORA = {"rank": 64, "alpha": 16.0, "dropout": 0.0, "compute_dtype": "bfloat16"}


def _quantize(model: nn.Module, workload: Workload) -> None:
    """Both libraries start from the same NF4 base (peft does not quantize; users load through bitsandbytes)."""
    from peftlab.methods.reparameterized.qlora import QLoRAConfig, quantize_model

    quantize_model(model, QLoRAConfig(**QLORA))


def _qlora_peftlab(model: nn.Module, workload: Workload) -> dict[str, Any]:
    return {**QLORA, "target_modules": ("all_linear",), "modules_to_save": _heads(workload)}


def _qlora_peft(model: nn.Module, workload: Workload) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=QLORA["rank"], lora_alpha=QLORA["alpha"], lora_dropout=QLORA["dropout"],
                      target_modules=module_names(model, "all_linear"), task_type=PEFT_TASK[workload.task])


# The LoRA family (issue 11): the same r=8, alpha=16 on q+v as ``lora`` unless the method needs otherwise.
def _family_peftlab(**options: Any) -> Callable[[nn.Module, Workload], dict[str, Any]]:
    def build(model: nn.Module, workload: Workload) -> dict[str, Any]:
        return {"target_modules": ("attention_qv",), "modules_to_save": _heads(workload), **options}
    return build


def _family_peft(config_class: str, **options: Any) -> Callable[[nn.Module, Workload], Any]:
    def build(model: nn.Module, workload: Workload) -> Any:
        import peft

        return getattr(peft, config_class)(target_modules=module_names(model, "attention_qv"),
                                           task_type=PEFT_TASK[workload.task], **options)
    return build


def _loraplus_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(model, torch.optim.AdamW, lr=lr, loraplus_lr_ratio=16.0)


def _lorafa_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    from peft.optimizers import create_lorafa_optimizer

    return create_lorafa_optimizer(model, r=8, lora_alpha=16, lr=lr)


LORA = {"rank": 8, "alpha": 16.0, "dropout": 0.0}
PEFT_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}

METHODS: dict[str, MethodEntry] = {
    "lora": MethodEntry("lora", _lora_peftlab, _lora_peft, mergeable=True, notes="r=8, alpha=16, q+v"),
    "ia3": MethodEntry("ia3", _ia3_peftlab, _ia3_peft, mergeable=True, notes="k, v, FFN-out input"),
    "prompt_tuning": MethodEntry("prompt_tuning", _prompt_peftlab, _prompt_peft, notes=f"{PROMPT_TOKENS} virtual tokens",
                                 lead_tokens=PROMPT_TOKENS),
    "prefix_tuning": MethodEntry("prefix_tuning", _prefix_peftlab, _prefix_peft, notes="10 prefixes, no MLP"),
    "adalora": MethodEntry("adalora", _adalora_peftlab, _adalora_peft, peft_after_step=_adalora_peft_step,
                           notes="r 12 -> 8, q+v"),
    "qlora": MethodEntry("qlora", _qlora_peftlab, _qlora_peft, prepare_base=_quantize,
                         notes="NF4 base (bf16 compute), r=64, all linear"),
    # QLoRA at LoRA's size: the 4-bit adapter's own cost, apart from the arithmetic the paper's r=64 on all
    # seven linears adds (17-25% more matmul FLOPs than the NF4 floor)
    "qlora_qv": MethodEntry("qlora_qv", _family_peftlab(**{**QLORA, **LORA}), _family_peft("LoraConfig", **PEFT_LORA),
                            prepare_base=_quantize, notes="qlora at lora's size: NF4 base, r=8, q+v",
                            peftlab_method="qlora"),
    "dora": MethodEntry("dora", _family_peftlab(**LORA), _family_peft("LoraConfig", use_dora=True, **PEFT_LORA),
                        mergeable=True, notes="r=8, q+v, magnitude vector"),
    "rslora": MethodEntry("rslora", _family_peftlab(**LORA, scaling_rule="rslora"),
                          _family_peft("LoraConfig", use_rslora=True, **PEFT_LORA), mergeable=True,
                          notes="lora with alpha/sqrt(r)", peftlab_method="lora"),
    "pissa": MethodEntry("pissa", _family_peftlab(**LORA, init="pissa"),
                         _family_peft("LoraConfig", init_lora_weights="pissa", **PEFT_LORA), mergeable=True,
                         notes="lora, principal singular vectors (full SVD at init)", peftlab_method="lora"),
    "lora_plus": MethodEntry("lora_plus", _family_peftlab(**LORA, lr_ratio=16.0), _family_peft("LoraConfig", **PEFT_LORA),
                             mergeable=True, peft_optimizer=_loraplus_optimizer, notes="lr of B = 16 x lr of A"),
    "lora_fa": MethodEntry("lora_fa", _family_peftlab(**LORA), _family_peft("LoraConfig", **PEFT_LORA), mergeable=True,
                           peft_optimizer=_lorafa_optimizer, notes="A frozen, B trained"),
    "vera": MethodEntry("vera", _family_peftlab(rank=256, projection_seed=0),
                        _family_peft("VeraConfig", r=256, projection_prng_key=0), mergeable=True,
                        notes="r=256 shared projections"),
    "loha": MethodEntry("loha", _family_peftlab(rank=8, alpha=16.0), _family_peft("LoHaConfig", r=8, alpha=16.0),
                        mergeable=True, notes="r=8 Hadamard pair"),
    "lokr": MethodEntry("lokr", _family_peftlab(rank=8, alpha=16.0), _family_peft("LoKrConfig", r=8, alpha=16.0),
                        mergeable=True, notes="r=8 Kronecker"),
}

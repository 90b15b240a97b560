"""What the side-by-side benchmark runs: model shapes, batches, and each method in peftlab and in HF peft.

Every model is built from a config with a fixed seed (random weights: speed and memory do not depend
on the values). A method is one :class:`MethodEntry`; adding a method both libraries have is adding
an entry to :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

from peftlab.core.targeting import find_modules


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    batch: int
    length: int
    target_length: int = 0  # decoder length of seq2seq models


@dataclass(frozen=True)
class Workload:
    """One model family at each benchmark setting. ``task`` is how its loss is computed."""

    name: str
    task: str  # "causal", "seq2seq" or "classify"
    build: Callable[[Shape], nn.Module]
    shapes: dict[str, Shape]
    dropout: bool = False  # trains with dropout (the configs' default 0.1): RoBERTa and T5, not LLaMA


def _llama(shape: Shape, tie: bool = False) -> nn.Module:
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=2048,
                         tie_word_embeddings=tie, rope_theta=100000.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def _smollm2(shape: Shape) -> nn.Module:
    return _llama(shape, tie=True)  # SmolLM2 ties its 49,152-token embedding and head


def _roberta(shape: Shape) -> nn.Module:
    config = RobertaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                           num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                           max_position_embeddings=shape.length + 64, num_labels=2, pad_token_id=1)  # room for soft prompts
    return RobertaForSequenceClassification(config)


def _t5(shape: Shape) -> nn.Module:
    config = T5Config(vocab_size=shape.vocab, d_model=shape.hidden, d_kv=shape.hidden // shape.heads,
                      d_ff=shape.intermediate, num_layers=shape.layers, num_decoder_layers=shape.layers,
                      num_heads=shape.heads, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(config)


# quick: seconds per measurement, for a smoke run; moderate: RESULTS.md; issue: the LLaMA setting.
WORKLOADS: dict[str, Workload] = {
    "llama": Workload("llama", "causal", _llama, {
        "quick": Shape(2, 256, 688, 4, 4, 32000, 2, 64),
        "moderate": Shape(8, 512, 1376, 8, 8, 32000, 4, 128),
        "issue": Shape(8, 512, 1376, 8, 8, 32000, 8, 256),
    }),
    "roberta": Workload("roberta", "classify", _roberta, dropout=True, shapes={
        "quick": Shape(2, 256, 1024, 4, 4, 50265, 2, 64),
        "moderate": Shape(8, 512, 2048, 8, 8, 50265, 8, 128),
        "issue": Shape(8, 512, 2048, 8, 8, 50265, 8, 256),
    }),
    "t5": Workload("t5", "seq2seq", _t5, dropout=True, shapes={
        "quick": Shape(2, 256, 1024, 4, 4, 32128, 2, 64, 32),
        "moderate": Shape(6, 512, 2048, 8, 8, 32128, 4, 128, 64),
        "issue": Shape(8, 512, 2048, 8, 8, 32128, 8, 256, 128),
    }),
    "smollm2": Workload("smollm2", "causal", _smollm2, {
        "quick": Shape(4, 576, 1536, 9, 3, 49152, 4, 128),  # enough tokens for the logits to matter
        "moderate": Shape(30, 576, 1536, 9, 3, 49152, 4, 128),
        "issue": Shape(30, 576, 1536, 9, 3, 49152, 8, 256),
    }),
}


def build_model(workload: Workload, setting: str) -> nn.Module:
    torch.manual_seed(0)
    return workload.build(workload.shapes[setting])


def make_batch(workload: Workload, setting: str, with_labels: bool = True, lead_tokens: int = 0
               ) -> dict[str, torch.Tensor]:
    """The benchmark's batch; ``lead_tokens`` more input tokens in front, unlabelled, as prompt tuning's
    virtual tokens are (the floor of a method that lengthens the input runs the base on this batch)."""
    shape = workload.shapes[setting]
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, shape.vocab, (shape.batch, shape.length), generator=generator)
    if workload.task == "classify":
        labels = torch.randint(0, 2, (shape.batch,), generator=generator)
    elif workload.task == "seq2seq":
        labels = torch.randint(3, shape.vocab, (shape.batch, shape.target_length), generator=generator)
    else:
        labels = ids.clone()
    if lead_tokens:
        lead = torch.randint(3, shape.vocab, (shape.batch, lead_tokens), generator=generator)
        ids = torch.cat([lead, ids], dim=1)
        if workload.task == "causal":
            labels = torch.cat([torch.full_like(lead, -100), labels], dim=1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if with_labels:
        batch["labels"] = labels
    elif workload.task == "seq2seq":
        batch["decoder_input_ids"] = labels
    return batch


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

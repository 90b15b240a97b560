"""Model families the presets know, and where each keeps its layers (data, not code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

Kind = Literal["encoder", "encoder-decoder", "decoder"]


@dataclass(frozen=True)
class Architecture:
    """One model family: its kind and its named groups of linear modules (regex suffix patterns)."""

    name: str
    kind: Kind
    presets: dict[str, tuple[str, ...]]
    label: str  # as tables print it


def _with_unions(presets: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    presets = dict(presets)
    presets["all_linear"] = presets["attention"] + presets["feed_forward"]
    return presets


BERT = Architecture(
    "bert",
    "encoder",
    _with_unions({
        "attention_qv": (r"attention\.self\.query", r"attention\.self\.value"),
        "attention_kv": (r"attention\.self\.key", r"attention\.self\.value"),
        "attention": (r"attention\.self\.(query|key|value)", r"attention\.output\.dense"),
        "attention_output": (r"attention\.output\.dense",),
        "feed_forward": (r"intermediate\.dense", r"layer\.\d+\.output\.dense"),
        "feed_forward_output": (r"layer\.\d+\.output\.dense",),
    }),
    label="BERT/RoBERTa",
)

T5 = Architecture(
    "t5",
    "encoder-decoder",
    _with_unions({
        "attention_qv": (r"(SelfAttention|EncDecAttention)\.(q|v)",),
        "attention_kv": (r"(SelfAttention|EncDecAttention)\.(k|v)",),
        "attention": (r"(SelfAttention|EncDecAttention)\.(q|k|v|o)",),
        "attention_output": (r"(SelfAttention|EncDecAttention)\.o",),
        "feed_forward": (r"DenseReluDense\.(wi|wi_0|wi_1|wo)",),
        "feed_forward_output": (r"DenseReluDense\.wo",),
    }),
    label="T5",
)

LLAMA = Architecture(
    "llama",
    "decoder",
    _with_unions({
        "attention_qv": (r"self_attn\.(q_proj|v_proj)",),
        "attention_kv": (r"self_attn\.(k_proj|v_proj)",),
        "attention": (r"self_attn\.(q_proj|k_proj|v_proj|o_proj)",),
        "attention_output": (r"self_attn\.o_proj",),
        "feed_forward": (r"mlp\.(gate_proj|up_proj|down_proj)",),
        "feed_forward_output": (r"mlp\.down_proj",),
    }),
    label="LLaMA",
)

# GPT-2 fuses query, key and value in one Conv1D (c_attn): the q/v and k/v presets target all of it.
GPT2 = Architecture(
    "gpt2",
    "decoder",
    _with_unions({
        "attention_qv": (r"attn\.c_attn",),
        "attention_kv": (r"attn\.c_attn",),
        "attention": (r"attn\.(c_attn|c_proj)",),
        "attention_output": (r"attn\.c_proj",),
        "feed_forward": (r"mlp\.(c_fc|c_proj)",),
        "feed_forward_output": (r"mlp\.c_proj",),
    }),
    label="GPT-2",
)

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (BERT, T5, LLAMA, GPT2)}

# transformers `model_type` -> the family whose module names it shares.
MODEL_TYPES: dict[str, str] = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "t5": "t5",
    "mt5": "t5",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gpt2": "gpt2",
}

PRESET_NAMES: tuple[str, ...] = tuple(LLAMA.presets)


def architecture_of(model: nn.Module) -> Architecture | None:
    """The known family of a transformers model, or None for an unknown one."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = MODEL_TYPES.get(model_type or "")
    return ARCHITECTURES[family] if family else None


def model_kind(model: nn.Module) -> Kind:
    """Encoder, encoder-decoder or decoder, from the config when the family is unknown."""
    architecture = architecture_of(model)
    if architecture is not None:
        return architecture.kind
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    causal = getattr(config, "is_decoder", False) or type(model).__name__.endswith("ForCausalLM")
    return "decoder" if causal else "encoder"

"""For each method shared with HF peft: peftlab options and the equivalent peft config, per architecture."""

from __future__ import annotations

import peft

# peft's own names for the modules peftlab's presets pick on the tiny models.
LORA_TARGETS = {"bert": ["query", "value"], "t5": ["q", "v"], "llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}
IA3_TARGETS = {
    "bert": (r".*layer\.\d+\.(attention\.self\.(key|value)|output\.dense)", r".*layer\.\d+\.output\.dense"),
    "t5": (["k", "v", "wo"], ["wo"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
}


def lora(arch: str, **extra) -> peft.LoraConfig:
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[arch], fan_in_fan_out=arch == "gpt2", **extra)


def ia3(arch: str) -> peft.IA3Config:
    targets, feedforward = IA3_TARGETS[arch]
    return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, fan_in_fan_out=arch == "gpt2")


# method -> (peftlab options, peft config for an architecture)
CASES = {
    "lora": ({"rank": 4, "alpha": 8.0}, lora),
    "ia3": ({}, ia3),
    "dora": ({"rank": 4, "alpha": 8.0}, lambda arch: lora(arch, use_dora=True)),
}

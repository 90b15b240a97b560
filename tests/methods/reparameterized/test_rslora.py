"""rsLoRA (Kalajdzievski 2023, arXiv 2312.03732): LoRA with s = alpha / sqrt(r) instead of alpha / r."""

import math

import torch

import peftlab
from conftest import tiny_llama


def test_rslora_scaling_is_alpha_over_sqrt_rank():
    assert peftlab.make_config("lora", rank=16, alpha=8.0, scaling_rule="rslora").scaling == 8.0 / 4.0
    assert peftlab.make_config("lora", rank=16, alpha=8.0).scaling == 8.0 / 16  # default unchanged


def test_rslora_layer_output_uses_that_scale():
    model = peftlab.apply(tiny_llama().eval(), "lora", rank=9, alpha=6.0, scaling_rule="rslora")
    layer = model.model.layers[0].self_attn.v_proj
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 3, 32)
    expected = x @ layer.base_layer.weight.T + (6.0 / math.sqrt(9)) * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)


def test_scaling_rule_round_trips_through_json():
    config = peftlab.make_config("lora", rank=4, scaling_rule="rslora")
    again = type(config).from_dict(config.to_dict())
    assert again == config and again.scaling == config.scaling

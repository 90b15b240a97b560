"""The one accessor for a frozen base weight: a float Linear/Conv1D's own weight, a bitsandbytes 4- or 8-bit
layer's weight as bitsandbytes itself dequantizes it, through any adapter wrappers."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from conftest import tiny_gpt2
from peftlab.core.quantized import UnreadableWeightError, base_weight, dequantize_linear, quantize_linear
from peftlab.methods.reparameterized.lora import LoRALinear
from peftlab.methods.reparameterized.qlora import QLoRAConfig


def float_linear(bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(64, 48, bias=bias)


def test_a_float_linear_gives_its_own_weight_a_conv1d_its_transpose_and_a_wrapper_its_base():
    linear = float_linear()
    assert base_weight(linear) is linear.weight
    conv = tiny_gpt2().transformer.h[0].attn.c_attn  # stores (in, out)
    assert torch.equal(base_weight(conv), conv.weight.T) and base_weight(conv).data_ptr() == conv.weight.data_ptr()
    wrapped = LoRALinear(linear, rank=4, scaling=2.0, dropout=0.0)
    assert base_weight(wrapped) is linear.weight
    as_half = base_weight(wrapped, torch.float16)
    assert as_half.dtype == torch.float16 and torch.equal(as_half, linear.weight.half())


@pytest.mark.parametrize("quant_type, double_quant", [("nf4", True), ("nf4", False), ("fp4", True)])
@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_a_4bit_layer_gives_bitsandbytes_own_dequantized_weight(quant_type, double_quant, compute):
    options = QLoRAConfig(quant_type=quant_type, double_quant=double_quant, compute_dtype=compute)
    layer = quantize_linear(float_linear(), options)
    assert isinstance(layer, bnb.nn.Linear4bit) and isinstance(layer.weight, bnb.nn.Params4bit)
    reference = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    weight = base_weight(layer)
    assert weight.shape == (48, 64) and weight.dtype == reference.dtype == torch.float32  # the float it came from
    assert torch.equal(weight, reference)
    assert torch.equal(base_weight(layer, torch.bfloat16), reference.to(torch.bfloat16))  # e.g. the compute dtype
    assert 0 < (weight - float_linear().weight).abs().max() < 0.05  # lossy, but that weight
    wrapped = LoRALinear(layer, rank=4, scaling=2.0, dropout=0.0)
    assert torch.equal(base_weight(wrapped), reference)
    assert not weight.requires_grad


def test_an_8bit_layer_gives_bitsandbytes_own_dequantized_weight():
    layer = quantize_linear(float_linear(), QLoRAConfig(bits=8))
    assert isinstance(layer, bnb.nn.Linear8bitLt)
    reference = bnb.functional.int8_vectorwise_dequant(layer.weight.data, layer.weight.SCB)
    weight = base_weight(layer)
    assert weight.shape == (48, 64) and weight.dtype == torch.float32
    assert torch.equal(weight, reference)
    assert 0 < (weight - float_linear().weight).abs().max() < 0.01
    layer(torch.randn(3, 64))  # runs on this machine's 8-bit kernels; the weight reads the same afterwards
    assert torch.equal(base_weight(layer), reference)


def test_an_integer_weight_that_is_no_bitsandbytes_layer_is_refused_by_name():
    layer = float_linear()
    layer.weight = nn.Parameter(torch.zeros(48, 64, dtype=torch.int8), requires_grad=False)
    with pytest.raises(UnreadableWeightError, match="torch.int8 weight of a Linear"):
        base_weight(layer)


def test_conv1d_is_quantized_and_read_back_in_the_out_in_layout():
    conv = tiny_gpt2().transformer.h[0].mlp.c_fc
    layer = quantize_linear(conv, QLoRAConfig(compute_dtype="float32"))
    assert base_weight(layer).shape == conv.weight.T.shape
    assert (base_weight(layer) - conv.weight.T).abs().max() < 0.2
    assert type(dequantize_linear(layer)) is Conv1D and torch.equal(dequantize_linear(layer).weight.T, base_weight(layer))

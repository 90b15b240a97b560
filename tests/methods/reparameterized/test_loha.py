"""LoHa (Hyeon-Woo et al. 2022, arXiv 2108.06098): ΔW = (alpha / r) (W1a W1b) ⊙ (W2a W2b)."""

import torch

import peftlab
from conftest import tiny_gpt2, tiny_llama


def randomised(layer):
    with torch.no_grad():
        for name in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
            getattr(layer, name).normal_()
    return layer


def test_layer_matches_the_hadamard_formula():
    model = peftlab.apply(tiny_llama().eval(), "loha", rank=3, alpha=6.0)
    layer = randomised(model.model.layers[0].self_attn.v_proj)
    assert layer.hada_w1_a.shape == (16, 3) and layer.hada_w1_b.shape == (3, 32)
    delta = 2.0 * (layer.hada_w1_a @ layer.hada_w1_b) * (layer.hada_w2_a @ layer.hada_w2_b)
    x = torch.randn(2, 4, 32)
    torch.testing.assert_close(layer(x), x @ (layer.base_layer.weight + delta).T)
    torch.testing.assert_close(layer.delta_weight(), delta)


def test_conv1d_base_and_merge():
    model = peftlab.apply(tiny_gpt2().eval(), "loha", rank=2, alpha=2.0)
    layer = randomised(model.transformer.h[0].attn.c_attn)
    x = torch.randn(2, 32)
    conv = layer.base_layer
    expected = x @ conv.weight + conv.bias + x @ layer.delta_weight().T
    torch.testing.assert_close(layer(x), expected)
    layer.merge()
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_hadamard_product_reaches_rank_r_squared_and_starts_at_zero():
    model = peftlab.apply(tiny_llama(), "loha", rank=2)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.delta_weight().abs().sum() == 0  # W2b starts at zero
    randomised(layer)
    assert torch.linalg.matrix_rank(layer.delta_weight().detach()) == 4  # r^2, from 2r(in + out) parameters

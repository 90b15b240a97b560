"""LoKr / KronA (arXiv 2212.10650, 2309.14859): ΔW = (alpha / r) W1 ⊗ W2, W2 low-rank when r < max(k, n) / 2."""

import torch

import peftlab
from conftest import tiny_gpt2, tiny_llama
from peftlab.methods.reparameterized.lokr import factor_pair


def test_factor_pairs_are_nearest_the_square_root():
    assert [factor_pair(d) for d in (16, 32, 96, 128, 768, 13)] == [(4, 4), (4, 8), (8, 12), (8, 16), (24, 32), (1, 13)]


def test_layer_matches_the_kronecker_formula_with_a_low_rank_second_factor():
    model = peftlab.apply(tiny_gpt2().eval(), "lokr", rank=2, alpha=4.0)
    layer = model.transformer.h[0].attn.c_attn  # 32 -> 96: W1 (8 x 4), W2 (12 x 8) = (12 x 2)(2 x 8)
    with torch.no_grad():
        layer.lokr_w1.normal_()
    assert layer.lokr_w1.shape == (8, 4) and layer.lokr_w2_a.shape == (12, 2) and layer.lokr_w2_b.shape == (2, 8)
    delta = 2.0 * torch.kron(layer.lokr_w1, layer.lokr_w2_a @ layer.lokr_w2_b)
    x = torch.randn(3, 5, 32)
    conv = layer.base_layer
    torch.testing.assert_close(layer(x), x @ conv.weight + conv.bias + x @ delta.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.delta_weight(), delta)


def test_full_second_factor_when_the_rank_is_not_smaller_and_zero_start():
    model = peftlab.apply(tiny_llama().eval(), "lokr", rank=4, alpha=4.0)
    layer = model.model.layers[0].self_attn.v_proj  # 32 -> 16: W1 (4 x 4), W2 (4 x 8) full since 4 >= 8 / 2
    assert layer.delta_weight().abs().sum() == 0  # W1 starts at zero
    assert "lokr_w2" in dict(layer.named_parameters()) and layer.lokr_w2.shape == (4, 8)
    with torch.no_grad():
        layer.lokr_w1.normal_()
    x = torch.randn(2, 32)
    expected = x @ (layer.base_layer.weight + torch.kron(layer.lokr_w1, layer.lokr_w2)).T
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)

"""VeRA (Kopiczko et al. 2024, arXiv 2310.11454): y = W x + Λ_b B Λ_d A x with A, B frozen, shared,
regenerated from a seed; the adapter file holds only the vectors (the seed lives in the config)."""

import copy
import json
import math

import torch
from safetensors.torch import load_file

import peftlab
from conftest import tiny_gpt2, tiny_llama
from peftlab.core.probe import probe_output


def kaiming_uniform(shape, generator):
    bound = math.sqrt(6.0 / shape[1])  # He-uniform: sqrt(3) * sqrt(2) / sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def test_layer_matches_the_formula_with_the_seeded_shared_matrices():
    model = peftlab.apply(tiny_llama().eval(), "vera", rank=6, projection_seed=7)
    generator = torch.Generator().manual_seed(7)
    A = kaiming_uniform((6, 32), generator)  # (r, largest in_features)
    B = kaiming_uniform((32, 6), generator)  # (largest out_features, r)
    layer = model.model.layers[0].self_attn.v_proj  # 32 -> 16: uses A[:, :32] and B[:16]
    with torch.no_grad():
        layer.vera_lambda_b.normal_()
        layer.vera_lambda_d.normal_()
    x = torch.randn(2, 3, 32)
    expected = x @ layer.base_layer.weight.T + ((x @ A.T) * layer.vera_lambda_d) @ B[:16].T * layer.vera_lambda_b
    torch.testing.assert_close(layer(x), expected)
    delta = torch.diag(layer.vera_lambda_b) @ B[:16] @ torch.diag(layer.vera_lambda_d) @ A
    torch.testing.assert_close(layer.delta_weight(), delta)


def test_matrices_are_shared_and_frozen_and_vectors_start_at_b_zero_d_initial():
    model = peftlab.apply(tiny_gpt2(), "vera", rank=4, d_initial=0.1, target_modules=("c_attn", "c_fc"))
    layers = [m for m in model.modules() if hasattr(m, "vera_lambda_b")]
    assert len({id(layer.shared) for layer in layers}) == 1
    assert layers[0].shared.a.shape == (4, 32) and layers[0].shared.b.shape == (128, 4)  # max in / max out
    assert not layers[0].shared.a.requires_grad
    for layer in layers:
        assert layer.vera_lambda_b.abs().sum() == 0 and torch.all(layer.vera_lambda_d == 0.1)


def test_adapter_file_holds_only_the_vectors_and_the_config_the_seed(tmp_path):
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "vera", rank=8, projection_seed=3)
    with torch.no_grad():
        for _, p in peftlab.adapter_parameters(model):
            p.normal_()
    peftlab.save_adapter(model, tmp_path / "adapter")
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert {name.rsplit(".", 1)[1] for name in tensors} == {"vera_lambda_b", "vera_lambda_d"}
    assert sum(t.numel() for t in tensors.values()) == 2 * (8 + 32) + 2 * (8 + 16)  # q (out 32), v (out 16)
    document = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert document["projection_seed"] == 3
    loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "adapter")  # matrices regenerated
    torch.testing.assert_close(probe_output(loaded), probe_output(model), atol=0, rtol=0)


def test_the_seed_decides_the_matrices():
    one = peftlab.apply(tiny_llama(), "vera", rank=4, projection_seed=1).model.layers[0].self_attn.q_proj
    two = peftlab.apply(tiny_llama(), "vera", rank=4, projection_seed=2).model.layers[0].self_attn.q_proj
    again = peftlab.apply(tiny_llama(), "vera", rank=4, projection_seed=1).model.layers[0].self_attn.q_proj
    assert not torch.equal(one.shared.a, two.shared.a)
    assert torch.equal(one.shared.a, again.shared.a) and torch.equal(one.shared.b, again.shared.b)

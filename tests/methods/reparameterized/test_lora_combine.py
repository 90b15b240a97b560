"""add_weighted_adapter (issue 32): each combination of named LoRA adapters, checked against the weighted sum
of their deltas on the four architectures."""

from __future__ import annotations

import pytest
import torch

import peftlab
from peftlab.core.probe import probe_output
from peftlab.core.state import adapter_modules
from conftest import FAMILY_BUILDERS, tiny_llama

WEIGHTS = {"a": 0.7, "b": 0.3}


def with_two_loras(builder, ranks=(4, 4)):
    model = builder().eval()
    for seed, (name, rank) in enumerate(zip(WEIGHTS, ranks)):
        peftlab.apply(model, "lora", adapter_name=name, rank=rank, target_modules=["all_linear"])
        torch.manual_seed(seed)
        with torch.no_grad():
            for _, layer in adapter_modules(model, name):
                layer.lora_B.normal_(std=0.2)
    return model


def weighted_sum_deltas(model):
    deltas = {}
    for name, weight in WEIGHTS.items():
        for path, layer in adapter_modules(model, name):
            deltas[path] = deltas.get(path, 0) + weight * layer.delta_weight()
    return deltas


@pytest.mark.parametrize("architecture", sorted(FAMILY_BUILDERS))
@pytest.mark.parametrize("combination", ["cat", "svd"])
def test_exact_combinations_equal_the_weighted_sum(architecture, combination):
    model = with_two_loras(FAMILY_BUILDERS[architecture])
    report = peftlab.add_weighted_adapter(model, WEIGHTS, "ab", combination, rank=8)
    assert report.exact and report.rank == 8 and report.max_abs_difference <= 1e-4
    expected = weighted_sum_deltas(model)
    combined = dict(adapter_modules(model, "ab"))
    assert set(combined) == set(expected)
    for path, layer in combined.items():
        torch.testing.assert_close(layer.delta_weight(), expected[path], atol=1e-5, rtol=1e-4)
    assert peftlab.list_adapters(model) == ["a", "b", "ab"] and peftlab.active_adapters(model) == ["a"]


@pytest.mark.parametrize("combination", ["linear", "ties", "dare_linear", "dare_ties"])
def test_approximate_combinations_are_reported_with_their_distance(combination):
    model = with_two_loras(tiny_llama)
    bare = probe_output(tiny_llama().eval())
    report = peftlab.add_weighted_adapter(model, WEIGHTS, "ab", combination, density=0.5, seed=1)
    assert not report.exact and report.rank == 4 and report.max_abs_difference > 0
    peftlab.set_adapter(model, "ab")
    assert not torch.allclose(probe_output(model), bare)  # it does something
    again = with_two_loras(tiny_llama)
    assert peftlab.add_weighted_adapter(again, WEIGHTS, "ab", combination, density=0.5, seed=1) == report  # seeded


def test_ties_keeps_the_elected_sign_and_the_densest_entries():
    from peftlab.methods.reparameterized._lora_combine import _ties

    first = torch.tensor([[3.0, -1.0, 0.1]])
    second = torch.tensor([[1.0, 2.0, -0.2]])
    merged = _ties([first, second], density=2 / 3)
    # kept: first (3, -1), second (1, 2); signs elected: +, +, 0; agreeing means: (3+1)/2, 2/1, 0
    torch.testing.assert_close(merged, torch.tensor([[2.0, 2.0, 0.0]]))


def test_bad_combinations_get_clear_errors():
    model = with_two_loras(tiny_llama, ranks=(4, 8))
    with pytest.raises(peftlab.CombineError, match="one rank"):
        peftlab.add_weighted_adapter(model, WEIGHTS, "ab", "linear")
    with pytest.raises(peftlab.CombineError, match="not one of"):
        peftlab.add_weighted_adapter(model, WEIGHTS, "ab", "mean")
    with pytest.raises(peftlab.CombineError, match="no adapter named 'z'"):
        peftlab.add_weighted_adapter(model, {"z": 1.0}, "ab")
    peftlab.apply(model, "ia3", adapter_name="scale")
    with pytest.raises(peftlab.CombineError, match="'scale' is 'ia3'"):
        peftlab.add_weighted_adapter(model, {"a": 1.0, "scale": 1.0}, "ab")
    assert peftlab.list_adapters(model) == ["a", "b", "scale"]

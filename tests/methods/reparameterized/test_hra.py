"""HRA against a hand-written reference: the chain of Householder reflections, one at a time."""

import copy
import warnings

import pytest
import torch

import peftlab
from conftest import tiny_llama
from peftlab.core.checks import InertAdapterWarning
from peftlab.core.config import ConfigError
from peftlab.methods.reparameterized.hra import HRAHooks, HRALinear

EYE = torch.eye(32, dtype=torch.float64)


def hra_layers(model):
    return [m for m in model.modules() if isinstance(m, HRALinear)]


def randomise(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.copy_(torch.randn(parameter.shape, generator=generator))


def reflections(u: torch.Tensor) -> torch.Tensor:
    """H_1 H_2 ... H_r, H_i = I - 2 u_i u_i^T / |u_i|^2, one reflection at a time."""
    h = torch.eye(u.shape[0], dtype=torch.float64)
    for i in range(u.shape[1]):
        v = u[:, i:i + 1].double()
        h = h @ (torch.eye(u.shape[0], dtype=torch.float64) - 2 * v @ v.T / (v.T @ v))
    return h


def gram_schmidt(u: torch.Tensor) -> torch.Tensor:
    columns = []
    for i in range(u.shape[1]):
        v = u[:, i].double()
        for q in columns:
            v = v - (q @ v) * q
        columns.append(v / v.norm())
    return torch.stack(columns, dim=1)


def test_the_layer_is_the_weight_times_the_chain_of_reflections():
    model = peftlab.apply(tiny_llama().eval(), "hra", r=6, target_modules=["q_proj"])
    randomise(model)
    layer = hra_layers(model)[0]
    h = reflections(layer.hra_u.detach())
    torch.testing.assert_close(h.T @ h, EYE)
    x = torch.randn(4, 32)
    expected = x.double() @ (layer.base_layer.weight.double() @ h).T  # y = (W H) x
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.rotation().double(), h.T, atol=1e-6, rtol=0)


def test_paired_initial_vectors_make_the_chain_the_identity():
    model = peftlab.apply(tiny_llama().eval(), "hra", r=4, target_modules=["q_proj"])
    u = hra_layers(model)[0].hra_u.detach()
    assert torch.equal(u[:, 0], u[:, 1]) and torch.equal(u[:, 2], u[:, 3]) and not torch.equal(u[:, 0], u[:, 2])
    torch.testing.assert_close(reflections(u), EYE)


def test_gram_schmidt_gives_one_reflection_across_the_span():
    with pytest.warns(UserWarning, match="not the identity"):
        model = peftlab.apply(tiny_llama().eval(), "hra", r=4, apply_GS=True, target_modules=["q_proj"])
    randomise(model)
    layer = hra_layers(model)[0]
    q = gram_schmidt(layer.hra_u.detach())
    h = EYE - 2 * q @ q.T
    torch.testing.assert_close(h, reflections(q))  # orthonormal reflections commute into I - 2 Q Q^T
    x = torch.randn(3, 32)
    expected = x.double() @ (layer.base_layer.weight.double() @ h).T
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)


def test_the_regulariser_is_lambda_times_the_summed_gram_error_and_trains_u():
    model = peftlab.apply(tiny_llama().eval(), "hra", r=4, orth_reg_weight=0.5)
    randomise(model)
    hooks = peftlab.training_hooks(model)
    assert isinstance(hooks, HRAHooks)
    expected = 0.0
    for layer in hra_layers(model):
        u = layer.hra_u.detach().double()
        u = u / u.norm(dim=0)
        expected += ((u.T @ u - torch.eye(4, dtype=torch.float64)) ** 2).sum().item()
    penalty = hooks.regularization(model)
    assert penalty.item() == pytest.approx(0.5 * expected, rel=1e-5)
    penalty.backward()
    assert all(layer.hra_u.grad is not None and layer.hra_u.grad.abs().sum() > 0 for layer in hra_layers(model))


def test_without_lambda_the_hooks_add_nothing():
    model = peftlab.apply(tiny_llama().eval(), "hra")
    assert peftlab.training_hooks(model).regularization(model) == 0.0


def test_merge_writes_w_h_and_unmerge_restores_w():
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "hra", r=4, target_modules=["q_proj"])
    randomise(model)
    layer = hra_layers(model)[0]
    expected = (layer.base_layer.weight.double() @ reflections(layer.hra_u.detach())).float()
    original = layer.base_layer.weight.detach().clone()
    peftlab.merge(model)
    torch.testing.assert_close(layer.base_layer.weight.detach(), expected, atol=1e-6, rtol=1e-5)
    peftlab.unmerge(model)
    torch.testing.assert_close(layer.base_layer.weight.detach(), original, atol=1e-6, rtol=1e-5)


def test_odd_r_and_gram_schmidt_warn_that_the_model_does_not_start_as_the_base():
    for options in ({"r": 3}, {"apply_GS": True}):
        with pytest.warns(UserWarning, match="not the identity at initialisation"):
            peftlab.apply(tiny_llama(), "hra", **options)


def test_gram_schmidt_with_more_vectors_than_features_names_the_layer():
    with pytest.raises(ConfigError, match=r"r=40 .* layer '.*q_proj''s 32 input features; choose r <= 32"):
        peftlab.apply(tiny_llama(), "hra", r=40, apply_GS=True, target_modules=["q_proj"])


@pytest.mark.parametrize("options", [{"r": 0}, {"orth_reg_weight": -1.0}])
def test_bad_options_are_refused_by_name(options):
    with pytest.raises(ConfigError, match="hra config field"):
        peftlab.apply(tiny_llama(), "hra", **options)


@pytest.mark.parametrize("apply_gs", [False, True])
def test_a_bfloat16_base_trains_and_merges(apply_gs):
    """QR and the triangular solve have no half-precision CPU kernels: they run in float32."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = peftlab.apply(tiny_llama().to(torch.bfloat16), "hra", r=4, apply_GS=apply_gs, orth_reg_weight=0.1)
    inputs = {"input_ids": torch.arange(12).reshape(2, 6)}
    loss = model(**inputs, labels=inputs["input_ids"]).loss + peftlab.training_hooks(model).regularization(model)
    loss.backward()
    assert all(p.grad is not None for _, p in peftlab.adapter_parameters(model))
    with warnings.catch_warnings():  # untrained: in bfloat16 the paired reflections are exactly the identity
        warnings.simplefilter("ignore", InertAdapterWarning)
        peftlab.merge(model, tolerance=0.1)
    peftlab.unmerge(model)


def test_beside_another_adapter_a_mixed_batch_runs_each_row_with_its_own_and_the_penalty_is_its_own():
    model = peftlab.apply(tiny_llama().eval(), "hra", r=4, orth_reg_weight=1.0, adapter_name="hra")
    peftlab.apply(model, "oft", oft_block_size=8, adapter_name="oft")
    peftlab.apply(model, "hra", r=2, target_modules=["down_proj"], adapter_name="other")
    randomise(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "oft_R" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    ids = torch.arange(12).reshape(2, 6)
    mixed = model(input_ids=ids, adapter_names=["hra", "oft"]).logits
    for row, name in enumerate(["hra", "oft"]):
        peftlab.set_adapter(model, name)
        torch.testing.assert_close(mixed[row], model(input_ids=ids[row:row + 1]).logits[0], atol=1e-6, rtol=0)
    peftlab.set_adapter(model, "hra")
    assert [layer.hra_u.shape[1] for layer in peftlab.training_hooks(model).layers] == [4] * 4

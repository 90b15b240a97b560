"""The contract every registered method keeps, on tiny models of all four architecture families."""

from __future__ import annotations

import copy
import importlib
import warnings
from types import ModuleType

import pytest
import torch
from torch import nn

import peftlab
from conftest import FAMILY_BUILDERS, batch_for
from peftlab.core.probe import probe_output
from peftlab.core.serialization import BaseModelMismatchWarning

METHODS = peftlab.list_methods()


def case(method: str) -> ModuleType:
    try:
        return importlib.import_module(f"contract_cases.{method}")
    except ModuleNotFoundError:
        pytest.fail(f"method {method!r} has no tests/contract_cases/{method}.py (options + hand count)")


def adapted(method: str, arch: str) -> tuple[nn.Module, nn.Module]:
    spec = case(method)
    if arch in getattr(spec, "SKIP", {}):
        pytest.skip(spec.SKIP[arch])
    base = FAMILY_BUILDERS[arch]().eval()
    model = peftlab.apply(copy.deepcopy(base), method, **spec.OPTIONS)
    return base, model


def perturb(model: nn.Module, seed: int = 0) -> None:
    """Move every trainable parameter off its initial value so the adapter changes outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
            parameter.add_(0.05 * noise)


def base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    trainable = {id(p) for _, p in peftlab.adapter_parameters(model)}
    return {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in trainable}


def loss_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_a_case(method):
    assert hasattr(case(method), "expected_trainable")


@pytest.mark.parametrize("method", METHODS)
def test_only_method_parameters_train_and_count_matches_hand_computation(method, architecture):
    base, model = adapted(method, architecture)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in peftlab.adapter_parameters(model)}
    assert trainable, "the method trains nothing"
    expected = case(method).expected_trainable(architecture, base)
    assert peftlab.parameter_counts(model)[0] == expected


@pytest.mark.parametrize("method", METHODS)
def test_outputs_at_initialisation_equal_the_base(method, architecture):
    if not getattr(case(method), "STARTS_AS_BASE", True):
        pytest.skip(f"{method} does not promise base outputs at initialisation")
    base, model = adapted(method, architecture)
    torch.testing.assert_close(probe_output(model), probe_output(base), atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_a_step_lowers_the_loss_and_leaves_the_base_untouched(method, architecture):
    _, model = adapted(method, architecture)
    perturb(model)
    frozen_before = base_weights(model)
    batch = batch_for(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    before = loss_of(model, batch)
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss_of(model, batch)
    assert after.item() < before.item()
    if getattr(case(method), "FROZEN_BASE", True):
        for name, tensor in base_weights(model).items():
            assert torch.equal(tensor, frozen_before[name]), f"frozen {name} changed"


@pytest.mark.parametrize("method", METHODS)
def test_save_then_load_into_a_fresh_model_gives_identical_outputs(method, architecture, tmp_path):
    base, model = adapted(method, architecture)
    perturb(model)
    expected = probe_output(model)
    assert not torch.allclose(expected, probe_output(base)), "perturbed adapter should change outputs"
    peftlab.save_adapter(model, tmp_path / "adapter")
    with warnings.catch_warnings():  # the same base must not look like another one
        warnings.simplefilter("error", BaseModelMismatchWarning)
        loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    torch.testing.assert_close(probe_output(loaded), expected, atol=0, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_merge_keeps_outputs_and_unmerge_restores_weights(method, architecture):
    if not peftlab.get_method(method).mergeable:
        with pytest.raises(peftlab.MergeError):
            peftlab.merge(adapted(method, architecture)[1])
        return
    _, model = adapted(method, architecture)
    perturb(model)
    expected = probe_output(model)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = peftlab.merge(model)
    assert report.max_abs_difference <= 1e-4
    torch.testing.assert_close(probe_output(model), expected, atol=1e-4, rtol=1e-4)
    peftlab.unmerge(model)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, original[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non_reentrant"])
@pytest.mark.parametrize("method", METHODS)
def test_every_trainable_parameter_gets_a_gradient_under_checkpointing(method, architecture, reentrant):
    _, model = adapted(method, architecture)
    perturb(model)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    for module in model.modules():  # dropout off: the check is about the graph, not the noise
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    loss_of(model, batch_for(model)).backward()
    silent = [n for n, p in peftlab.adapter_parameters(model) if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient reached {silent[:5]}"

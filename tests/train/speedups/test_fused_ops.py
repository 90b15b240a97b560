"""Fused RMSNorm and SwiGLU give the plain path's loss and gradients, and leave the model as it was."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import peftlab
from conftest import BUILDERS, assert_same_nonzero_grads, batch_for
from peftlab.core.checkpointing import enable_activation_checkpointing
from peftlab.train.speedups.fused_ops import fuse, fused_ops, is_fused, rms_norm, swiglu, unfuse
from peftlab.train.speedups.losses import lm_loss


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _perturbed(arch: str, method: str, **options) -> torch.nn.Module:
    model = peftlab.apply(BUILDERS[arch]().train(), method, **options)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():  # norms away from ones, adapters away from their identity start
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_the_eager_formula_in_value_and_every_gradient(dtype):
    generator = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(2, 5, 16, generator=generator)).to(dtype).requires_grad_()
    weight = torch.randn(16, generator=generator).to(dtype).requires_grad_()
    upstream = torch.randn(2, 5, 16, generator=generator).to(dtype)
    x32 = x.float()
    expected = weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype)
    expected_grads = torch.autograd.grad(expected, (x, weight), upstream)
    fused = rms_norm(x, weight, 1e-6)
    fused_grads = torch.autograd.grad(fused, (x, weight), upstream)
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
    assert fused.dtype == expected.dtype
    torch.testing.assert_close(fused, expected, **tolerance)
    for got, want in zip(fused_grads, expected_grads):
        torch.testing.assert_close(got, want, **tolerance)


def test_swiglu_matches_the_eager_formula_and_keeps_two_tensors_not_three():
    generator = torch.Generator().manual_seed(1)
    gate = torch.randn(3, 7, 24, generator=generator, requires_grad=True)
    up = torch.randn(3, 7, 24, generator=generator, requires_grad=True)
    upstream = torch.randn(3, 7, 24, generator=generator)
    expected = F.silu(gate) * up
    expected_grads = torch.autograd.grad(expected, (gate, up), upstream)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fused = swiglu(gate, up)
    torch.testing.assert_close(fused, expected)
    for got, want in zip(torch.autograd.grad(fused, (gate, up), upstream), expected_grads):
        torch.testing.assert_close(got, want)
    assert {t.data_ptr() for t in saved} == {gate.data_ptr(), up.data_ptr()}


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _on(device: str, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.to(device)
    return {name: value.to(device) for name, value in batch.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch,method,options", [
    ("llama", "lora", {"target_modules": "all_linear"}),  # adapters inside the fused MLP
    ("llama", "full", {}),  # norm weights trained: their gradients go through the fused norm
    ("llama", "ia3", {}),
    ("llama", "prefix_tuning", {"num_virtual_tokens": 3, "reparameterize": False}),
    ("t5", "lora", {"target_modules": "all_linear"}),  # T5's RMS norm
])
def test_fused_step_equals_plain_step(arch, method, options, device):
    plain = _perturbed(arch, method, **options)
    fused = copy.deepcopy(plain)
    batch = batch_for(plain, batch=3, length=10)
    _on(device, fused, batch)
    batch = _on(device, plain, batch)
    batch["attention_mask"][0, :3] = 0  # padding
    torch.manual_seed(0)  # the same dropout masks in both runs (T5 has dropout)
    expected = lm_loss(plain, batch)
    expected.backward()
    torch.manual_seed(0)
    with fused_ops(fused) as count:
        assert count > 0
        loss = lm_loss(fused, batch)
        loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    expected_grads, got = _grads(plain), _grads(fused)
    assert got.keys() == expected_grads.keys() and got
    for name, grad in expected_grads.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def _relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    flat = torch.cat([got[name].float().flatten() for name in want])
    reference = torch.cat([grad.float().flatten() for grad in want.values()])
    return ((flat - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_under_bf16_autocast_the_default_step_stays_as_close_to_fp32_as_the_plain_step(arch, device):
    """``peftlab train`` on a GPU runs in bf16 autocast: the chunked loss and fused layers inside it."""
    reference = _perturbed(arch, "lora", target_modules="all_linear").eval()  # no dropout: same function thrice
    plain, fused = copy.deepcopy(reference), copy.deepcopy(reference)
    batch = batch_for(reference, batch=3, length=12)
    for model in (plain, fused):
        _on(device, model, batch)
    batch = _on(device, reference, batch)
    expected = reference(**batch).loss
    expected.backward()
    with torch.autocast(device, dtype=torch.bfloat16):
        plain_loss = plain(**batch).loss
        with fused_ops(fused) as count:
            assert count > 0
            fused_loss = lm_loss(fused, batch)
    plain_loss.backward()
    fused_loss.backward()
    assert fused_loss.dtype == torch.float32
    torch.testing.assert_close(fused_loss, expected, rtol=1e-2, atol=1e-2)
    plain_error = _relative_error(_grads(plain), _grads(reference))
    fused_error = _relative_error(_grads(fused), _grads(reference))
    assert 0 < plain_error < 0.1  # bf16 rounding, not a different function
    assert fused_error < 1.5 * plain_error, (fused_error, plain_error)


def test_fused_step_under_activation_checkpointing_still_trains_the_adapter():
    plain = _perturbed("llama", "lora")
    fused = copy.deepcopy(plain)
    batch = batch_for(plain, batch=2, length=8)
    lm_loss(plain, batch).backward()
    enable_activation_checkpointing(fused)
    with fused_ops(fused):
        lm_loss(fused, batch).backward()
    assert_same_nonzero_grads(_grads(fused), _grads(plain))


def test_fuse_is_undone_exactly_leaves_the_weights_and_survives_copies():
    model = peftlab.apply(BUILDERS["llama"](), "lora")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    layers = len(model.model.layers)
    assert fuse(model) == 3 * layers + 1  # two norms and one MLP per layer, and the final norm
    assert fuse(model) == 0  # already fused
    copied = copy.deepcopy(model)
    fused_modules = [m for m in copied.modules() if is_fused(m)]
    assert len(fused_modules) == 3 * layers + 1
    assert all(m.forward.__self__ is m for m in fused_modules)  # bound to the copy, not the original
    unfuse(model)
    assert not any("forward" in m.__dict__ for m in model.modules())  # the classes' own forward again
    after = model.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def test_models_without_recognised_modules_are_left_unfused():
    for arch in ("bert", "gpt2"):
        model = BUILDERS[arch]()
        with fused_ops(model) as count:
            assert count == 0

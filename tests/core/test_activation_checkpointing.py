"""Activation checkpointing keeps the loss and every adapter gradient; frozen weights get no gradient."""

from __future__ import annotations

import copy

import pytest
import torch

import peftlab
from conftest import BUILDERS, batch_for
from peftlab.core.checkpointing import CheckpointingError, enable_activation_checkpointing
from peftlab.core.losses import lm_loss


def _adapted(arch: str) -> torch.nn.Module:
    model = peftlab.apply(BUILDERS[arch](), "lora", target_modules="all_linear")
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.05)
    for module in model.modules():  # train mode (checkpointing acts only there) without dropout noise
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):  # T5 attention's functional dropout
            module.dropout = 0.0
    return model.train()


@pytest.mark.parametrize("arch", ["llama", "t5"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_step_equals_plain_step(arch, reentrant):
    plain = _adapted(arch)
    checkpointed = copy.deepcopy(plain)
    enable_activation_checkpointing(checkpointed, reentrant=reentrant)
    batch = batch_for(plain)
    expected = plain(**batch).loss
    expected.backward()
    loss = lm_loss(checkpointed, batch)  # the chunked loss composes with checkpointing
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    reference = dict(peftlab.adapter_parameters(plain))
    for name, parameter in peftlab.adapter_parameters(checkpointed):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        torch.testing.assert_close(parameter.grad, reference[name].grad, rtol=1e-4, atol=1e-6, msg=name)
    trainable = {id(p) for _, p in peftlab.adapter_parameters(checkpointed)}
    assert all(p.grad is None for p in checkpointed.parameters() if id(p) not in trainable)


def test_optimizer_holds_state_only_for_the_method():
    model = _adapted("llama")
    optimizer = torch.optim.AdamW(peftlab.parameter_groups(model, lr=1e-3))
    lm_loss(model, batch_for(model)).backward()
    optimizer.step()
    trainable = {id(p) for _, p in peftlab.adapter_parameters(model)}
    assert {id(p) for p in optimizer.state} == trainable
    assert all(p.grad is None for p in model.parameters() if id(p) not in trainable)


def test_bad_settings_are_refused():
    model = _adapted("llama")
    with pytest.raises(CheckpointingError, match="every_n_layers"):
        enable_activation_checkpointing(model, every_n_layers=0)
    with pytest.raises(CheckpointingError, match="does not support"):
        enable_activation_checkpointing(torch.nn.Linear(2, 2))

"""Activation checkpointing keeps the loss and every adapter gradient; frozen weights get no gradient."""

from __future__ import annotations

import copy

import pytest
import torch

import peftlab
from conftest import BUILDERS, batch_for
from peftlab.core.checkpointing import CheckpointingError, enable_activation_checkpointing
from peftlab.train.speedups.losses import lm_loss


# Methods that change what attention sees (soft prompts, prefixes, gated prefixes) must be recomputed
# exactly in the backward pass, like LoRA's linear deltas.
METHODS = {
    "lora": {"target_modules": "all_linear"},
    "prompt_tuning": {"num_virtual_tokens": 3, "init": "random"},
    "prefix_tuning": {"num_virtual_tokens": 3, "mlp_hidden_size": 16},
    "mam": {"prefix": {"num_virtual_tokens": 3, "mlp_hidden_size": 16}, "adapter": {"bottleneck_size": 8}},
    "unipelt": {"prefix": {"num_virtual_tokens": 3, "mlp_hidden_size": 16}, "adapter": {"bottleneck_size": 8},
                "lora": {"rank": 4, "alpha": 8.0}},
}


def _adapted(arch: str, method: str = "lora") -> torch.nn.Module:
    model = peftlab.apply(BUILDERS[arch](), method, **METHODS[method])
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.05)
    for module in model.modules():  # train mode (checkpointing acts only there) without dropout noise
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):  # T5 attention's functional dropout
            module.dropout = 0.0
    return model.train()


def _padded_batch(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """batch_for's batch with the first row's last three tokens (T5) or first three (LLaMA) padding."""
    batch = batch_for(model)
    pad = slice(-3, None) if model.config.model_type == "t5" else slice(0, 3)
    batch["input_ids"][0, pad] = model.config.pad_token_id
    batch["attention_mask"][0, pad] = 0
    if model.config.model_type != "t5":
        batch["labels"][0, pad] = -100
    return batch


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("arch", ["llama", "t5"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_step_equals_plain_step(arch, reentrant, method):
    plain = _adapted(arch, method)
    checkpointed = copy.deepcopy(plain)
    enable_activation_checkpointing(checkpointed, reentrant=reentrant)
    batch = _padded_batch(plain)
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

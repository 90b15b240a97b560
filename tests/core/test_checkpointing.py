"""Adapters must train under reentrant gradient checkpointing even when nothing else marks the
inputs as requiring grad (a frozen base gives checkpointed layers no differentiable input)."""

import pytest
import torch
import transformers

import peftlab
from conftest import batch_for, tiny_llama


@pytest.fixture
def without_transformers_input_grads(monkeypatch):
    monkeypatch.setattr(transformers.PreTrainedModel, "enable_input_require_grads", lambda self: None)


def test_reentrant_checkpointing_reaches_every_adapter(without_transformers_input_grads):
    model = peftlab.apply(tiny_llama(), "lora")
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.1)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model(**batch_for(model)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in peftlab.adapter_parameters(model))


def test_without_checkpointing_the_embedding_output_is_not_forced_to_need_grad():
    model = peftlab.apply(tiny_llama(), "lora")
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    model(**batch_for(model))
    assert seen == [False]

"""The chunked language-model loss equals the plain one, in value and in every gradient."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import peftlab
from conftest import BUILDERS, batch_for
from peftlab.train.speedups.losses import ChunkedLossError, linear_cross_entropy, lm_loss


def _perturbed(arch: str, method: str, **options) -> torch.nn.Module:
    model = peftlab.apply(BUILDERS[arch]().eval(), method, **options)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in peftlab.adapter_parameters(model)}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("method,options", [("lora", {"target_modules": "all_linear"}), ("full", {})])
def test_lm_loss_equals_plain_loss_and_gradients(arch, method, options):
    plain = _perturbed(arch, method, **options)
    chunked = copy.deepcopy(plain)
    batch = batch_for(plain, batch=3, length=12)
    batch["labels"][0, :4] = -100  # a prompt without labels
    expected = plain(**batch).loss
    expected.backward()
    loss = lm_loss(chunked, batch, chunk_size=5)  # several chunks, the last one short
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    plain_grads, chunked_grads = _grads(plain), _grads(chunked)
    assert plain_grads.keys() == chunked_grads.keys()
    for name, grad in plain_grads.items():
        assert (grad is None) == (chunked_grads[name] is None), name
        if grad is not None:
            torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", ["llama", "t5"])
@pytest.mark.parametrize("method,options", [("prompt_tuning", {"num_virtual_tokens": 4}),
                                            ("prefix_tuning", {"num_virtual_tokens": 3, "reparameterize": False})])
def test_soft_prompts_lm_loss_equals_plain_loss(arch, method, options):
    """Prompt tuning prepends positions that carry no label; the loss skips them as the model does."""
    plain = _perturbed(arch, method, **options)
    chunked = copy.deepcopy(plain)
    batch = batch_for(plain, batch=2, length=9)
    expected = plain(**batch).loss
    expected.backward()
    loss = lm_loss(chunked, batch)
    loss.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    reference = _grads(plain)
    for name, grad in _grads(chunked).items():
        torch.testing.assert_close(grad, reference[name], rtol=1e-4, atol=1e-7, msg=name)


def test_linear_cross_entropy_matches_reference_with_bias_sum_and_scaled_output():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 7, 6, generator=generator, requires_grad=True)
    weight = torch.randn(11, 6, generator=generator, requires_grad=True)
    bias = torch.randn(11, generator=generator, requires_grad=True)
    labels = torch.randint(0, 11, (2, 7), generator=generator)
    labels[1, 2] = -100
    reference = F.cross_entropy((hidden @ weight.T + bias).reshape(-1, 11), labels.reshape(-1), reduction="sum")
    (3 * reference).backward()
    expected = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    loss = linear_cross_entropy(hidden, weight, labels, bias, chunk_size=4, reduction="sum")
    (3 * loss).backward()
    torch.testing.assert_close(loss, reference)
    for tensor, grad in zip((hidden, weight, bias), expected):
        torch.testing.assert_close(tensor.grad, grad)


def test_without_grad_the_value_is_the_same_and_no_graph_is_built():
    model = _perturbed("llama", "lora")
    batch = batch_for(model)
    with torch.no_grad():
        expected = model(**batch).loss
        loss = lm_loss(model, batch)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, expected)


def test_all_labels_ignored_gives_zero_loss_not_nan():
    model = _perturbed("llama", "lora")
    batch = batch_for(model)
    batch["labels"][:] = -100
    assert lm_loss(model, batch).item() == 0.0


def test_the_head_is_left_as_it_was():
    model = _perturbed("gpt2", "lora")
    batch = batch_for(model)
    lm_loss(model, batch)
    assert not model.get_output_embeddings()._forward_pre_hooks
    assert model(**batch).logits.shape[-1] == model.config.vocab_size


def test_an_adapted_head_is_refused_with_the_fix():
    model = peftlab.apply(BUILDERS["llama"]().eval(), "lora", target_modules=("lm_head",))
    with pytest.raises(ChunkedLossError, match="plain loss"):
        lm_loss(model, batch_for(model))


def test_bad_inputs_are_refused():
    model = _perturbed("llama", "lora")
    batch = batch_for(model)
    with pytest.raises(ChunkedLossError, match="labels"):
        lm_loss(model, {k: v for k, v in batch.items() if k != "labels"})
    with pytest.raises(ChunkedLossError, match="chunk_size"):
        lm_loss(model, batch, chunk_size=0)
    with pytest.raises(ChunkedLossError, match="reduction"):
        lm_loss(model, batch, reduction="none")

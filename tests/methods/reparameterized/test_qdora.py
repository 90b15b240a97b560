"""QDoRA is DoRA's own layer over a 4-bit base (a composition, not a subclass pair): outputs and gradients
equal DoRA's over the same weights dequantized, and merge/unmerge go through the dequantized float base."""

from __future__ import annotations

import pytest
import torch

import peftlab
from conftest import batch_for, dequantized_copy, tiny_gpt2, tiny_llama
from peftlab.core.probe import probe_output
from peftlab.core.quantized import is_4bit
from peftlab.methods.reparameterized.dora import DoRALinear

FP32 = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "compute_dtype": "float32"}


def moved_off_the_start(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_qdora_outputs_and_gradients_equal_dora_on_the_dequantized_weights(build):
    model = moved_off_the_start(peftlab.apply(build().eval(), "qdora", **FP32))  # eval: no dropout in the model
    layers = [m for m in model.modules() if isinstance(m, DoRALinear)]
    assert layers and all(type(m) is DoRALinear and is_4bit(m.base_layer) for m in layers)
    reference = dequantized_copy(model)  # plain DoRA on the dequantized weights
    assert not any(is_4bit(m) for m in reference.modules())
    batch = batch_for(model)
    results = []
    for network in (model, reference):
        loss = network(**batch).loss
        loss.backward()
        results.append((loss, dict((name, p.grad) for name, p in peftlab.adapter_parameters(network))))
    (loss, grads), (reference_loss, reference_grads) = results
    torch.testing.assert_close(loss, reference_loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == reference_grads.keys() and any(n.endswith("lora_magnitude") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(probe_output(model), probe_output(reference), atol=1e-5, rtol=1e-5)


def test_qdora_merges_into_the_dequantized_base_and_unmerges_to_the_same_4bit_layers():
    model = moved_off_the_start(peftlab.apply(tiny_llama().eval(), "qdora", **FP32))
    expected = probe_output(model)
    merged_reference = dequantized_copy(model)  # plain DoRA on the dequantized weights
    peftlab.merge(merged_reference)
    quantized = {name: m.base_layer for name, m in model.named_modules() if isinstance(m, DoRALinear)}
    peftlab.merge(model)
    for name, layer in model.named_modules():
        if isinstance(layer, DoRALinear):
            reference_weight = merged_reference.get_submodule(name).base_layer.weight
            assert type(layer.base_layer) is torch.nn.Linear and torch.equal(layer.base_layer.weight, reference_weight)
    peftlab.unmerge(model)
    assert all(m.base_layer is quantized[n] for n, m in model.named_modules() if isinstance(m, DoRALinear))
    torch.testing.assert_close(probe_output(model), expected, atol=0, rtol=0)

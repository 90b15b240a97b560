"""BitFit selects biases; it adds no module (and only zero biases where a model has none)."""

import torch

import peftlab
from conftest import tiny_bert, tiny_llama
from peftlab.core.layers import AdapterModule


def test_bitfit_trains_exactly_the_biases_and_adds_no_module():
    model = peftlab.apply(tiny_bert(), "bitfit")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    assert not any(isinstance(m, AdapterModule) for m in model.modules())


def test_bias_free_models_get_zero_biases_on_linear_layers():
    model = peftlab.apply(tiny_llama().eval(), "bitfit")
    q = model.model.layers[0].self_attn.q_proj
    assert torch.equal(q.bias, torch.zeros(32)) and q.bias.requires_grad
    assert peftlab.parameter_report(model).base == sum(p.numel() for p in tiny_llama().parameters())


def test_no_biases_and_none_to_add_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="no bias to train"):
        peftlab.apply(tiny_llama(), "bitfit", add_missing_biases=False)

"""(IA)³ against its formula: keys/values y = l ⊙ (W x + b); feed-forward y = W (l ⊙ x) + b."""

import torch

import peftlab
from conftest import tiny_bert, tiny_llama


def test_key_and_value_outputs_are_rescaled():
    model = peftlab.apply(tiny_bert().eval(), "ia3")
    layer = model.bert.encoder.layer[0].attention.self.value
    with torch.no_grad():
        layer.ia3_l.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32)
    base = layer.base_layer
    torch.testing.assert_close(layer(x), layer.ia3_l * (x @ base.weight.T + base.bias))


def test_feed_forward_input_is_rescaled():
    model = peftlab.apply(tiny_llama().eval(), "ia3")
    layer = model.model.layers[0].mlp.down_proj
    assert layer.ia3_l.shape == (64,)
    with torch.no_grad():
        layer.ia3_l.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64)
    torch.testing.assert_close(layer(x), (layer.ia3_l * x) @ layer.base_layer.weight.T)


def test_merge_folds_the_scale_into_weight_and_bias():
    model = peftlab.apply(tiny_bert().eval(), "ia3")
    layer = model.bert.encoder.layer[0].attention.self.key
    with torch.no_grad():
        layer.ia3_l.uniform_(0.5, 1.5)
    weight, bias = layer.base_layer.weight.clone(), layer.base_layer.bias.clone()
    peftlab.merge(model)
    torch.testing.assert_close(layer.base_layer.weight, layer.ia3_l[:, None] * weight)
    torch.testing.assert_close(layer.base_layer.bias, layer.ia3_l * bias)

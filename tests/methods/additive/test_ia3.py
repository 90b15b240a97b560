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


def _down_proj_with_random_scale():
    model = peftlab.apply(tiny_llama(), "ia3")
    layer = model.model.layers[0].mlp.down_proj
    with torch.no_grad():
        layer.ia3_l.uniform_(0.5, 1.5)
    return layer


def test_training_folds_the_input_scale_into_the_weight_with_the_same_values_and_gradients():
    layer = _down_proj_with_random_scale()
    x = torch.randn(4, 16, 64, requires_grad=True)  # 64 tokens x 64 inputs >= the 32 x 64 weight
    grad_output = torch.randn(4, 16, 32)

    folded = layer(x)
    assert type(folded.grad_fn).__name__ == "_InputScaledLinearBackward"
    folded.backward(grad_output)
    folded_grads = x.grad.clone(), layer.ia3_l.grad.clone()

    x.grad, layer.ia3_l.grad = None, None
    written = (layer.ia3_l * x) @ layer.base_layer.weight.T
    written.backward(grad_output)

    torch.testing.assert_close(folded, written)
    torch.testing.assert_close(folded_grads[0], x.grad)
    torch.testing.assert_close(folded_grads[1], layer.ia3_l.grad)


def test_input_scale_is_not_folded_for_one_token_under_autocast_or_when_the_weight_trains():
    layer = _down_proj_with_random_scale()
    one_token = torch.randn(1, 1, 64, requires_grad=True)
    assert type(layer(one_token).grad_fn).__name__ != "_InputScaledLinearBackward"

    batch = torch.randn(4, 16, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the product runs in bf16: the plain path, which trains
        under_autocast = layer(batch)
    assert type(under_autocast.grad_fn).__name__ != "_InputScaledLinearBackward"
    under_autocast.float().sum().backward()
    assert layer.ia3_l.grad is not None

    layer.base_layer.weight.requires_grad_(True)
    output = layer(batch)
    assert type(output.grad_fn).__name__ != "_InputScaledLinearBackward"
    output.sum().backward()
    assert layer.base_layer.weight.grad is not None

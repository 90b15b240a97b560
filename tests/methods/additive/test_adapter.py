"""Sequential bottleneck adapter against its formula: h = f(x); y = h + W_up σ(W_down h + b_down) + b_up."""

import pytest
import torch

import peftlab
from conftest import tiny_bert, tiny_t5


def test_adapter_follows_the_output_projection():
    model = peftlab.apply(tiny_bert().eval(), "adapter", bottleneck_size=4, activation="relu")
    layer = model.bert.encoder.layer[0].output.dense
    with torch.no_grad():
        layer.adapter.up.weight.normal_()
    x = torch.randn(2, 3, 64)
    h = layer.base_layer(x)
    a = layer.adapter
    expected = h + torch.relu(h @ a.down.weight.T + a.down.bias) @ a.up.weight.T + a.up.bias
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("placement, expected", [("houlsby", 2 + 2), ("pfeiffer", 2)])
def test_placement_houlsby_after_attention_and_ffn_pfeiffer_after_ffn(placement, expected):
    model = peftlab.apply(tiny_bert(), "adapter", bottleneck_size=4, placement=placement)
    adapters = [m for m in model.modules() if type(m).__name__ == "SequentialAdapter"]
    assert len(adapters) == expected


def test_t5_houlsby_covers_self_and_cross_attention_and_both_stacks():
    model = peftlab.apply(tiny_t5(), "adapter", bottleneck_size=4)
    names = [n for n, m in model.named_modules() if type(m).__name__ == "SequentialAdapter"]
    assert sum(".SelfAttention.o" in n for n in names) == 4
    assert sum(".EncDecAttention.o" in n for n in names) == 2
    assert sum(".DenseReluDense.wo" in n for n in names) == 4

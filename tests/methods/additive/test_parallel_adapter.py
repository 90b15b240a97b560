"""Parallel adapter: the block's output plus a scaled bottleneck of the block's input, checked by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import peftlab
from conftest import FAMILY_BUILDERS, tiny_bert, tiny_llama
from methods.hybrid.support import losses_while_training
from peftlab.core.targeting import TargetError
from peftlab.methods.additive.parallel_adapter import BlockInputTap, ParallelAdapter


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))


def reference_bottleneck(adapter: ParallelAdapter, x: torch.Tensor) -> torch.Tensor:
    bottleneck = adapter.adapter
    hidden = F.relu(x @ bottleneck.down.weight.T + bottleneck.down.bias)
    return hidden @ bottleneck.up.weight.T + bottleneck.up.bias


def test_llama_feed_forward_equals_block_plus_scaled_bottleneck_of_its_input():
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "parallel_adapter", bottleneck_size=4, scaling=3.0)
    randomize(model)
    x = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(1))
    mlp, base_mlp = model.model.layers[1].mlp, base.model.layers[1].mlp
    expected = base_mlp(x) + 3.0 * reference_bottleneck(mlp.down_proj, x)
    torch.testing.assert_close(mlp(x), expected)


def test_bert_adapter_reads_the_attention_output_and_adds_before_the_layer_norm():
    base = tiny_bert().eval()
    model = peftlab.apply(copy.deepcopy(base), "parallel_adapter", bottleneck_size=4, scaling=0.5).eval()
    randomize(model)
    layer, base_layer = model.bert.encoder.layer[0], base.bert.encoder.layer[0]
    attention_output = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(2))
    ffn = base_layer.output.dense(base_layer.intermediate(attention_output))
    delta = 0.5 * reference_bottleneck(layer.output.dense, attention_output)
    expected = base_layer.output.LayerNorm(ffn + delta + attention_output)
    torch.testing.assert_close(layer.feed_forward_chunk(attention_output), expected)


@pytest.mark.parametrize("architecture", sorted(FAMILY_BUILDERS))
def test_attention_and_feed_forward_blocks_each_get_one_adapter(architecture):
    model = peftlab.apply(FAMILY_BUILDERS[architecture](), "parallel_adapter", bottleneck_size=4,
                          blocks=("attention", "feed_forward"))
    adapters = [m for m in model.modules() if isinstance(m, ParallelAdapter)]
    taps = [m for m in model.modules() if isinstance(m, BlockInputTap)]
    blocks = {"bert": 4, "llama": 4, "gpt2": 4, "t5": 2 * 2 + 3 * 2}[architecture]  # T5 decoder: self, cross, ff
    assert len(adapters) == len(taps) == blocks
    assert {id(tap.reader) for tap in taps} == {id(a) for a in adapters}


def test_training_lowers_the_loss_and_a_deep_copy_keeps_its_taps():
    model = peftlab.apply(tiny_llama(), "parallel_adapter", bottleneck_size=4)
    clone = copy.deepcopy(model)
    tap = clone.model.layers[0].mlp.up_proj
    assert tap.reader is clone.model.layers[0].mlp.down_proj
    losses = losses_while_training(model)
    assert losses[-1] < losses[0] - 0.05


def test_unknown_block_and_unknown_architecture_are_user_errors():
    with pytest.raises(peftlab.ConfigError, match="blocks"):
        peftlab.make_config("parallel_adapter", blocks=("cross",))
    model = tiny_bert()
    model.config.model_type = "mystery"
    with pytest.raises(TargetError, match="block layout"):
        peftlab.apply(model, "parallel_adapter")


def test_config_round_trips_through_json():
    config = peftlab.make_config("parallel_adapter", bottleneck_size=16, scaling=2.0, blocks=["attention"])
    assert type(config).from_dict(config.to_dict()) == config

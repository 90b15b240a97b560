"""MAM = prefix-tuning on attention + a scaled parallel adapter on the feed-forward, applied together."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import peftlab
from conftest import FAMILY_BUILDERS
from contract_cases.mam import OPTIONS
from methods.hybrid.support import losses_while_training, perturb
from peftlab.core.probe import probe_output
from peftlab.methods.additive.parallel_adapter import ParallelAdapter


@pytest.mark.parametrize("architecture", sorted(FAMILY_BUILDERS))
def test_mam_equals_prefix_tuning_and_parallel_adapter_injected_together(architecture):
    base = FAMILY_BUILDERS[architecture]().eval()
    hybrid = peftlab.apply(copy.deepcopy(base), "mam", **OPTIONS)
    perturb(hybrid)
    config = peftlab.peft_state(hybrid).config
    parts = copy.deepcopy(base)
    peftlab.get_method("prefix_tuning").inject(parts, config.prefix)
    peftlab.get_method("parallel_adapter").inject(parts, config.adapter)
    parts.load_state_dict(hybrid.state_dict())  # same weights, module for module
    torch.testing.assert_close(probe_output(hybrid), probe_output(parts), atol=0, rtol=0)
    assert not torch.allclose(probe_output(hybrid), probe_output(base))


def test_mam_puts_adapters_on_feed_forward_blocks_only_and_prefixes_every_self_attention():
    model = peftlab.apply(FAMILY_BUILDERS["t5"](), "mam", **OPTIONS)
    adapters = [name for name, m in model.named_modules() if isinstance(m, ParallelAdapter)]
    assert len(adapters) == 4 and all(name.endswith("DenseReluDense.wo") for name in adapters)
    assert len(model.prefix_encoder.sites) == 4  # encoder + decoder self-attention


def test_defaults_follow_the_paper_and_the_nested_config_round_trips_through_json():
    config = peftlab.make_config("mam")
    assert (config.prefix.num_virtual_tokens, config.adapter.bottleneck_size, config.adapter.scaling) == (30, 512, 4.0)
    custom = peftlab.make_config("mam", **OPTIONS)
    assert custom.adapter.bottleneck_size == 8 and custom.prefix.num_virtual_tokens == 3
    restored = type(custom).from_dict(json.loads(custom.to_json()))
    assert restored == custom


def test_parts_may_not_save_modules_themselves():
    with pytest.raises(peftlab.ConfigError, match="modules_to_save"):
        peftlab.make_config("mam", adapter={"modules_to_save": ["classifier"]})


def test_training_lowers_the_loss():
    model = peftlab.apply(FAMILY_BUILDERS["gpt2"](), "mam", **OPTIONS)
    losses = losses_while_training(model)
    assert losses[-1] < losses[0] - 0.05


def test_save_with_the_reparameterisation_kept_round_trips(tmp_path):
    base = FAMILY_BUILDERS["bert"]().eval()
    options = {**OPTIONS, "prefix": {**OPTIONS["prefix"], "keep_reparameterization": True}}
    model = peftlab.apply(copy.deepcopy(base), "mam", **options)
    perturb(model)
    peftlab.save_adapter(model, tmp_path / "adapter")
    loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert not loaded.prefix_encoder.folded
    torch.testing.assert_close(probe_output(loaded), probe_output(model), atol=0, rtol=0)

import json
import warnings

import pytest

import peftlab
from peftlab.core.config import ConfigError


def test_config_round_trips_through_json_with_the_method_name():
    config = peftlab.make_config("lora", rank=4, target_modules=["all_linear"])
    data = json.loads(config.to_json())
    assert data["method"] == "lora" and data["format_version"] == 1
    assert type(config).from_dict(data) == config


def test_configs_are_frozen():
    config = peftlab.make_config("lora")
    with pytest.raises(Exception):
        config.rank = 3


def test_out_of_range_values_name_the_field():
    with pytest.raises(ConfigError, match="'rank': must be a positive integer"):
        peftlab.make_config("lora", rank=0)


def test_unknown_options_list_the_known_ones():
    with pytest.raises(ConfigError, match="has no option 'rnak'.*rank"):
        peftlab.make_config("lora", rnak=4)


def test_string_values_from_the_command_line_are_converted():
    config = peftlab.make_config("lora", rank="16", alpha="32", target_modules="q_proj,v_proj")
    assert (config.rank, config.alpha, config.target_modules) == (16, 32.0, ("q_proj", "v_proj"))
    with pytest.raises(ConfigError, match="'rank': cannot use 'big' as int"):
        peftlab.make_config("lora", rank="big")


def test_a_hybrid_part_from_the_command_line_is_a_json_object():
    config = peftlab.make_config("mam", adapter='{"bottleneck_size": 64}')
    assert (config.adapter.bottleneck_size, config.adapter.scaling) == (64, 4.0)  # the rest keeps MAM's defaults
    with pytest.raises(ConfigError, match="'adapter': .* is not a JSON object"):
        peftlab.make_config("mam", adapter="bottleneck_size=64")


def test_unknown_keys_from_a_newer_version_warn_instead_of_crashing():
    data = {**peftlab.make_config("lora").to_dict(), "format_version": 9, "quantum_rank": 3}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = type(peftlab.make_config("lora")).from_dict(data)
    assert config.rank == 8
    assert any("quantum_rank" in str(w.message) and "format 9" in str(w.message) for w in caught)


def test_a_config_for_another_method_is_refused():
    with pytest.raises(ConfigError, match="for method 'ia3', not 'lora'"):
        type(peftlab.make_config("lora")).from_dict({"method": "ia3"})

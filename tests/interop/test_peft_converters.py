"""Selecting a saved adapter's modules by name, without a model: the same presets and patterns as targeting."""

import pytest

from peftlab.core.targeting import TargetError
from peftlab.interop.peft_converters import UnsupportedPeftAdapter, select_modules

LLAMA_NAMES = [f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkvo"]


def test_a_preset_selects_what_it_selects_on_a_model_of_that_family():
    chosen = select_modules(LLAMA_NAMES, ("attention_qv",), "llama")
    assert chosen == [name for name in LLAMA_NAMES if name.endswith(("q_proj", "v_proj"))]


def test_a_pattern_matches_whole_dotted_suffixes_only():
    assert select_modules(LLAMA_NAMES, ("o_proj",), None) == [n for n in LLAMA_NAMES if n.endswith("o_proj")]
    assert select_modules(LLAMA_NAMES, ("proj",), None) == []


def test_a_preset_for_an_unknown_family_names_the_fix():
    with pytest.raises(UnsupportedPeftAdapter, match="module name patterns instead"):
        select_modules(LLAMA_NAMES, ("attention_qv",), "falcon")


def test_a_broken_pattern_is_a_target_error():
    with pytest.raises(TargetError, match="not a valid regular expression"):
        select_modules(LLAMA_NAMES, ("q_proj(",), "llama")

import pytest
from torch import nn

from conftest import FAMILY_BUILDERS, tiny_roberta
from peftlab.core.targeting import TargetError, expand_targets, find_modules, find_parameters


@pytest.mark.parametrize("preset", ["attention_qv", "attention", "feed_forward", "all_linear", "attention_output"])
def test_presets_match_something_in_every_family(preset, architecture):
    model = FAMILY_BUILDERS[architecture]()
    names = [name for name, _ in find_modules(model, preset)]
    assert names and all(isinstance(model.get_submodule(n), nn.Module) for n in names)


def test_attention_qv_picks_query_and_value_of_every_bert_layer():
    names = [name for name, _ in find_modules(tiny_roberta(), "attention_qv")]
    assert names == [f"roberta.encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query", "value")]


def test_all_linear_leaves_out_heads_and_pooler():
    names = {name for name, _ in find_modules(FAMILY_BUILDERS["bert"](), "all_linear")}
    assert len(names) == 2 * 6
    assert not any("pooler" in n or "classifier" in n for n in names)


def test_a_plain_name_matches_as_a_suffix():
    names = [name for name, _ in find_modules(FAMILY_BUILDERS["llama"](), ["q_proj"])]
    assert names == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def test_a_pattern_that_matches_nothing_lists_what_the_model_has():
    with pytest.raises(TargetError) as error:
        find_modules(FAMILY_BUILDERS["llama"](), ["query"])
    message = str(error.value)
    assert "target 'query' matches no linear layer (nn.Linear or GPT-2 Conv1D). The model's modules:" in message
    assert "model.layers.N.self_attn.q_proj (x2)" in message
    assert "attention_qv" in message  # the presets are offered


def test_a_parameter_pattern_that_matches_nothing_names_its_role_and_says_module_once():
    with pytest.raises(TargetError) as error:
        find_parameters(FAMILY_BUILDERS["bert"](), ["classifer"], role="modules_to_save pattern")
    message = str(error.value)
    assert message.startswith("modules_to_save pattern 'classifer' matches no module. The model's modules:")
    assert "classifier" in message and "Module module" not in message


def test_an_invalid_regex_is_a_clear_error():
    with pytest.raises(TargetError, match="not a valid regular expression"):
        expand_targets(FAMILY_BUILDERS["gpt2"](), ["c_attn("])


def test_presets_on_an_unknown_architecture_ask_for_patterns():
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                     num_attention_heads=2, word_embed_proj_dim=16))
    with pytest.raises(TargetError, match="give module name patterns"):
        find_modules(model, "attention_qv")
    assert len(find_modules(model, [r"self_attn\.(q|v)_proj"])) == 2

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import peftlab
from conftest import tiny_bert, tiny_llama
from peftlab.core.probe import probe_output


def trained_lora(rank: int = 4):
    model = peftlab.apply(tiny_llama().eval(), "lora", rank=rank)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.normal_(0, 0.1)
    return model


def test_saved_folder_holds_json_config_and_safetensors_only(tmp_path):
    peftlab.save_adapter(trained_lora(), tmp_path / "a")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["method"] == "lora" and config["base_model"]["model_type"] == "llama"
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert set(tensors) == {n for n, _ in peftlab.adapter_parameters(trained_lora())}


def test_saving_again_replaces_the_folder_and_leaves_no_temporaries(tmp_path):
    peftlab.save_adapter(trained_lora(), tmp_path / "a")
    peftlab.save_adapter(trained_lora(), tmp_path / "a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_a_crash_while_saving_leaves_the_previous_adapter(tmp_path, monkeypatch):
    model = trained_lora()
    peftlab.save_adapter(model, tmp_path / "a")
    before = (tmp_path / "a" / "adapter_model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("peftlab.core.serialization.save_file", crash)
    with pytest.raises(OSError):
        peftlab.save_adapter(trained_lora(rank=2), tmp_path / "a")
    assert (tmp_path / "a" / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_loading_onto_a_model_of_another_shape_names_the_tensor_and_shapes(tmp_path):
    peftlab.save_adapter(trained_lora(), tmp_path / "a")
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(peftlab.AdapterFileError, match=r"another shape: .*q_proj.lora_A: adapter \(4, 32\) vs model \(4, 48\)"):
        peftlab.load_adapter(wider, tmp_path / "a")


def test_loading_onto_another_architecture_says_which(tmp_path):
    peftlab.save_adapter(trained_lora(), tmp_path / "a")
    with pytest.raises(peftlab.AdapterFileError, match="trained on a 'llama' model; this model is 'bert'"):
        peftlab.load_adapter(tiny_bert(), tmp_path / "a")


def test_tensors_that_do_not_fit_are_listed_and_the_model_is_left_as_given(tmp_path):
    model = peftlab.apply(tiny_llama().eval(), "lora", rank=4, target_modules=["q_proj"])
    peftlab.save_adapter(model, tmp_path / "a")
    document = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    document["target_modules"] = ["v_proj"]
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(document))
    fresh = tiny_llama().eval()
    fresh.get_input_embeddings().weight.requires_grad_(False)  # the caller's own flags come back as they were
    flags = [(n, p.requires_grad) for n, p in fresh.named_parameters()]
    with pytest.raises(peftlab.AdapterFileError, match="missing tensors model.layers.0.self_attn.v_proj.lora_A"):
        peftlab.load_adapter(fresh, tmp_path / "a")
    assert peftlab.peft_state(fresh) is None
    assert [(n, p.requires_grad) for n, p in fresh.named_parameters()] == flags


def test_a_truncated_weights_file_is_reported_as_corrupt(tmp_path):
    peftlab.save_adapter(trained_lora(), tmp_path / "a")
    weights = tmp_path / "a" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(peftlab.AdapterFileError, match="corrupt or truncated"):
        peftlab.load_adapter(tiny_llama(), tmp_path / "a")


def test_loading_into_a_model_that_already_carries_the_method_only_copies_weights(tmp_path):
    model = trained_lora()
    peftlab.save_adapter(model, tmp_path / "a")
    target = peftlab.apply(tiny_llama().eval(), "lora", rank=4)
    peftlab.load_adapter(target, tmp_path / "a")
    torch.testing.assert_close(probe_output(target), probe_output(model), rtol=0, atol=0)


def test_a_folder_without_config_is_not_an_adapter(tmp_path):
    with pytest.raises(peftlab.AdapterFileError, match="adapter_config.json is missing"):
        peftlab.load_adapter(tiny_llama(), tmp_path)


def test_unload_returns_the_plain_merged_model():
    model = trained_lora()
    expected = probe_output(model)
    plain = peftlab.unload(copy.deepcopy(model))
    assert peftlab.peft_state(plain) is None
    assert not any("lora" in name for name, _ in plain.named_parameters())
    torch.testing.assert_close(probe_output(plain), expected, atol=1e-5, rtol=1e-5)

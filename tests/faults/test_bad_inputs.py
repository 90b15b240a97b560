"""Each bad input gets an error (or warning) that names the problem, and leaves the files and the model as
they were: corrupt or truncated adapters, adapters for another base, vocabulary mismatches, NaN weights,
newer config versions, pickled adapters, names that would escape their folder, adapters that do nothing."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import peftlab
from conftest import tiny_bert, tiny_llama
from peftlab.core.atomic import UnsafePathError, safe_child
from peftlab.core.checks import InertAdapterWarning
from peftlab.core.config import ConfigError
from peftlab.core.serialization import BaseModelMismatchWarning
from peftlab.interop import export_peft
from transformers import LlamaConfig, LlamaForCausalLM


def trained(model=None, **options):
    model = peftlab.apply(model if model is not None else tiny_llama().eval(), "lora", rank=4, **options)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def refused(folder: Path, match: str, model=None, error=peftlab.AdapterFileError):
    """Loading fails with ``match``; the folder's bytes and the model are unchanged."""
    model = model if model is not None else tiny_llama().eval()
    names = [n for n, _ in model.named_parameters()]
    before = snapshot(folder)
    with pytest.raises(error, match=match):
        peftlab.load_adapter(model, folder)
    assert snapshot(folder) == before
    assert peftlab.peft_state(model) is None and [n for n, _ in model.named_parameters()] == names


@pytest.fixture
def adapter(tmp_path) -> Path:
    peftlab.save_adapter(trained(), tmp_path / "a")
    return tmp_path / "a"


def test_config_that_is_not_json(adapter):
    (adapter / "adapter_config.json").write_text('{"method": "lora", "rank": 4')
    refused(adapter, "not valid JSON.*corrupt")


def test_config_that_is_not_an_object(adapter):
    (adapter / "adapter_config.json").write_text("[1, 2]")
    refused(adapter, "not a JSON object")


@pytest.mark.parametrize(("field", "value", "match"), [
    ("rank", "big", "field 'rank': cannot use 'big' as int"),
    ("rank", 0, "field 'rank': must be a positive integer"),
    ("dropout", 1.5, "field 'dropout'"),
    ("target_modules", 7, "field 'target_modules'"),
])
def test_config_values_are_validated_naming_the_field(adapter, field, value, match):
    document = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**document, field: value}))
    refused(adapter, match, error=ConfigError)


def test_peft_config_values_are_validated_naming_the_field(tmp_path):
    export_peft(trained(), tmp_path / "p")
    document = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    (tmp_path / "p" / "adapter_config.json").write_text(json.dumps({**document, "r": "four"}))
    refused(tmp_path / "p", "field 'r' must be int")


@pytest.mark.parametrize("keep", [0, 8, 100, -1])
def test_truncated_or_corrupt_weights(adapter, keep):
    weights = adapter / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep] if keep >= 0 else data[:8] + b"\xff" * (len(data) - 8))
    refused(adapter, "corrupt or truncated")


def test_nan_weights_are_refused_naming_the_tensor(adapter):
    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name][0, 0] = float("nan")
    save_file(tensors, weights)
    refused(adapter, f"NaN or infinite values in {name}")


def test_adapter_for_another_family(adapter):
    refused(adapter, "trained on a 'llama' model; this model is 'bert'", model=tiny_bert().eval())


def test_adapter_for_another_shape(adapter):
    torch.manual_seed(0)
    wider = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    refused(adapter, "another shape", model=wider)


def test_a_base_with_another_fingerprint_but_fitting_tensors_warns(adapter):
    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    with pytest.warns(BaseModelMismatchWarning, match="other parameter names or shapes.*fingerprint"):
        peftlab.load_adapter(other, adapter)


def test_vocabulary_mismatch_warns_and_resized_embeddings_are_refused(tmp_path):
    bigger = tiny_llama().eval()
    bigger.resize_token_embeddings(100)
    peftlab.save_adapter(trained(bigger), tmp_path / "lora")
    with pytest.warns(BaseModelMismatchWarning, match="vocabulary of 100 tokens; this base has 96"):
        peftlab.load_adapter(tiny_llama().eval(), tmp_path / "lora")

    grown = tiny_llama().eval()
    grown.resize_token_embeddings(100)
    peftlab.save_adapter(trained(grown, modules_to_save=["embed_tokens"]), tmp_path / "embeddings")
    refused(tmp_path / "embeddings", r"vocabulary of 100 tokens.*resize_token_embeddings\(100\).*resized embeddings")
    fresh = tiny_llama().eval()
    fresh.resize_token_embeddings(100)
    peftlab.load_adapter(fresh, tmp_path / "embeddings")


def test_added_tokens_are_saved_with_the_adapter(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(96)} | {"[UNK]": 96}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[UNK]")))
    tokenizer.add_tokens(["<new1>", "<new2>", "<new3>"])
    model = tiny_llama().eval()
    model.resize_token_embeddings(len(tokenizer))
    model = trained(model, modules_to_save=["embed_tokens"])
    peftlab.save_adapter(model, tmp_path / "a", tokenizer=tokenizer)
    assert (tmp_path / "a" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["base_model"]["vocab_size"] == 100
    export_peft(tmp_path / "a", tmp_path / "p")
    assert (tmp_path / "p" / "tokenizer.json").is_file()


def test_a_newer_config_version_with_unknown_keys_loads_with_a_warning(adapter):
    document = json.loads((adapter / "adapter_config.json").read_text())
    document.update(format_version=99, quantum_rank=3)
    (adapter / "adapter_config.json").write_text(json.dumps(document))
    with pytest.warns(UserWarning, match="quantum_rank.*format 99"):
        model = peftlab.load_adapter(tiny_llama().eval(), adapter)
    assert peftlab.peft_state(model).config.rank == 4


def test_a_pickled_peft_adapter_is_refused_without_unpickling(tmp_path, monkeypatch):
    export_peft(trained(), tmp_path / "p")
    (tmp_path / "p" / "adapter_model.safetensors").unlink()
    (tmp_path / "p" / "adapter_model.bin").write_bytes(b"\x80\x04 not to be unpickled")

    def never(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", never)
    monkeypatch.setattr("pickle.loads", never)
    refused(tmp_path / "p", "pickle file.*safetensors only")


def test_an_unknown_peft_weight_is_not_mistaken_for_a_trained_base_weight(tmp_path):
    export_peft(trained(), tmp_path / "p")
    weights = tmp_path / "p" / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["base_model.model.model.embed_tokens.lora_embedding_A"] = torch.zeros(4, 96)
    save_file(tensors, weights)
    refused(tmp_path / "p", "tensors peftlab does not read: model.embed_tokens.lora_embedding_A")


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a/../../b", "", "..", "x\x00y"])
def test_names_cannot_escape_their_folder(tmp_path, name):
    with pytest.raises(UnsafePathError, match="outside"):
        safe_child(tmp_path, name)
    assert safe_child(tmp_path, "run-1/checkpoint-3") == tmp_path / "run-1" / "checkpoint-3"


def test_an_adapter_that_changes_nothing_warns_on_load_and_merge(tmp_path):
    untrained = peftlab.apply(tiny_llama().eval(), "lora", rank=4)
    peftlab.save_adapter(untrained, tmp_path / "zero")
    with pytest.warns(InertAdapterWarning, match="loaded from .* changes nothing: all 4 of its layers"):
        loaded = peftlab.load_adapter(tiny_llama().eval(), tmp_path / "zero")
    with pytest.warns(InertAdapterWarning, match="merged from this model changes nothing: all 4 of its layers"):
        report = peftlab.merge(loaded)
    assert report.layers == 4  # a warning, not a refusal: the merge happened
    ok = peftlab.load_adapter(tiny_llama().eval(), peftlab.save_adapter(trained(), tmp_path / "ok"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InertAdapterWarning)
        peftlab.merge(ok)


def test_a_partly_trained_adapter_is_not_called_inert(tmp_path):
    model = peftlab.apply(tiny_llama().eval(), "lora", rank=4)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.lora_B.fill_(0.01)
    peftlab.save_adapter(model, tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error", InertAdapterWarning)
        peftlab.load_adapter(tiny_llama().eval(), tmp_path / "a")


def test_ia3_at_its_identity_start_is_inert(tmp_path):
    peftlab.save_adapter(peftlab.apply(tiny_llama().eval(), "ia3"), tmp_path / "a")
    with pytest.warns(InertAdapterWarning):
        peftlab.load_adapter(copy.deepcopy(tiny_llama().eval()), tmp_path / "a")


def test_a_format_version_that_is_not_a_number_names_the_field(adapter):
    document = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**document, "format_version": "two"}))
    refused(adapter, "field 'format_version': must be an integer", error=ConfigError)


def test_no_pickle_code_path_in_the_package():
    source = Path(peftlab.__file__).parent
    offenders = [
        f"{path.relative_to(source)}:{number}"
        for path in source.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if any(call in line for call in ("torch.load(", "import pickle", "pickle.load", "import dill", "joblib.load"))
    ]
    assert not offenders, offenders


def test_a_peft_type_peftlab_does_not_read_is_named_by_the_cli(tmp_path, capsys):
    from peftlab.cli import main

    folder = tmp_path / "fourierft"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "FOURIERFT", "n_frequency": 8,
                                                            "target_modules": ["q_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.fourierft_spectrum": torch.zeros(8)},
              folder / "adapter_model.safetensors")
    refused(folder, "adapter type 'FOURIERFT'.*not one peftlab reads; it reads .*LORA")
    assert main(["import", "--format", "peft", str(folder), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("peftlab import: error: peft adapter type 'FOURIERFT'") and error.count("\n") == 1
    assert not (tmp_path / "out").exists()

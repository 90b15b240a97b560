"""The converted-weights cache of GGUF models: a second load reads the entry without converting; a changed
source file is converted again; a conversion killed midway leaves nothing that is served; an entry that
lost part of a file is converted again. The real SmolLM2 GGUF (slow): the cached folder loads the same
model and tokenizer as the GGUF file itself."""

import os
from pathlib import Path

import pytest

from peftlab.train import weights_cache
from peftlab.train.weights_cache import MANIFEST, converted_folder


class Recorder:
    """A stand-in converter: writes what a conversion writes (a big weights file, config, tokenizer)."""

    def __init__(self, fail_after_weights: bool = False) -> None:
        self.calls, self.fail_after_weights = 0, fail_after_weights

    def __call__(self, gguf: Path, staging: Path) -> None:
        self.calls += 1
        (staging / "model.safetensors").write_bytes(gguf.read_bytes() * 4)
        if self.fail_after_weights:
            raise KeyboardInterrupt  # as a kill would stop it
        (staging / "config.json").write_text('{"model_type": "llama"}')
        (staging / "tokenizer.json").write_text("{}")


@pytest.fixture
def gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    return path


def test_second_load_reads_the_entry_without_converting(gguf):
    convert = Recorder()
    first = converted_folder(gguf, convert)
    assert convert.calls == 1 and (first / MANIFEST).is_file() and (first / "config.json").is_file()
    assert converted_folder(gguf, convert) == first and convert.calls == 1


@pytest.mark.parametrize("change", ["content", "size", "mtime", "replaced"])
def test_a_changed_source_is_converted_again(gguf, change):
    convert = Recorder()
    first = converted_folder(gguf, convert)
    stat = gguf.stat()
    if change == "content":  # same size, same mtime: only the first MiB's digest tells
        data = bytearray(gguf.read_bytes())
        data[10] ^= 1
        gguf.write_bytes(bytes(data))
        os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    elif change == "size":
        gguf.write_bytes(gguf.read_bytes() + b"\0")
    elif change == "mtime":
        os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    else:
        other = gguf.with_name("new.gguf")
        other.write_bytes(gguf.read_bytes()[::-1])
        other.replace(gguf)
    second = converted_folder(gguf, convert)
    assert convert.calls == 2 and second != first
    assert (second / "model.safetensors").read_bytes() == gguf.read_bytes() * 4


def test_a_killed_conversion_leaves_nothing_served(gguf):
    with pytest.raises(KeyboardInterrupt):
        converted_folder(gguf, Recorder(fail_after_weights=True))
    weights = gguf.parent / "cache" / "weights"
    assert not any(p.name.endswith(".tmp") for p in weights.iterdir()) if weights.exists() else True
    assert not any(weights.glob("*/model.safetensors")) if weights.exists() else True
    convert = Recorder()
    folder = converted_folder(gguf, convert)
    assert convert.calls == 1 and (folder / "config.json").is_file()


@pytest.mark.parametrize("damage", ["truncated", "no manifest", "file gone"])
def test_an_entry_that_does_not_match_its_manifest_is_converted_again(gguf, damage):
    convert = Recorder()
    folder = converted_folder(gguf, convert)
    if damage == "truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-10])
    elif damage == "no manifest":
        (folder / MANIFEST).unlink()
    else:
        (folder / "tokenizer.json").unlink()
    again = converted_folder(gguf, convert)
    assert convert.calls == 2 and again == folder
    assert (folder / "model.safetensors").read_bytes() == gguf.read_bytes() * 4


def test_cache_off_reads_the_gguf_itself(gguf, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", "off")
    convert = Recorder()
    assert converted_folder(gguf, convert) is None and convert.calls == 0


def test_load_model_goes_through_the_cache_for_gguf_aliases_only(monkeypatch, tmp_path):
    from peftlab.train.models import ModelSource, cached_conversion

    monkeypatch.setattr(weights_cache, "converted_folder", lambda path: tmp_path / "converted")
    assert cached_conversion(ModelSource("some/folder")) == ModelSource("some/folder")
    assert cached_conversion(ModelSource("pkg", "m.gguf")) == ModelSource(str(tmp_path / "converted"))


@pytest.mark.slow
def test_real_smollm2_cached_folder_loads_the_same_model_and_tokenizer(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftlab.train.models import resolve_model

    try:
        source = resolve_model("smollm2-135m")
    except Exception as error:  # noqa: BLE001 - the package is optional
        pytest.skip(str(error))
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    folder = converted_folder(Path(source.path) / source.gguf_file)
    text = "Write a haiku about the sea."
    direct_tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    cached_tokenizer = AutoTokenizer.from_pretrained(folder)
    assert direct_tokenizer(text)["input_ids"] == cached_tokenizer(text)["input_ids"]
    assert (direct_tokenizer.eos_token_id, direct_tokenizer.bos_token_id) == (cached_tokenizer.eos_token_id,
                                                                               cached_tokenizer.bos_token_id)
    ids = torch.tensor([direct_tokenizer(text)["input_ids"]])
    with torch.no_grad():
        direct = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file).eval()(ids).logits
        cached = AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits
    torch.testing.assert_close(cached, direct, rtol=0, atol=0)

"""Tokenised data cached between runs: a second run reads the entry; other data, another tokenizer or
another maximum length make another entry; a damaged entry is rebuilt, never served."""

import json

import pytest

from peftlab.tasks import Example, get_task
from peftlab.train import TrainArgs, run_training
from peftlab.train.encoding import encode
from peftlab.train.feature_cache import encode_cached, entry_path, read_features
from train.tiny import char_tokenizer

EXAMPLES = [Example("a fine film", label=1), Example("dull, and too long", label=0), Example("ok", label=1)]


def entries(root):
    return sorted((root / "features").glob("*.safetensors"))


def test_second_encoding_reads_the_cache_and_equals_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    task, tokenizer = get_task("sst2"), char_tokenizer("bert")
    first, info = encode_cached(task, EXAMPLES, tokenizer, "encoder", 16)
    assert not info["features_cached"] and len(entries(tmp_path)) == 1
    second, info = encode_cached(task, EXAMPLES, tokenizer, "encoder", 16)
    assert info["features_cached"]
    assert first == second == encode(task, EXAMPLES, tokenizer, "encoder", 16)


def test_causal_and_regression_features_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    tokenizer = char_tokenizer("llama")
    for task, examples, kind in [
        (get_task("alpaca"), [Example("say hi", target="hi"), Example("count", target="1 2 3")], "decoder"),
        (get_task("stsb"), [Example("a", "b", label=3.2), Example("c", "d", label=0.0)], "encoder"),
    ]:
        expected = encode(task, examples, tokenizer, kind, 24)
        encode_cached(task, examples, tokenizer, kind, 24)
        path = entry_path(task, examples, tokenizer, kind, 24)
        assert read_features(path) == expected


@pytest.mark.parametrize("change", ["data", "tokenizer", "max_length"])
def test_a_change_that_changes_the_features_makes_another_entry(tmp_path, monkeypatch, change):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    task, tokenizer = get_task("sst2"), char_tokenizer("bert")
    encode_cached(task, EXAMPLES, tokenizer, "encoder", 16)
    examples, length = EXAMPLES, 16
    if change == "data":
        examples = [Example("a fine film!", label=1), *EXAMPLES[1:]]
    elif change == "tokenizer":
        tokenizer = char_tokenizer("t5")  # another post-processor: no [CLS]-like start token
    else:
        length = 8
    features, info = encode_cached(task, examples, tokenizer, "encoder", length)
    assert not info["features_cached"] and len(entries(tmp_path)) == 2
    assert features == encode(task, examples, tokenizer, "encoder", length)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "garbage"])
def test_a_damaged_entry_is_rebuilt_not_served(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path))
    task, tokenizer = get_task("sst2"), char_tokenizer("bert")
    expected, _ = encode_cached(task, EXAMPLES, tokenizer, "encoder", 16)
    (path,) = entries(tmp_path)
    data = path.read_bytes()
    broken = {"truncated": data[:-5], "empty": b"", "garbage": b"\x00" * 64,
              "flipped": data[:-3] + bytes([data[-3] ^ 1]) + data[-2:]}[damage]
    path.write_bytes(broken)
    features, info = encode_cached(task, EXAMPLES, tokenizer, "encoder", 16)
    assert not info["features_cached"] and features == expected
    assert read_features(path) == expected  # written whole again
    assert encode_cached(task, EXAMPLES, tokenizer, "encoder", 16)[1]["features_cached"]


def test_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    _, info = encode_cached(get_task("sst2"), EXAMPLES, char_tokenizer("bert"), "encoder", 16)
    assert not info["features_cached"] and list(tmp_path.iterdir()) == []


def test_second_run_of_the_same_task_reads_the_cache(tiny_models, data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    args = dict(model=str(tiny_models["bert"]), task="sst2", method="lora", data_dir=str(data_root),
                max_train_samples=8, max_eval_samples=4, batch_size=4, max_steps=1, progress=False)
    first = run_training(TrainArgs(**args))
    second = run_training(TrainArgs(**args))
    other = run_training(TrainArgs(**args, max_length=32))
    assert [m["features_cached"] for m in (first, second, other)] == [False, True, False]
    assert json.dumps(first["scores"]) == json.dumps(second["scores"])

"""A tiny offline workspace for end-to-end sweeps: a seeded tiny BERT with a hand-built WordPiece
tokenizer saved to a folder, and a small SST-2-layout data folder; runs take seconds."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml
from transformers import BertTokenizer

from conftest import tiny_bert

POSITIVE = ("good", "great", "fine", "fun", "love")
NEGATIVE = ("bad", "awful", "boring", "dull", "hate")
FILLER = ("the", "a", "movie", "film", "plot", "acting", "is", "was", "very", "quite")


def sentences(count: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        label = index % 2
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if label else NEGATIVE))
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench-workspace")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    model_dir = root / "tiny-bert"
    tiny_bert().save_pretrained(model_dir)
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(model_dir)
    sst2 = root / "data" / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    for split, count, seed in (("train", 48, 0), ("dev", 16, 1)):
        lines = ["sentence\tlabel", *(f"{text}\t{label}" for text, label in sentences(count, seed))]
        (sst2 / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return {"model": model_dir, "data": root / "data"}


@pytest.fixture
def tiny_suite(tiny_workspace, tmp_path, monkeypatch):
    """Write a suite over the tiny model; returns a function(methods, tasks, seeds) -> suite path."""
    monkeypatch.setenv("PEFTLAB_DATA", str(tiny_workspace["data"]))

    def write(methods: list, tasks: tuple[str, ...] = ("sst2",), seeds: tuple[int, ...] = (0,)) -> str:
        suite = {"name": "tiny", "seeds": list(seeds),
                 "models": [{"model": str(tiny_workspace["model"]), "name": "tiny-bert"}],
                 "tasks": list(tasks), "methods": methods,
                 "training": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "max_length": 16,
                              "learning_rate": 1.0e-3, "progress": False}}
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(suite))
        return str(path)

    return write

"""Evaluation batches examples of similar length (longest first) and puts the predictions back in the
examples' order: the scores and every prediction are those of one example at a time."""

from __future__ import annotations

import random

import pytest
import torch

from conftest import BUILDERS
from peftlab.tasks import Example, get_task
from peftlab.train.evaluation import evaluate, length_batches
from train.tiny import char_tokenizer

WORDS = ("good", "bad", "a", "film", "plot", "quite", "long", "and", "the")


def examples(count: int, seed: int = 0, target: bool = False) -> list[Example]:
    rng = random.Random(seed)
    made = []
    for index in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
        made.append(Example(text=text, label=index % 2, target=" ".join(WORDS[: rng.randint(1, 5)]) if target else None))
    return made


def test_length_batches_cover_every_example_once_longest_first():
    found = examples(23)
    batches = length_batches(found, 5)
    assert [len(batch) for batch in batches] == [5, 5, 5, 5, 3]
    flat = [position for batch in batches for position in batch]
    assert sorted(flat) == list(range(23))
    sizes = [len(found[position].text) for position in flat]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("family,kind,task_name", [("bert", "encoder", "sst2"), ("llama", "decoder", "alpaca")])
def test_predictions_match_one_example_at_a_time_in_the_examples_order(monkeypatch, family, kind, task_name):
    torch.manual_seed(0)
    model, tokenizer, task = BUILDERS[family]().eval(), char_tokenizer(family), get_task(task_name)
    data = examples(13, target=task.kind == "language_modeling")
    captured: dict[int, list] = {}

    def metrics(predictions, scored):
        captured[len(captured)] = list(predictions)
        return {"n": float(len(predictions))}

    monkeypatch.setattr(task, "metrics", metrics)
    evaluate(model, tokenizer, kind, task, data, batch_size=4)
    evaluate(model, tokenizer, kind, task, data, batch_size=1)
    batched, alone = captured[0], captured[1]
    assert len(batched) == len(alone) == len(data)
    for got, expected in zip(batched, alone, strict=True):
        assert torch.allclose(torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                              rtol=1e-4, atol=1e-4), (got, expected)


def test_batches_pad_less_than_the_examples_order():
    data = examples(64, seed=3)
    padded = {"sorted": 0, "given": 0}
    for name, batches in (("sorted", length_batches(data, 8)),
                          ("given", [list(range(start, start + 8)) for start in range(0, 64, 8)])):
        for batch in batches:
            lengths = [len(data[position].text) for position in batch]
            padded[name] += sum(max(lengths) - length for length in lengths)
    assert padded["sorted"] < padded["given"] / 3, padded

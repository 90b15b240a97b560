"""Which scores are fractions (x100 in the tables) is declared by each task, next to the metrics it
reports: every declared name is one its ``metrics`` reports, with a value in [-1, 1]."""

from __future__ import annotations

import pytest

from peftlab.bench.worker import display_score
from peftlab.tasks import Example, get_task, task_names


def scored(task) -> dict[str, float]:
    """The task's metrics on four made-up examples with their made-up predictions."""
    if task.kind == "classification":
        labels = [0, 1, 1, 0] if task.num_labels == 2 else [0, 1, 2, 0]
        return task.metrics([0, 1, 0, 0], [Example(text="x", label=label) for label in labels])
    if task.kind == "regression":
        return task.metrics([0.5, 2.0, 3.5, 4.0], [Example(text="x", label=v) for v in (1.0, 2.5, 3.0, 4.5)])
    if task.kind == "multiple_choice":
        return task.metrics([0, 1, 2, 3], [Example(text="x", label=label, group=group)
                                           for label, group in ((0, "a"), (2, "a"), (2, "b"), (1, "b"))])
    if task.kind == "generation":
        return task.metrics(["a b c", "d e"], [Example(text="x", target="a b c"), Example(text="y", target="d f")])
    return task.metrics([(2.0, 4), (3.0, 2)], [Example(text=""), Example(text="")])


@pytest.mark.parametrize("name", task_names())
def test_every_declared_fraction_is_reported_and_lies_in_minus_one_to_one(name):
    task = get_task(name)
    scores = scored(task)
    for metric in task.fractions:
        assert metric in scores, metric
        assert -1.0 <= scores[metric] <= 1.0, metric


@pytest.mark.parametrize("name", task_names())
def test_the_main_metric_is_scaled_exactly_when_the_task_declares_it_a_fraction(name):
    task = get_task(name)
    expected = 50.0 if task.is_fraction(task.main_metric) else 0.5
    assert display_score(task, task.main_metric, 0.5) == expected
    assert display_score(task, f"{task.name}/{task.main_metric}", 0.5) == expected


def test_mnli_scores_carry_their_split_and_stay_fractions():
    mnli = get_task("mnli")
    assert mnli.is_fraction("matched_accuracy") and mnli.is_fraction("mismatched_accuracy")
    assert not get_task("alpaca").is_fraction("loss") and not get_task("wmt16-en-ro").is_fraction("bleu")

"""Scores in run records and tables: only fractions are shown x100, and a loss's best is its lowest."""

from __future__ import annotations

import pytest

import peftlab.train
from peftlab.bench import worker
from peftlab.bench.aggregate import AVERAGE, build_tables
from peftlab.bench.suite import RunSpec
from peftlab.bench.worker import display_score
from peftlab.tasks import get_task


@pytest.mark.parametrize("task,metric,value,shown", [
    ("sst2", "accuracy", 0.8125, 81.25), ("mnli", "matched_accuracy", 0.5, 50.0), ("mmlu", "mmlu/accuracy", 0.25, 25.0),
    ("mrpc", "f1", 0.75, 75.0), ("cola", "matthews_correlation", -0.125, -12.5), ("stsb", "pearson", 0.875, 87.5),
    ("mmlu", "subject_average", 0.5, 50.0), ("wmt16-en-ro", "bleu", 23.5, 23.5), ("alpaca", "loss", 1.75, 1.75),
    ("english-lm", "perplexity", 5.75, 5.75),
])
def test_only_fractions_are_scaled(task, metric, value, shown):
    assert display_score(get_task(task), metric, value) == shown


def loss_record(label: str, task: str, score: float, greater_is_better: bool = False, seed: int = 0) -> dict:
    return {"status": "ok", "run_id": f"{label}-{task}-{seed}", "score": score,
            "primary_metric": "loss" if not greater_is_better else "accuracy", "greater_is_better": greater_is_better,
            "spec": {"model": "m", "task": task, "label": label, "method": label, "family": "reparameterized",
                     "seed": seed, "knobs": {}},
            "parameters": {"trainable_percent": 1.0}, "memory": {"peak_bytes": 2**20}}


def best(table, column: str) -> list[str]:
    return [row.label for row in table.rows if row.cells[column].best]


def test_a_loss_column_marks_its_lowest_mean():
    # lora: (1.5 + 1.25) / 2 = 1.375 ; dora: 1.5 ; vera: 2.0 -> lora is best, in the task and the average.
    (table,) = build_tables([loss_record("lora", "alpaca", 1.5), loss_record("lora", "alpaca", 1.25, seed=1),
                             loss_record("dora", "alpaca", 1.5), loss_record("vera", "alpaca", 2.0)])
    assert {row.label: row.cells["alpaca"].mean for row in table.rows} == {"dora": 1.5, "lora": 1.375, "vera": 2.0}
    assert best(table, "alpaca") == best(table, AVERAGE) == ["lora"]


def test_an_average_over_a_loss_and_an_accuracy_marks_nothing():
    (table,) = build_tables([loss_record("lora", "alpaca", 1.5), loss_record("lora", "sst2", 80.0, True),
                             loss_record("dora", "alpaca", 2.0), loss_record("dora", "sst2", 90.0, True)])
    assert best(table, "alpaca") == ["lora"] and best(table, "sst2") == ["dora"]
    assert best(table, AVERAGE) == []


def test_records_without_a_direction_are_read_as_higher_is_better():
    old = [{k: v for k, v in loss_record(label, "sst2", score, True).items() if k != "greater_is_better"}
           for label, score in (("lora", 80.0), ("dora", 90.0))]
    (table,) = build_tables(old)
    assert best(table, "sst2") == ["dora"]


def test_the_record_carries_the_direction_and_the_unscaled_loss(monkeypatch, tmp_path):
    metrics = {"scores": {"loss": 1.75, "perplexity": 5.75}, "eval_history": [], "parameters": {"trainable_percent": 1.0},
               "train_tokens_per_s": 1.0, "train_time_s": 1.0, "train_examples": 8, "steps": 2,
               "peak_memory_bytes": 2**20, "peak_memory_kind": "cpu_peak_rss"}
    monkeypatch.setattr(worker, "model_for_run", lambda spec, output: ("m", None))
    monkeypatch.setattr(worker, "memory_breakdown", lambda plan, args: {})
    monkeypatch.setattr(peftlab.train, "run_training", lambda args, on_plan=None: metrics)
    spec = RunSpec(suite="s", model="m", model_source="m", task="alpaca", task_name="alpaca", label="lora",
                   method="lora", family="reparameterized", options={}, training={}, seed=0)
    record = worker.execute(spec, tmp_path)
    assert (record["primary_metric"], record["score"], record["greater_is_better"]) == ("loss", 1.75, False)


def test_a_run_scored_on_mmlu_and_the_forgetting_loss_records_both_with_their_directions(monkeypatch, tmp_path):
    metrics = {"scores": {"loss": 1.5, "mmlu-subset/accuracy": 0.25, "english-lm/loss": 3.25},
               "scores_before_training": {"english-lm/loss": 3.0}, "eval_history": [],
               "parameters": {"trainable_percent": 1.0}, "train_tokens_per_s": 1.0, "train_time_s": 1.0,
               "train_examples": 8, "steps": 2, "peak_memory_bytes": 2**20, "peak_memory_kind": "cpu_peak_rss"}
    monkeypatch.setattr(worker, "model_for_run", lambda spec, output: ("m", None))
    monkeypatch.setattr(worker, "memory_breakdown", lambda plan, args: {})
    monkeypatch.setattr(peftlab.train, "run_training", lambda args, on_plan=None: metrics)
    spec = RunSpec(suite="s", model="m", model_source="m", task="alpaca", task_name="alpaca", label="lora",
                   method="lora", family="reparameterized", options={},
                   training={"eval_tasks": ["mmlu-subset", "english-lm"]}, seed=0)
    record = worker.execute(spec, tmp_path)
    assert record["task_scores"] == {
        "mmlu-subset": {"metric": "mmlu-subset/accuracy", "score": 25.0, "greater_is_better": True},
        "english-lm": {"metric": "english-lm/loss", "score": 3.25, "greater_is_better": False}}
    assert record["scores_before_training"] == {"english-lm/loss": 3.0}
    assert (record["primary_metric"], record["greater_is_better"]) == ("english-lm/loss", False)


def test_an_untuned_run_measures_no_training_step(monkeypatch, tmp_path):
    metrics = {"scores": {"loss": 1.5}, "eval_history": [], "parameters": {"trainable": 0, "trainable_percent": 0.0},
               "train_tokens_per_s": 0.0, "train_time_s": 0.0, "train_examples": 8, "steps": 0,
               "peak_memory_bytes": 2**20, "peak_memory_kind": "cpu_peak_rss"}
    monkeypatch.setattr(worker, "model_for_run", lambda spec, output: ("m", None))
    monkeypatch.setattr(worker, "memory_breakdown", lambda args: pytest.fail("an untuned run takes no step"))
    monkeypatch.setattr(peftlab.train, "run_training", lambda args, on_plan=None: metrics)
    spec = RunSpec(suite="s", model="m", model_source="m", task="alpaca", task_name="alpaca", label="untuned",
                   method="untuned", family="baseline", options={}, training={}, seed=0)
    record = worker.execute(spec, tmp_path)
    assert record["memory"]["breakdown"] is None and record["parameters"]["trainable"] == 0
    assert "--method untuned" in record["reproduce"]

"""A suite assesses methods on the user's own task: a ``classify`` entry with its ``data:`` (files beside the
suite file, columns), checked before anything runs, and a record whose ``reproduce`` command reruns it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import peftlab
from peftlab.bench import load_suite_checked
from peftlab.bench.records import read_records
from peftlab.bench.runner import run_sweep
from peftlab.bench.suite import SuiteError
from peftlab.tasks import TaskError

from .conftest import sentences

SRC = str(Path(peftlab.__file__).resolve().parent.parent)


def own_suite(tiny_workspace, folder: Path, data: dict) -> str:
    for name, count, seed in (("train.csv", 32, 0), ("dev.csv", 12, 1)):
        rows = [f"{text},{'good' if label else 'bad'}" for text, label in sentences(count, seed)]
        (folder / name).write_text("\n".join(["review,verdict", *rows]) + "\n")
    suite = {"name": "own", "seeds": [0], "models": [{"model": str(tiny_workspace["model"]), "name": "tiny-bert"}],
             "tasks": [{"task": "classify", "name": "reviews", "data": data}], "methods": ["lora"],
             "training": {"epochs": 1, "batch_size": 8, "max_length": 16, "learning_rate": 1.0e-3, "progress": False}}
    path = folder / "own.yaml"
    path.write_text(yaml.safe_dump(suite))
    return str(path)


def test_a_task_entrys_data_becomes_the_runs_settings(tiny_workspace, tmp_path):
    data = {"train": "train.csv", "eval": "dev.csv", "text_column": "review", "label_column": "verdict"}
    (run,) = load_suite_checked(own_suite(tiny_workspace, tmp_path, data)).runs()
    assert run.task == "reviews" and run.task_name == "classify"
    assert run.training["train_file"] == str(tmp_path / "train.csv")  # found beside the suite file
    assert run.training["text_column"] == "review" and run.training["label_column"] == "verdict"
    with pytest.raises(SuiteError, match="unknown key\\(s\\) text; allowed: eval, label_column"):
        load_suite_checked(own_suite(tiny_workspace, tmp_path, {"train": "train.csv", "text": "review"}))


def test_a_bad_column_fails_the_sweep_before_any_run(tiny_workspace, tmp_path):
    runs = load_suite_checked(own_suite(tiny_workspace, tmp_path, {"train": "train.csv"})).runs()
    with pytest.raises(TaskError, match="nothing was run:\n  .*train.csv has no column 'label'.*its columns: review, "
                                        "verdict"):
        run_sweep(runs, tmp_path / "out", echo=lambda line: None)
    assert read_records(tmp_path / "out") == []


@pytest.mark.slow
def test_the_record_scores_the_users_task_and_its_command_reruns_it(tiny_workspace, tmp_path):
    data = {"train": "train.csv", "eval": "dev.csv", "text_column": "review", "label_column": "verdict"}
    suite = own_suite(tiny_workspace, tmp_path, data)
    run_sweep(load_suite_checked(suite).runs(), tmp_path / "out", echo=lambda line: None)
    (record,) = read_records(tmp_path / "out")
    assert record["status"] == "ok", record["error"]
    assert record["primary_metric"] == "accuracy" and set(record["scores"]) == {"accuracy", "macro_f1"}
    assert record["score"] == pytest.approx(100 * record["scores"]["accuracy"])  # a fraction, shown x100
    words = shlex.split(record["reproduce"])
    assert words[words.index("--train") + 1] == str(tmp_path / "train.csv")
    assert words[words.index("--label-column") + 1] == "verdict"
    rerun = tmp_path / "elsewhere"
    rerun.mkdir()
    subprocess.run([sys.executable, "-m", "peftlab.cli", *words[1:]], cwd=rerun, env={**os.environ, "PYTHONPATH": SRC},
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = (rerun / "reproduce" / record["run_id"] / "metrics.json").read_text()
    assert yaml.safe_load(metrics)["scores"] == record["scores"]

"""End-to-end sweeps on a tiny local model: each run in its own process, resumed after a kill, sharded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import peftlab
from peftlab.bench import load_suite_checked
from peftlab.bench.records import read_records, runs_dir
from peftlab.bench.report import write_report
from peftlab.bench.runner import Shard, run_sweep
from peftlab.tasks import TaskError

pytestmark = pytest.mark.slow

SRC = str(Path(peftlab.__file__).resolve().parent.parent)


def snapshot(output: Path) -> dict[str, tuple[int, str]]:
    """Each record file's modification time and content."""
    return {path.name: (path.stat().st_mtime_ns, path.read_text()) for path in runs_dir(output).glob("*.json")}


def test_a_killed_sweep_resumes_without_rerunning_finished_runs(tiny_suite, tmp_path):
    suite = tiny_suite(["full", "lora"])
    output = tmp_path / "out"
    command = [sys.executable, "-m", "peftlab.cli", "bench", "--suite", suite, "--output", str(output)]
    environment = {**os.environ, "PYTHONPATH": SRC}
    sweep = subprocess.Popen(command, env=environment, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not any(r["status"] == "ok" for r in read_records(output)):
            assert sweep.poll() is None and time.monotonic() < deadline, "the first run never finished"
            time.sleep(0.2)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait()
    finished = snapshot(output)
    assert len(finished) == 1  # the kill lost only the run in progress
    assert all(json.loads(text)["status"] == "ok" for _, text in finished.values())

    runs = load_suite_checked(suite).runs()
    result = run_sweep(runs, output, echo=lambda line: None)
    assert result.skipped == [name.removesuffix(".json") for name in finished]
    assert sorted(result.ran) == sorted(r.run_id for r in runs if f"{r.run_id}.json" not in finished)
    after = snapshot(output)
    assert {name: after[name] for name in finished} == finished  # untouched
    assert [r["status"] for r in read_records(output)] == ["ok"] * 2

    again = run_sweep(runs, output, echo=lambda line: None)
    assert again.ran == [] and len(again.skipped) == 2


def test_two_shards_run_each_run_exactly_once(tiny_suite, tmp_path):
    # A LoRA whose targets match nothing fails inside its worker: recorded, and the sweep goes on.
    suite = tiny_suite(["full", "lora", {"method": "lora", "label": "lora-nowhere",
                                         "options": {"target_modules": ["no_such_module"]}}])
    runs = load_suite_checked(suite).runs()
    output = tmp_path / "out"
    first = run_sweep(runs, output, Shard(1, 2), echo=lambda line: None)
    second = run_sweep(runs, output, Shard(2, 2), echo=lambda line: None)
    done = [*first.ran, *first.failed, *second.ran, *second.failed]
    assert sorted(done) == sorted(r.run_id for r in runs) and len(set(done)) == len(done)
    assert first.skipped == second.skipped == []
    records = {r["run_id"]: r for r in read_records(output)}
    assert set(records) == {r.run_id for r in runs}
    for run in runs:
        record = records[run.run_id]
        if run.label != "lora-nowhere":
            assert record["status"] == "ok" and 0 <= record["score"] <= 100 and record["greater_is_better"] is True
            assert record["score"] == 100 * record["scores"]["accuracy"]
            assert record["memory"]["peak_bytes"] > record["memory"]["breakdown"]["weights"]["measured"] > 0
            assert record["provenance"]["packages"]["torch"]
        else:
            assert record["status"] == "failed" and "no_such_module" in record["error"]
    lora = records[next(r.run_id for r in runs if r.label == "lora")]
    full = records[next(r.run_id for r in runs if r.label == "full")]
    assert lora["parameters"]["trainable"] < full["parameters"]["trainable"]
    assert 0 < lora["adapter_bytes"] < full["adapter_bytes"]  # the saved files' size on disk
    assert lora["memory"]["breakdown"]["optimizer"]["measured"] < full["memory"]["breakdown"]["optimizer"]["measured"]

    written = {path.name for path in write_report(output)}
    assert {"report.md", "report.html", "results.csv", "results.tex",
            "score_vs_trainable-tiny-bert.png", "score_vs_memory-tiny-bert.png", "memory-tiny-bert.png"} <= written
    report = (output / "report.md").read_text()
    assert "`lora`" in report and "failed" in report
    assert "data:image/png;base64," in (output / "report.html").read_text()


def test_a_sweep_whose_data_is_missing_fails_before_any_run(tiny_suite, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # no hub route either
    runs = load_suite_checked(tiny_suite(["lora"], tasks=("sst2", "rte"))).runs()
    output = tmp_path / "out"
    with pytest.raises(TaskError, match=r"1 task\(s\).*nothing was run:\n  task 'rte': .*RTE/train.tsv not found"):
        run_sweep(runs, output, echo=lambda line: None)
    assert read_records(output) == []


def test_every_record_carries_the_command_that_reproduces_its_score(tiny_suite, tmp_path):
    """The record's ``reproduce`` command, run as written, trains the same run again: identical scores."""
    suite = tiny_suite([{"lora": {"options": {"rank": 2, "target_modules": ["attention_qv"]}}},
                        {"method": "ia3", "grid": {"learning_rate": [3.0e-3]}}], seeds=(1,))
    output = tmp_path / "out"
    run_sweep(load_suite_checked(suite).runs(), output, echo=lambda line: None)
    records = read_records(output)
    assert [r["status"] for r in records] == ["ok", "ok"]
    for record in records:
        words = record["reproduce"].split()
        assert words[:2] == ["peftlab", "train"] and "--seed" in words and "--set" in words or record["spec"]["method"] == "ia3"
        assert record["spec"]["method"] != "ia3" or words[words.index("--lr") + 1] == "0.003"
        environment = {**os.environ, "PYTHONPATH": SRC}
        subprocess.run([sys.executable, "-m", "peftlab.cli", *words[1:]], cwd=tmp_path, env=environment,
                       check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads((tmp_path / "reproduce" / record["run_id"] / "metrics.json").read_text())
        assert metrics["scores"] == record["scores"]
        assert metrics["parameters"] == record["parameters"]


def test_the_memory_breakdown_loads_the_data_and_model_once(tiny_suite, tmp_path, monkeypatch):
    import peftlab.train.loop
    from peftlab.bench import worker

    spec = load_suite_checked(tiny_suite(["lora"])).runs()[0]
    real, plans = peftlab.train.loop.make_plan, []
    monkeypatch.setattr(peftlab.train.loop, "make_plan", lambda *a, **k: plans.append(1) or real(*a, **k))
    measured = worker.execute(spec, tmp_path / "with", breakdown=True)
    assert len(plans) == 1 and measured["memory"]["breakdown"]["weights"]["measured"] > 0


@pytest.mark.parametrize("method", ["full", "lora", "child_tuning", "adalora", "prefix_tuning"])
def test_the_memory_breakdown_leaves_the_model_and_the_random_state_as_they_were(tiny_suite, method):
    import torch

    from peftlab.bench.worker import memory_breakdown
    from peftlab.train import TrainArgs
    from peftlab.train.plan import make_plan

    spec = load_suite_checked(tiny_suite([method])).runs()[0]
    args = TrainArgs(model=spec.model_source, task=spec.task_name, method=spec.method, options=dict(spec.options),
                     seed=spec.seed, **spec.training)
    plan = make_plan(args)
    model = plan.loaded.model
    model.train()
    before = {name: parameter.detach().clone() for name, parameter in model.state_dict().items()}
    random_state = torch.get_rng_state()
    breakdown = memory_breakdown(plan, args)
    assert breakdown["optimizer"]["measured"] > 0 and breakdown["gradients"]["measured"] > 0
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[name], before[name]) for name in before)
    assert all(parameter.grad is None for parameter in model.parameters()) and model.training
    assert torch.equal(torch.get_rng_state(), random_state)

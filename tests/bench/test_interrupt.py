"""SIGINT and SIGTERM during `peftlab bench`: the run in progress saves a checkpoint, the sweep stops with one
line (where the work is, how to continue) and exit 130 / 143, no failed record is written, and rerunning the
same command continues the run from its checkpoint to the same scores as a sweep that was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "tiny-bert--sst2--lora--s0"


@pytest.fixture
def long_suite(tiny_suite, tmp_path) -> Path:
    """One LoRA run long enough to be stopped in the middle (a few seconds), logging every step."""
    path = Path(tiny_suite(["lora"]))
    suite = yaml.safe_load(path.read_text())
    suite["training"].update({"max_steps": 400, "logging_steps": 1, "max_train_samples": 48})
    path.write_text(yaml.safe_dump(suite))
    return path


def bench(suite: Path, output: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "peftlab.cli", "bench", "--suite", str(suite), "--output", str(output),
               "--no-report", "--no-memory-breakdown"]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # the test's own process group is not signalled


def wait_for_training(process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while not log.is_file() or len(log.read_text().splitlines()) < 3:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.02)


def record(output: Path) -> dict:
    return json.loads((output / "runs" / f"{RUN_ID}.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_sweep_continues_to_the_same_scores(long_suite, tmp_path, number):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert bench(long_suite, straight).wait(timeout=300) == 0

    process = bench(long_suite, stopped)
    wait_for_training(process, stopped / "checkpoints" / RUN_ID / "log.jsonl")
    process.send_signal(number)
    _, err = process.communicate(timeout=120)
    name = signal.Signals(number).name
    assert process.returncode == 128 + number, err
    assert "Traceback" not in err, err
    checkpoints = stopped / "checkpoints" / RUN_ID
    assert (f"peftlab bench: stopped by {name} after 0 of 1 run(s); run {RUN_ID} saved its progress in "
            f"{checkpoints}. Rerun the same command to continue") in err, err
    assert not (stopped / "runs" / f"{RUN_ID}.json").exists()  # stopped, not failed
    assert any(checkpoints.glob("checkpoint-*"))

    resumed = bench(long_suite, stopped)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from" in (stopped / "logs" / f"{RUN_ID}.log").read_text()
    a, b = record(straight), record(stopped)
    assert b["status"] == "ok" and b["continued_from_checkpoint"] and not a["continued_from_checkpoint"]
    assert a["scores"] == b["scores"] and a["steps"] == b["steps"] == 400
    assert not checkpoints.exists()  # a recorded run's checkpoints are removed


@pytest.mark.slow
def test_a_second_signal_stops_the_run_at_once(long_suite, tmp_path):
    output = tmp_path / "sweep"
    process = bench(long_suite, output)
    wait_for_training(process, output / "checkpoints" / RUN_ID / "log.jsonl")
    process.send_signal(signal.SIGTERM)
    time.sleep(0.01)  # two signals sent together may arrive as one
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err and "stopped by SIGTERM after 0 of 1 run(s)" in err, err
    assert not (output / "runs" / f"{RUN_ID}.json").exists()
    assert subprocess.run(["pgrep", "-f", str(output / "specs")], capture_output=True).returncode == 1  # no worker left


@pytest.mark.slow
def test_a_killed_sweep_stops_its_worker_which_saves_and_the_rerun_continues(long_suite, tmp_path):
    output = tmp_path / "sweep"
    process = bench(long_suite, output)
    wait_for_training(process, output / "checkpoints" / RUN_ID / "log.jsonl")
    process.kill()  # SIGKILL: the sweep cannot pass anything on; the kernel tells the worker (PR_SET_PDEATHSIG)
    process.communicate(timeout=60)
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-f", str(output / "specs")], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the worker outlived its sweep"
        time.sleep(0.1)
    assert any((output / "checkpoints" / RUN_ID).glob("checkpoint-*"))
    assert not (output / "runs" / f"{RUN_ID}.json").exists()
    rerun = bench(long_suite, output)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert record(output)["continued_from_checkpoint"] and record(output)["steps"] == 400

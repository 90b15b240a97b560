"""A run SIGKILLed mid-training and resumed ends exactly where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


def command(model, data_root, output, *extra):
    return [sys.executable, "-m", "peftlab.cli", "train", "--model", str(model), "--task", "sst2", "--method", "lora",
            "--data-dir", str(data_root), "--output", str(output), "--max-train-samples", "96",
            "--max-eval-samples", "16", "--batch-size", "4", "--grad-accum", "2", "--epochs", "3", "--save-steps", "5",
            "--lr", "5e-3", "--no-progress", *extra]


def environment():
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_models, data_root, tmp_path):
    model = tiny_models["bert"]  # with dropout: the restored random state matters
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    subprocess.run(command(model, data_root, straight), env=environment(), check=True, capture_output=True)

    process = subprocess.Popen(command(model, data_root, interrupted), env=environment(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (interrupted / "checkpoint-10" / "trainer_state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before checkpoint-10"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "metrics.json").exists(), "the run finished before the kill: nothing was tested"

    resumed = subprocess.run(command(model, data_root, interrupted, "--resume"), env=environment(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout + resumed.stderr

    a, b = load_file(straight / "adapter_model.safetensors"), load_file(interrupted / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    first, second = (json.loads((d / "metrics.json").read_text()) for d in (straight, interrupted))
    assert first["scores"] == second["scores"] and first["steps"] == second["steps"] == 36
    assert (first["best_score"], first["best_step"]) == (second["best_score"], second["best_step"])

    def records(folder):
        timed = ("train_time_s", "tokens_per_s", "peak_memory_bytes")  # the rest is identical
        return [{k: v for k, v in json.loads(line).items() if k not in timed}
                for line in (folder / "log.jsonl").read_text().splitlines()]

    assert records(straight) == records(interrupted)
    assert len(list(interrupted.glob("checkpoint-*"))) == 2  # the last few kept


def test_resume_without_a_checkpoint_starts_clean(tiny_models, data_root, tmp_path):
    from peftlab.train import TrainArgs, run_training

    out = tmp_path / "run"
    out.mkdir()
    killed = [{"type": "train", "step": 1, "loss": 99.0}, {"type": "eval", "step": 1, "accuracy": 0.0}]
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in killed) + '{"type": "tra')  # killed mid-line
    run_training(TrainArgs(model=str(tiny_models["bert"]), task="sst2", method="lora", data_dir=str(data_root),
                           output_dir=str(out), resume=True, max_train_samples=8, max_eval_samples=4, batch_size=4,
                           max_steps=2, logging_steps=1, progress=False))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["type"], r["step"]) for r in log] == [("train", 1), ("train", 2), ("eval", 2)]
    assert all(r.get("loss") != 99.0 for r in log)


def _short_run(tiny_models, data_root, out, **extra):
    from peftlab.train import TrainArgs

    return TrainArgs(model=str(tiny_models["bert"]), task="sst2", method="lora", data_dir=str(data_root),
                     output_dir=str(out), max_train_samples=24, max_eval_samples=4, batch_size=4, max_steps=6,
                     save_steps=2, save_total_limit=3, learning_rate=5e-3, progress=False, **extra)


def test_resume_skips_a_damaged_newest_checkpoint_and_names_it(tiny_models, data_root, tmp_path):
    """A checkpoint damaged after it was written (a truncated file) is skipped with a warning that names it;
    the run resumes from the one before and ends where an uninterrupted run ends."""
    from peftlab.train import run_training

    out = tmp_path / "run"
    run_training(_short_run(tiny_models, data_root, out))
    finished = load_file(out / "adapter_model.safetensors")
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    damaged = out / "checkpoint-6" / "optimizer.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:40])
    with pytest.warns(UserWarning, match=r"skipped unreadable checkpoint\(s\) checkpoint-6 .*resuming from checkpoint-4"):
        metrics = run_training(_short_run(tiny_models, data_root, out, resume=True))
    assert metrics["steps"] == 6
    resumed = load_file(out / "adapter_model.safetensors")
    for name in finished:
        assert torch.equal(resumed[name], finished[name]), name
    load_file(damaged)  # step 6 was written again, whole


def test_resume_with_no_readable_checkpoint_is_an_error_that_writes_nothing(tiny_models, data_root, tmp_path):
    from peftlab.train import run_training
    from peftlab.train.args import ArgumentError

    out = tmp_path / "run"
    run_training(_short_run(tiny_models, data_root, out))
    (out / "metrics.json").unlink()
    for state in out.glob("checkpoint-*/trainer_state.json"):
        state.write_text("{not json")
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ArgumentError, match="no checkpoint .* reads whole: checkpoint-6 .*checkpoint-2 .*Remove them"):
        run_training(_short_run(tiny_models, data_root, out, resume=True))
    assert sorted(p.name for p in out.rglob("*")) == before and not (out / "metrics.json").exists()

"""SIGINT and SIGTERM during `peftlab train`: the step in progress finishes, a checkpoint is written, one line
says where it is and how to resume, the exit code is 130 / 143, and --resume continues bit-exactly. A second
signal exits at once, leaving only whole checkpoints. --save-minutes checkpoints on the clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peftlab.cli import main
from peftlab.train import trainer
from peftlab.train.checkpoint import STATE_NAME

REPO = Path(__file__).resolve().parents[2]


def argv(model, data_root, output, *extra) -> list[str]:
    return ["train", "--model", str(model), "--task", "sst2", "--method", "lora", "--data-dir", str(data_root),
            "--output", str(output), "--max-train-samples", "32", "--max-eval-samples", "8", "--batch-size", "4",
            "--max-steps", "8", "--lr", "5e-3", "--no-progress", "--seed", "5", *extra]


def signal_after_step(monkeypatch, step: int, number: int) -> None:
    real = trainer.Trainer.after_step

    def after_step(self, progress, epoch_end):
        real(self, progress, epoch_end)
        if progress.step == step:
            os.kill(os.getpid(), number)  # as if sent by Ctrl-C or the scheduler during this step

    monkeypatch.setattr(trainer.Trainer, "after_step", after_step)


@pytest.mark.parametrize("number,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_and_resume_continues_exactly(tiny_models, data_root, tmp_path, capsys,
                                                                  monkeypatch, number, code):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    before = signal.getsignal(number)  # SIG_IGN where the tests run in the background (nohup, &)
    assert main(argv(tiny_models["bert"], data_root, straight)) == 0
    with monkeypatch.context() as patch:
        signal_after_step(patch, 3, number)
        capsys.readouterr()
        assert main(argv(tiny_models["bert"], data_root, stopped)) == code
    err = capsys.readouterr().err
    name = signal.Signals(number).name
    assert (f"peftlab train: stopped by {name} after step 3 of 8; checkpoint saved to {stopped / 'checkpoint-3'}. "
            f"Continue with the same command plus --resume") in err, err
    assert "Traceback" not in err
    assert (stopped / "checkpoint-3" / STATE_NAME).is_file() and not (stopped / "metrics.json").exists()
    assert signal.getsignal(number) == before  # the run's handler is gone again

    assert main(argv(tiny_models["bert"], data_root, stopped, "--resume")) == 0
    assert "resuming from" in capsys.readouterr().err
    a, b = (load_file(folder / "adapter_model.safetensors") for folder in (straight, stopped))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_without_an_output_a_signal_says_nothing_was_saved(tiny_models, data_root, tmp_path, capsys, monkeypatch):
    signal_after_step(monkeypatch, 2, signal.SIGINT)
    command = [arg for arg in argv(tiny_models["bert"], data_root, tmp_path / "x") if arg not in ("--output", str(tmp_path / "x"))]
    assert main(command) == 130
    assert "stopped by SIGINT after step 2 of 8; nothing was saved (the run has no --output)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_save_minutes_checkpoints_on_the_clock(tiny_models, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(argv(tiny_models["bert"], data_root, out, "--max-steps", "4", "--save-minutes", "1e-9",
                     "--save-total-limit", "10")) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{step}" for step in (1, 2, 3, 4)]
    assert main(argv(tiny_models["bert"], data_root, tmp_path / "bad", "--save-minutes", "0")) == 2
    assert "--save-minutes must be positive" in capsys.readouterr().err


def start(model, data_root, output) -> subprocess.Popen:
    command = [sys.executable, "-m", "peftlab.cli", *argv(model, data_root, output, "--max-steps", "100000",
                                                           "--max-train-samples", "64", "--logging-steps", "1")]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_training(process: subprocess.Popen, output: Path) -> None:
    deadline = time.monotonic() + 120
    while not (output / "log.jsonl").is_file() or not (output / "log.jsonl").read_text().strip():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "training did not start"
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_from_outside_stops_the_process_cleanly(tiny_models, data_root, tmp_path):
    out = tmp_path / "run"
    process = start(tiny_models["bert"], data_root, out)
    wait_for_training(process, out)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "checkpoint saved to" in err and "--resume" in err, err
    complete = [p for p in out.glob("checkpoint-*") if (p / STATE_NAME).is_file()]
    assert complete and err.strip().splitlines()[-1].endswith("Continue with the same command plus --resume")


@pytest.mark.slow
def test_a_second_signal_exits_at_once_leaving_only_whole_checkpoints(tiny_models, data_root, tmp_path):
    out = tmp_path / "run"
    process = start(tiny_models["bert"], data_root, out)
    wait_for_training(process, out)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err, err
    for checkpoint in out.glob("checkpoint-*"):  # visible checkpoints are whole; a staging folder stays hidden
        assert (checkpoint / STATE_NAME).is_file() and (checkpoint / "adapter" / "adapter_model.safetensors").is_file()

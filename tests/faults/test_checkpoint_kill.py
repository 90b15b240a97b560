"""kill -9 while the real ``save_checkpoint`` writes and prunes: every ``checkpoint-<step>`` folder on disk
loads with the real loader and holds one whole save, and resume picks the newest complete one.

Each writer resumes from the newest checkpoint (the real ``latest_checkpoint`` + ``load_checkpoint``),
saves once more, and dies just before one operation of the protocol (see ``checkpoint_writer.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import peftlab
from faults.checkpoint_writer import KEEP, build
from peftlab.train.checkpoint import checkpoints, latest_checkpoint, load_checkpoint

WRITER = Path(__file__).with_name("checkpoint_writer.py")
ROOT = Path(__file__).parents[2]
STAGING = r"\.checkpoint-\d+\.\d+\.[^/.]+\.tmp"  # atomic_directory's staging folder
PRUNED = r"\.checkpoint-\d+\.pruned\.tmp"  # a checkpoint renamed away for deletion

# (what the kill interrupts, --die-at KIND PATTERN N, how many new checkpoints it leaves complete)
KILL_POINTS = [
    ("writing the new checkpoint's files", ("fsync", rf"{STAGING}/optimizer\.safetensors", 1), 0),
    ("renaming the new checkpoint in", ("replace", r"checkpoint-\d+", 1), 0),
    ("renaming the oldest one away", ("replace", PRUNED, 1), 1),
    ("deleting the oldest one's files", ("unlink", rf"(\.?)checkpoint-\d+(\.pruned\.tmp)?/.+", 3), 1),
    ("removing the oldest one's folder", ("rmdir", rf"(\.?)checkpoint-\d+(\.pruned\.tmp)?", 1), 1),
]


def run_writer(out: Path, saves: int, *die_at: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    command = [sys.executable, str(WRITER), str(out), str(saves)] + (["--die-at", *die_at] if die_at else [])
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def check_checkpoints(out: Path) -> int:
    """Every ``checkpoint-*`` folder is complete and loads whole; returns the step resume would continue from."""
    latest = latest_checkpoint(out)
    complete = checkpoints(out)
    assert sorted(out.glob("checkpoint-*")) == sorted(complete), "a checkpoint-<step> folder is incomplete"
    assert latest == complete[-1]
    for path in complete:
        model, optimizer, scheduler, hooks = build()
        progress = load_checkpoint(path, model, optimizer, scheduler, hooks)
        assert path.name == f"checkpoint-{progress.step}"
        values = torch.cat([p.detach().flatten() for _, p in peftlab.adapter_parameters(model)])
        assert bool((values == progress.step).all()), f"{path} mixes saves"
        assert {int(s["step"]) for s in optimizer.state.values()} == {progress.step}, f"{path}: optimizer state"
        assert scheduler.last_epoch == progress.step
    return int(latest.name.removeprefix("checkpoint-"))


@pytest.mark.slow
def test_a_kill_at_each_point_of_save_and_prune_keeps_the_newest_complete_checkpoint(tmp_path):
    first = run_writer(tmp_path, KEEP + 1)
    assert first.returncode == 0, first.stderr
    before = check_checkpoints(tmp_path)
    assert before == KEEP + 1 and len(checkpoints(tmp_path)) == KEEP
    for what, die_at, progress in KILL_POINTS:
        dying = run_writer(tmp_path, 1, *map(str, die_at))
        assert dying.returncode == -signal.SIGKILL, f"never reached {what}: {dying.stderr}"
        after = check_checkpoints(tmp_path)
        assert after == before + progress, f"killed while {what}"
        before = after
    clean = run_writer(tmp_path, 1)  # the next whole save clears whatever the kills left behind
    assert clean.returncode == 0, clean.stderr
    assert check_checkpoints(tmp_path) == before + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"checkpoint-{before}", f"checkpoint-{before + 1}"]


def test_a_crash_mid_prune_leaves_no_half_deleted_checkpoint_in_view(tmp_path, monkeypatch):
    """In-process and fast: deletion dies after its first file; the victim is already out of view."""
    from faults.checkpoint_writer import train_one_step
    from peftlab.train import checkpoint as module

    model, optimizer, scheduler, hooks = build()
    progress = module.Progress()
    real_rmtree = module.shutil.rmtree

    def save() -> None:
        progress.step += 1
        train_one_step(model, optimizer, scheduler, progress.step)
        module.save_checkpoint(tmp_path, model, optimizer, scheduler, hooks, progress, is_main=True, keep=KEEP)

    def dies_after_one_file(path, ignore_errors=False):
        if not Path(path).exists():
            return
        victim = next(p for p in sorted(Path(path).rglob("*")) if p.is_file())
        victim.unlink()
        raise KeyboardInterrupt

    for _ in range(KEEP):
        save()
    monkeypatch.setattr(module.shutil, "rmtree", dies_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        save()
    assert [p.name for p in sorted(tmp_path.glob("checkpoint-*"))] == ["checkpoint-2", "checkpoint-3"]
    assert check_checkpoints(tmp_path) == 3
    monkeypatch.setattr(module.shutil, "rmtree", real_rmtree)
    save()  # the next save clears the remains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4"]

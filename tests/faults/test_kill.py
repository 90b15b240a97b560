"""kill -9 while adapters, checkpoints and results are being written: what is on disk always loads, and
holds one whole save (never a mix of two). Killed at random times and at exact points of the protocol."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import peftlab
from conftest import tiny_llama

WRITER = Path(__file__).with_name("writer.py")
ROOT = Path(__file__).parents[2]


def start_writer(out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
    return subprocess.Popen([sys.executable, str(WRITER), str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def saved_value(folder: Path) -> float:
    """Load the adapter in ``folder`` the normal way; every tensor must hold the same save's value."""
    model = peftlab.load_adapter(tiny_llama().eval(), folder)
    values = {float(p.detach().flatten()[0]) for _, p in peftlab.adapter_parameters(model)}
    assert len(values) == 1 and all(bool((p == p.flatten()[0]).all()) for _, p in peftlab.adapter_parameters(model)), \
        f"{folder} mixes saves: {sorted(values)}"
    return values.pop()


def check_everything_loads(out: Path) -> int:
    adapter = saved_value(out / "adapter")
    checkpoint = out / "checkpoint"
    peftlab.core.atomic.recover_directory(checkpoint)
    state = json.loads((checkpoint / "state.json").read_text())["k"]
    assert saved_value(checkpoint / "adapter") == state
    assert int(load_file(checkpoint / "optimizer.safetensors")["step"]) == state
    results = json.loads((out / "results.json").read_text())["k"]
    assert results <= state <= adapter <= results + 1
    return results


@pytest.mark.slow
def test_random_kills_leave_the_last_whole_save_loadable(tmp_path):
    chance = random.Random(20240601)
    last = 0
    for round_ in range(4):
        writer = start_writer(tmp_path)
        while writer.stdout.readline().strip() == "" and writer.poll() is None:
            pass  # wait until one full save exists in this round
        time.sleep(chance.uniform(0.0, 0.4))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        assert writer.returncode == -signal.SIGKILL, writer.stderr.read()
        reached = check_everything_loads(tmp_path)
        assert reached > last, f"round {round_}: no progress"
        last = reached


@pytest.mark.slow
def test_a_kill_at_each_step_of_the_atomic_protocol_keeps_the_previous_save(tmp_path):
    """Each save does six renames (adapter: retire old, swap in new; checkpoint: inner adapter, retire, swap;
    results: one); one writer per point dies just before that rename, continuing from the last one's files."""
    first = start_writer(tmp_path)
    assert first.stdout.readline().strip() == "1", first.stderr.read()
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = check_everything_loads(tmp_path)
    for point in range(1, 7):
        dying = start_writer(tmp_path, "--die-at-replace", str(point))
        dying.wait(timeout=120)
        assert dying.returncode == -signal.SIGKILL, dying.stderr.read()
        after = check_everything_loads(tmp_path)
        assert after in (before, before + 1), f"kill before rename {point}"
        before = after
    restart = start_writer(tmp_path)  # the next save cleans up whatever the kills left behind
    assert restart.stdout.readline().strip() == str(before + 1), restart.stderr.read()
    os.kill(restart.pid, signal.SIGKILL)
    restart.wait()
    check_everything_loads(tmp_path)

"""Every command that writes, killed at random points (SIGKILL, SIGINT, SIGTERM): what is at its output
afterwards is the old output or the whole new one, never a mix; a killed `train` continues with `--resume` to
the adapter an unkilled run writes, bit for bit. Kill points are drawn from a fixed seed over each command's
measured duration; the commands run in forked children of one warm process (``command_server.py``)."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import peftlab
from conftest import tiny_llama
from peftlab.bench.records import RECORD_FORMAT, runs_dir
from peftlab.interop import export_peft
from peftlab.train.checkpoint import STATE_NAME
from tasks.data_root_helper import real_data_root
from train.tiny import save_tiny

SERVER = Path(__file__).with_name("command_server.py")
ROOT = Path(__file__).parents[2]
SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)
# exit codes: finished, killed, SIGTERM before the command set its handlers, stopped by SIGINT / SIGTERM
TRIALS = 6  # kill points per command


class CommandServer:
    def __init__(self, log: Path) -> None:
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                       "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])}
        self.log = log
        self.process = subprocess.Popen([sys.executable, str(SERVER), str(log)], env=environment, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.process.stdout.readline().strip() == "ready"

    def run(self, argv: list[str], kill_after: float | None = None, number: int = signal.SIGKILL) -> int:
        """Run ``argv`` in a fresh child; with ``kill_after``, send it ``number`` that many seconds in."""
        self.process.stdin.write(json.dumps(argv) + "\n")
        self.process.stdin.flush()
        pid = int(self.process.stdout.readline())
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, number)
            except ProcessLookupError:  # it finished first
                pass
        return json.loads(self.process.stdout.readline())["code"]

    def timed(self, argv: list[str]) -> float:
        started = time.monotonic()
        code = self.run(argv)
        assert code == 0, self.log.read_text()[-3000:]
        return time.monotonic() - started

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[CommandServer]:
    running = CommandServer(tmp_path_factory.mktemp("server") / "commands.log")
    yield running
    running.close()


def kill_points(duration: float, seed: int) -> list[tuple[float, int]]:
    """(seconds in, signal) for each trial, spread over the command's measured run (which includes the time to
    start it and hear back, so a few kills may still come after the end)."""
    rng = random.Random(seed)
    return [(rng.uniform(0.0, duration * 0.8), SIGNALS[trial % len(SIGNALS)]) for trial in range(TRIALS)]


def snapshot(folder: Path, after: int | None = None) -> dict[str, bytes]:
    """Every file under ``folder``; ``after`` SIGKILL, a hidden staging file (``.NAME.*.tmp``, never read as
    output) may be left over and is not counted; after any other signal there must be none."""
    if not folder.exists():
        return {}
    files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    if after == signal.SIGKILL:
        files = {name: data for name, data in files.items()
                 if not (Path(name).name.startswith(".") and name.endswith(".tmp"))}
    return files


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """A base model folder and two LoRA adapters on it (old and new), each also in the peft format."""
    root = tmp_path_factory.mktemp("kills")
    base = tiny_llama().eval()
    base.save_pretrained(root / "base")
    for name, shift in (("old", 0.03), ("new", 0.07)):
        model = peftlab.apply(copy.deepcopy(base), "lora", rank=4)
        with torch.no_grad():
            for _, parameter in peftlab.adapter_parameters(model):
                parameter.add_(shift)
        peftlab.save_adapter(model, root / name)
        export_peft(root / name, root / f"{name}-peft")
    return {"base": root / "base", "old": root / "old", "new": root / "new",
            "old-peft": root / "old-peft", "new-peft": root / "new-peft"}


def writing_command(command: str, adapters: dict[str, Path], version: str, output: Path) -> list[str]:
    return {"merge": ["merge", "--model", str(adapters["base"]), "--adapter", str(adapters[version]),
                      "--output", str(output), "--overwrite"],
            "export": ["export", str(adapters[version]), str(output), "--overwrite"],
            "import": ["import", str(adapters[f"{version}-peft"]), str(output), "--overwrite"]}[command]


@pytest.mark.parametrize("command", ["merge", "export", "import"])
def test_a_killed_overwrite_leaves_the_old_output_or_the_whole_new_one(server, adapters, tmp_path, command):
    out = tmp_path / "out"
    server.timed(writing_command(command, adapters, "new", out))
    new = snapshot(out)
    duration = server.timed(writing_command(command, adapters, "old", out))
    old = snapshot(out)
    assert old != new
    codes = []
    for trial, (seconds, number) in enumerate(kill_points(duration, seed=len(command))):
        code = server.run(writing_command(command, adapters, "new", out), kill_after=seconds, number=number)
        codes.append(code)
        assert code in (0, -signal.SIGKILL, -signal.SIGTERM, 130, 143), (code, server.log.read_text()[-2000:])
        found = snapshot(out, after=number)
        assert found in (old, new), f"trial {trial}: {signal.Signals(number).name} at {seconds:.3f}s (exit {code}) " \
                                    f"left a mix: {sorted(found)}"
        if code == 0:
            assert found == new
        assert server.run(writing_command(command, adapters, "old", out)) == 0  # the next trial starts from old
        assert snapshot(out) == old
    assert any(code != 0 for code in codes), f"no kill landed before {command} finished: {codes}"


@pytest.fixture(scope="module")
def tiny_bert_folder(tmp_path_factory) -> Path:
    return save_tiny("bert", tmp_path_factory.mktemp("kill-bert") / "bert")


def train_command(model: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--task", "sst2", "--method", "lora", "--data-dir", str(real_data_root()),
            "--output", str(output), "--max-train-samples", "32", "--max-eval-samples", "8", "--batch-size", "4",
            "--max-steps", "12", "--save-steps", "2", "--lr", "5e-3", "--no-progress", "--seed", "3", *extra]


def assert_whole(output: Path) -> None:
    """Every visible checkpoint is complete and every visible result file parses."""
    for checkpoint in output.glob("checkpoint-*"):
        assert (checkpoint / STATE_NAME).is_file(), f"{checkpoint.name} is visible but incomplete"
        load_file(checkpoint / "adapter" / "adapter_model.safetensors")
    for name in ("metrics.json",):
        if (output / name).exists():
            json.loads((output / name).read_text())
    if (output / "adapter_model.safetensors").exists():
        load_file(output / "adapter_model.safetensors")


@pytest.mark.parametrize("number", SIGNALS, ids=lambda n: signal.Signals(n).name)
def test_a_killed_train_resumes_to_the_same_adapter(server, tiny_bert_folder, tmp_path, number):
    straight = tmp_path / "straight"
    duration = server.timed(train_command(tiny_bert_folder, straight))
    expected = load_file(straight / "adapter_model.safetensors")
    rng = random.Random(number)
    codes = []
    for trial in range(TRIALS // 2):
        out = tmp_path / f"killed-{trial}"
        seconds = rng.uniform(0.0, duration)
        code = server.run(train_command(tiny_bert_folder, out), kill_after=seconds, number=number)
        codes.append(code)
        assert code in (0, -signal.SIGKILL, 128 + number, -number), (code, server.log.read_text()[-2000:])
        assert_whole(out)
        resume = ["--resume"] if out.exists() else []  # killed before it made its folder: a fresh start
        assert server.run(train_command(tiny_bert_folder, out, *resume)) == 0, server.log.read_text()[-3000:]
        got = load_file(out / "adapter_model.safetensors")
        assert got.keys() == expected.keys(), f"trial {trial}: {signal.Signals(number).name} at {seconds:.3f}s"
        assert all(torch.equal(got[key], expected[key]) for key in got), \
            f"trial {trial}: {signal.Signals(number).name} at {seconds:.3f}s (exit {code}) resumed to another adapter"
    assert any(code != 0 for code in codes), f"no kill landed before train finished: {codes}"


def report_record(method: str, score: float) -> dict:
    return {"format": RECORD_FORMAT, "status": "ok", "run_id": method, "score": score, "primary_metric": "accuracy",
            "spec": {"model": "m", "task": "sst2", "label": method, "method": method, "family": "reparameterized",
                     "seed": 0, "knobs": {}},
            "parameters": {"trainable_percent": 0.5}, "memory": {"peak_bytes": 2**20}}


def test_a_killed_report_leaves_the_old_report_or_the_whole_new_one(server, tmp_path):
    sweep = tmp_path / "sweep"
    runs_dir(sweep).mkdir(parents=True)
    (runs_dir(sweep) / "lora.json").write_text(json.dumps(report_record("lora", 81.0)))
    duration = server.timed(["report", str(sweep)])
    old = snapshot(sweep)
    (runs_dir(sweep) / "bitfit.json").write_text(json.dumps(report_record("bitfit", 79.0)))
    assert server.run(["report", str(sweep), "--overwrite"]) == 0
    new = snapshot(sweep)
    codes = []
    for trial, (seconds, number) in enumerate(kill_points(duration, seed=7)):
        (runs_dir(sweep) / "bitfit.json").unlink()
        assert server.run(["report", str(sweep), "--overwrite"]) == 0 and snapshot(sweep) == old
        (runs_dir(sweep) / "bitfit.json").write_text(json.dumps(report_record("bitfit", 79.0)))
        old_with_record = {**old, "runs/bitfit.json": new["runs/bitfit.json"]}
        codes.append(server.run(["report", str(sweep), "--overwrite"], kill_after=seconds, number=number))
        found = snapshot(sweep, after=number)
        assert found in (old_with_record, new), \
            f"trial {trial}: {signal.Signals(number).name} at {seconds:.3f}s left a mix of two reports"
    assert any(code != 0 for code in codes), f"no kill landed before report finished: {codes}"

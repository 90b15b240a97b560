"""The sweep: expand a suite, keep this shard's runs, skip finished ones, run each in its own process.

Each run is ``python -m peftlab.bench.worker SPEC --record RECORD`` in a fresh process, so its peak
RSS is its own and a crash (or a kill of the sweep) loses only the run in progress. The worker writes
the record atomically; if it dies without one, the sweep writes a ``failed`` record naming the exit
status and the end of its output. Rerunning the same command resumes: finished runs are skipped, and a run
stopped by SIGINT or SIGTERM continues from the checkpoint it saved (``bench.supervisor``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import peftlab
from peftlab.bench.models import MODELS_FOLDER
from peftlab.bench.records import (CHECKPOINTS_FOLDER, RUNS_FOLDER, TRACKERS_FOLDER, is_finished, record_path,
                                   runs_dir, write_record)
from peftlab.bench.report import REPORT_FILES
from peftlab.bench.suite import RunSpec, SuiteError
from peftlab.bench.supervisor import SweepStop
from peftlab.core.atomic import write_text_atomic
from peftlab.core.errors import Interrupted
from peftlab.core.outputs import OutputKind
from peftlab.tasks import TaskError, get_task
from peftlab.tasks.files import task_for

SPECS_FOLDER = "specs"
LOGS_FOLDER = "logs"
BENCH_OUTPUT = OutputKind(command="peftlab bench", flag="--output",
                          owns=(RUNS_FOLDER, SPECS_FOLDER, LOGS_FOLDER, MODELS_FOLDER, CHECKPOINTS_FOLDER,
                                TRACKERS_FOLDER, *REPORT_FILES))


def is_sweep_folder(output: Path) -> bool:
    """Whether ``output`` holds a sweep's own folders (rerunning the sweep there resumes it)."""
    return any((output / name).is_dir() for name in (RUNS_FOLDER, SPECS_FOLDER))


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (1-based) of ``count`` disjoint parts of a sweep."""

    index: int = 1
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise SuiteError(f"--shard expects K/N with whole numbers, e.g. 2/4 (got {text!r})") from None
        if not 1 <= index <= count:
            raise SuiteError(f"--shard {text}: K must be between 1 and N (the K-th of N parts)")
        return cls(index, count)

    def select(self, runs: Sequence[RunSpec]) -> list[RunSpec]:
        """Round-robin over the suite's fixed run order: disjoint, and together the whole sweep."""
        return [run for position, run in enumerate(runs) if position % self.count == self.index - 1]


@dataclass
class SweepResult:
    ran: list[str]
    skipped: list[str]
    failed: list[str]


def worker_command(spec_path: Path, record: Path, launch: str | None = None, breakdown: bool = True) -> list[str]:
    """The worker's command line; ``launch`` (``torchrun --nproc-per-node 4``, ``accelerate launch ...``)
    spreads the one run over several processes."""
    prefix = shlex.split(launch) if launch else [sys.executable]
    return [*prefix, "-m", "peftlab.bench.worker", str(spec_path), "--record", str(record),
            *([] if breakdown else ["--no-memory-breakdown"])]


def _worker_environment() -> dict[str, str]:
    source_root = str(Path(peftlab.__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": source_root + (os.pathsep + existing if existing else "")}


def run_sweep(
    runs: Sequence[RunSpec],
    output: str | Path,
    shard: Shard = Shard(),
    timeout: float | None = None,
    echo: Callable[[str], None] = print,
    launch: str | None = None,
    breakdown: bool = True,
) -> SweepResult:
    """Run this shard's unfinished runs one after another; returns what ran, was skipped, failed."""
    output = Path(output)
    mine = shard.select(runs)
    todo = [run for run in mine if not is_finished(output, run)]
    skipped = [run.run_id for run in mine if run not in todo]
    echo(f"{len(mine)} run(s) in shard {shard.index}/{shard.count}: {len(skipped)} finished already, "
         f"{len(todo)} to run -> {output}")
    problems = data_problems(todo)
    if problems:
        raise TaskError(f"{len(problems)} task(s) of this sweep have no data; nothing was run:\n  " + "\n  ".join(problems))
    result = SweepResult([], skipped, [])
    started = time.monotonic()
    stop = SweepStop()
    with stop.installed():
        for position, run in enumerate(todo, 1):
            if stop.requested:
                raise Interrupted(stop.stopped_message(position - 1, len(todo)), exit_code=128 + stop.signal_number)
            if is_finished(output, run):  # another sweep on the same folder finished it meanwhile
                result.skipped.append(run.run_id)
                echo(f"[{position}/{len(todo)}] {run.run_id}: finished meanwhile by another sweep, skipped")
                continue
            echo(f"[{position}/{len(todo)}] {run.run_id} ...")
            ok, seconds, summary = run_one(run, output, timeout, launch, breakdown, stop)
            if not ok and stop.requested:  # stopped, not failed: no record, so the rerun continues it
                raise Interrupted(stop.stopped_message(position - 1, len(todo), run.run_id,
                                                       output / CHECKPOINTS_FOLDER / run.run_id),
                                  exit_code=128 + stop.signal_number)
            (result.ran if ok else result.failed).append(run.run_id)
            left = len(todo) - position
            eta = (time.monotonic() - started) / position * left
            echo(f"[{position}/{len(todo)}] {run.run_id}: {summary} in {seconds:.0f}s | {left} left, ETA {_clock(eta)}")
    return result


def data_problems(runs: Sequence[RunSpec]) -> list[str]:
    """Why the data of ``runs`` cannot be found (``Task.missing_data``), one line per task, found before any
    run starts: a missing data folder fails the sweep in a second instead of once per run."""
    problems: dict[str, str] = {}
    for run in runs:
        try:
            task = task_for(run.task_name, run.training)  # a file task reads and checks its rows here
        except TaskError as error:
            problems.setdefault(run.task_name, str(error))
            continue
        wanted = [(task, [run.training.get("train_split") or task.train_split, *task.eval_splits])]
        wanted += [(get_task(name), list(get_task(name).eval_splits)) for name in run.training.get("eval_tasks", ())]
        for needed, splits in wanted:
            problem = needed.missing_data(splits, run.training.get("data_dir"))
            if problem is not None:
                problems.setdefault(needed.name, problem)
    return list(problems.values())


def run_one(run: RunSpec, output: Path, timeout: float | None = None, launch: str | None = None,
            breakdown: bool = True, stop: SweepStop | None = None) -> tuple[bool, float, str]:
    """Run one spec in a worker process; returns (succeeded, seconds, one-line summary). When ``stop`` was
    signalled and the worker did not finish, nothing is recorded: the run is not failed, it is to continue."""
    stop = stop or SweepStop()
    spec_path = output / SPECS_FOLDER / f"{run.run_id}.json"
    record = record_path(output, run)
    log_path = output / LOGS_FOLDER / f"{run.run_id}.log"
    write_text_atomic(spec_path, json.dumps(run.to_dict(), indent=2, sort_keys=True))
    runs_dir(output).mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)  # an old failure, or a result for a changed spec
    started = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:  # a continued run's log goes on after the stopped one's
        code = stop.run(worker_command(spec_path, record, launch, breakdown), log, _worker_environment(), timeout)
    seconds = time.monotonic() - started
    if is_finished(output, run):
        data = json.loads(record.read_text(encoding="utf-8"))
        score = data.get("score")
        return True, seconds, f"{data.get('primary_metric', 'score')} {score:.2f}" if score is not None else "ok"
    if stop.requested:
        return False, seconds, "stopped"
    if not record.exists():
        reason = f"timed out after {timeout:.0f}s" if code is None else f"worker exited with status {code}"
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        write_record(record, {"run_id": run.run_id, "status": "failed", "spec": run.to_dict(),
                              "error": f"{reason}; log {log_path}: {tail}", "wall_seconds": seconds})
    error = json.loads(record.read_text(encoding="utf-8")).get("error") or ""
    return False, seconds, "FAILED: " + error.strip().splitlines()[0][:160] if error.strip() else "FAILED"


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"

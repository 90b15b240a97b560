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
from peftlab.bench.packed import PACK_REFUSED, pack_units, refused_path
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
    pack: int = 1,
) -> SweepResult:
    """Run this shard's unfinished runs one after another; returns what ran, was skipped, failed. ``pack``:
    train up to that many runs that can share one base at once, in one process (:mod:`peftlab.bench.packed`)."""
    output = Path(output)
    if pack > 1 and launch:
        raise SuiteError("--pack trains several runs in one process: give it without --launch")
    mine = shard.select(runs)
    todo = [run for run in mine if not is_finished(output, run)]
    skipped = [run.run_id for run in mine if run not in todo]
    echo(f"{len(mine)} run(s) in shard {shard.index}/{shard.count}: {len(skipped)} finished already, "
         f"{len(todo)} to run -> {output}")
    problems = data_problems(todo)
    if problems:
        raise TaskError(f"{len(problems)} task(s) of this sweep have no data; nothing was run:\n  " + "\n  ".join(problems))
    result = SweepResult([], skipped, [])
    started, done, refused = time.monotonic(), 0, set()
    queue = pack_units(todo, pack)
    stop = SweepStop()
    with stop.installed():
        while queue:
            unit = queue.pop(0)
            if stop.requested:
                raise Interrupted(stop.stopped_message(done, len(todo)), exit_code=128 + stop.signal_number)
            for run in [run for run in unit if is_finished(output, run)]:  # another sweep finished it meanwhile
                unit.remove(run)
                done += 1
                result.skipped.append(run.run_id)
                echo(f"[{done}/{len(todo)}] {run.run_id}: finished meanwhile by another sweep, skipped")
            if not unit:
                continue
            names = " + ".join(run.run_id for run in unit)
            echo(f"[{done + 1}/{len(todo)}] {names} ..." if len(unit) == 1 else
                 f"[{done + 1}-{done + len(unit)}/{len(todo)}] {len(unit)} at once: {names} ...")
            if len(unit) == 1:
                outcomes = [run_one(unit[0], output, timeout, launch, breakdown, stop)]
            else:
                outcomes = run_pack(unit, output, timeout, stop)
                if outcomes is None:  # they cannot share a base: alone, and packs without the refusing methods
                    refused |= _refused_methods(output, unit)
                    queue[:0] = pack_units(unit, pack, refused) if refused & {r.method for r in unit} else [[r] for r in unit]
                    echo(f"    cannot share one base ({', '.join(sorted(refused)) or 'see the log'}): rescheduled")
                    continue
            if stop.requested and not all(ok for ok, _, _ in outcomes):  # stopped, not failed: the rerun continues
                raise Interrupted(stop.stopped_message(done, len(todo), unit[0].run_id,
                                                       output / CHECKPOINTS_FOLDER / unit[0].run_id),
                                  exit_code=128 + stop.signal_number)
            for run, (ok, seconds, summary) in zip(unit, outcomes):
                done += 1
                (result.ran if ok else result.failed).append(run.run_id)
                left = len(todo) - done
                eta = (time.monotonic() - started) / done * left
                echo(f"[{done}/{len(todo)}] {run.run_id}: {summary} in {seconds:.0f}s | {left} left, ETA {_clock(eta)}")
    return result


def run_pack(runs: list[RunSpec], output: Path, timeout: float | None,
             stop: SweepStop) -> list[tuple[bool, float, str]] | None:
    """Run ``runs`` at once in one worker process (no memory breakdown: its peak is the pack's); each run's
    (succeeded, seconds, summary), or None when the worker found they cannot share one base (nothing recorded)."""
    spec_paths = [_write_spec(output, run) for run in runs]
    records = [record_path(output, run) for run in runs]
    log_path = output / LOGS_FOLDER / f"{runs[0].run_id}.log"
    refused_path(spec_paths[0]).unlink(missing_ok=True)
    started = time.monotonic()
    command = [sys.executable, "-m", "peftlab.bench.packed", *map(str, spec_paths),
               *[word for record in records for word in ("--record", str(record))]]
    with open(log_path, "a", encoding="utf-8") as log:
        code = stop.run(command, log, _worker_environment(), timeout)
    if code == PACK_REFUSED and not any(record.exists() for record in records):
        return None
    return [_outcome(run, output, code, time.monotonic() - started, log_path, timeout, stop) for run in runs]


def _refused_methods(output: Path, runs: list[RunSpec]) -> set[str]:
    note = refused_path(output / SPECS_FOLDER / f"{runs[0].run_id}.json")
    return set(json.loads(note.read_text(encoding="utf-8"))["methods"]) if note.is_file() else set()


def _write_spec(output: Path, run: RunSpec) -> Path:
    spec_path = output / SPECS_FOLDER / f"{run.run_id}.json"
    write_text_atomic(spec_path, json.dumps(run.to_dict(), indent=2, sort_keys=True))
    runs_dir(output).mkdir(parents=True, exist_ok=True)
    (output / LOGS_FOLDER).mkdir(parents=True, exist_ok=True)
    record_path(output, run).unlink(missing_ok=True)  # an old failure, or a result for a changed spec
    return spec_path


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
    spec_path = _write_spec(output, run)
    log_path = output / LOGS_FOLDER / f"{run.run_id}.log"
    started = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log:  # a continued run's log goes on after the stopped one's
        code = stop.run(worker_command(spec_path, record_path(output, run), launch, breakdown), log,
                        _worker_environment(), timeout)
    return _outcome(run, output, code, time.monotonic() - started, log_path, timeout, stop)


def _outcome(run: RunSpec, output: Path, code: int | None, seconds: float, log_path: Path, timeout: float | None,
             stop: SweepStop) -> tuple[bool, float, str]:
    """(succeeded, seconds, summary) from the run's record; a worker that died without one gets a failed one."""
    record = record_path(output, run)
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

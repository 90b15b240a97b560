"""Run records: one JSON file per run in ``DIR/runs/``, written atomically, read back by resume and report.

A record holds the run's spec (its identity), ``status`` (``ok`` or ``failed``), scores, parameter
counts, memory, speed, wall time and provenance. Resume skips a run whose record says ``ok`` for the
same spec; anything else (no record, a failure, a changed spec) runs again.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from peftlab.bench.suite import RunSpec
from peftlab.core.atomic import write_text_atomic

RECORD_FORMAT = "peftlab-run/1"
RUNS_FOLDER = "runs"
CHECKPOINTS_FOLDER = "checkpoints"  # a run in progress trains into checkpoints/RUN_ID/; removed once it is recorded
TRACKERS_FOLDER = "trackers"  # a suite's report_to: every run's tracker files (tensorboard/, mlruns/, wandb/, trackio/)
PACKAGES = ("peftlab", "torch", "transformers", "accelerate", "bitsandbytes", "numpy")


def runs_dir(output: str | Path) -> Path:
    return Path(output) / RUNS_FOLDER


def record_path(output: str | Path, spec: RunSpec) -> Path:
    return runs_dir(output) / f"{spec.run_id}.json"


def checkpoints_path(output: str | Path, spec: RunSpec) -> Path:
    return Path(output) / CHECKPOINTS_FOLDER / spec.run_id


def write_record(path: str | Path, record: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps({"format": RECORD_FORMAT, **record}, indent=2, sort_keys=True) + "\n")


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when there is none or it is not a run record."""
    record, _ = _load(Path(path))
    return record


def _load(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(record, None)``, or ``(None, why it is not one)``."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "missing"
    except json.JSONDecodeError as error:
        return None, f"not valid JSON, line {error.lineno}: {error.msg}"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except OSError as error:
        return None, f"cannot be read: {error.strerror or error}"
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        return None, f"not a {RECORD_FORMAT} record (format: {found})"
    return record, None


def read_records(output: str | Path) -> list[dict[str, Any]]:
    """Every run record in ``output/runs`` (from any shard), sorted by run id; see :func:`unreadable_records`
    for the files left out."""
    records = (read_record(path) for path in sorted(runs_dir(output).glob("*.json")))
    return [record for record in records if record is not None]


def unreadable_records(output: str | Path) -> dict[str, str]:
    """The files in ``output/runs`` that are not readable run records (corrupt, truncated, foreign), each with
    why: a report must count and name them rather than drop those runs silently."""
    problems = {}
    for path in sorted(runs_dir(output).glob("*.json")):
        _, problem = _load(path)
        if problem is not None and problem != "missing":  # missing: deleted between the listing and the read
            problems[path.name] = problem
    return problems


def is_finished(output: str | Path, spec: RunSpec) -> bool:
    """Whether the run already has a successful record for exactly this spec."""
    record = read_record(record_path(output, spec))
    return record is not None and record.get("status") == "ok" and record.get("spec") == spec.to_dict()


def provenance(device: str) -> dict[str, Any]:
    """Where a number came from: git commit, package versions, device, host."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    if versions["peftlab"] is None:
        import peftlab

        versions["peftlab"] = peftlab.__version__
    return {"git_commit": git_commit(), "git_dirty": git_dirty(), "packages": versions, "device": device,
            "python": platform.python_version(), "platform": platform.platform(), "host": platform.node(),
            "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}  # shared CPU: times are not clean


def _git(*arguments: str) -> str | None:
    try:
        result = subprocess.run(["git", *arguments], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_commit() -> str | None:
    """HEAD's hash, or ``$PEFTLAB_GIT_COMMIT`` where it is set: the code sent to a lent machine is a copy
    whose .git (if any) is not the commit it holds."""
    return os.environ.get("PEFTLAB_GIT_COMMIT") or _git("rev-parse", "HEAD")


def git_dirty() -> bool | None:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)

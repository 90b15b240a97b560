"""The assessment: suites of runs (YAML), one JSON record per run, resumable sharded sweeps, the report.

    peftlab bench --suite quick --output runs/quick      # run, resume, report
    peftlab report runs/quick                             # tables and plots from whatever records exist
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peftlab.bench.suite import Suite

_LAZY = {"Suite": "peftlab.bench.suite", "SuiteError": "peftlab.bench.suite", "load_suite": "peftlab.bench.suite_file"}

# TrainArgs fields the sweep sets itself; a suite may not.
RESERVED_TRAINING_KEYS = frozenset({"model", "task", "method", "options", "seed", "output_dir", "data_dir",
                                    "resume", "overwrite", "tracker_dir", "run_name", "tracker_project"})


def check_training(training: dict[str, Any], where: str) -> None:
    """Reject a suite's training settings that the training entry point would reject, before anything runs."""
    from peftlab.bench.suite import SuiteError
    from peftlab.train.args import TrainArgs

    known = set(TrainArgs.field_names()) - RESERVED_TRAINING_KEYS
    unknown = sorted(set(training) - known)
    if unknown:
        raise SuiteError(f"{where}: unknown training setting(s) {', '.join(unknown)}; "
                         f"settings: {', '.join(sorted(known))}")
    try:
        TrainArgs(model="-", task="-", tracker_dir="-", **training)  # the sweep gives the trackers their folder
    except (TypeError, ValueError) as error:
        raise SuiteError(f"{where}: {error}") from None


def load_suite_checked(name_or_path: str) -> Suite:
    """A suite validated against the registered methods, the tasks registry and the training settings."""
    from peftlab.bench.suite_file import load_suite
    from peftlab.tasks import task_names

    return load_suite(name_or_path, known_tasks=task_names(), check_training=check_training)


__all__ = ["Suite", "SuiteError", "check_training", "load_suite", "load_suite_checked"]


def __getattr__(name: str) -> Any:
    """The suite classes (which need the method registry, so torch) imported on first use (PEP 562): the
    CLI's parser lists the built-in suites without them."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'peftlab.bench' has no attribute {name!r}")

"""The assessment: suites of runs (YAML), one JSON record per run, resumable sharded sweeps, the report.

    peftlab bench --suite quick --output runs/quick      # run, resume, report
    peftlab report runs/quick                             # tables and plots from whatever records exist
"""

from __future__ import annotations

from typing import Any

from peftlab.bench.suite import Suite, SuiteError
from peftlab.bench.suite_file import load_suite

# TrainArgs fields the sweep sets itself; a suite may not.
RESERVED_TRAINING_KEYS = frozenset({"model", "task", "method", "options", "seed", "output_dir", "data_dir",
                                    "resume", "overwrite"})


def check_training(training: dict[str, Any], where: str) -> None:
    """Reject a suite's training settings that the training entry point would reject, before anything runs."""
    from peftlab.train.args import TrainArgs

    known = set(TrainArgs.field_names()) - RESERVED_TRAINING_KEYS
    unknown = sorted(set(training) - known)
    if unknown:
        raise SuiteError(f"{where}: unknown training setting(s) {', '.join(unknown)}; "
                         f"settings: {', '.join(sorted(known))}")
    try:
        TrainArgs(model="-", task="-", **training)
    except (TypeError, ValueError) as error:
        raise SuiteError(f"{where}: {error}") from None


def load_suite_checked(name_or_path: str) -> Suite:
    """A suite validated against the registered methods, the tasks registry and the training settings."""
    from peftlab.tasks import task_names

    return load_suite(name_or_path, known_tasks=task_names(), check_training=check_training)


__all__ = ["Suite", "SuiteError", "check_training", "load_suite", "load_suite_checked"]

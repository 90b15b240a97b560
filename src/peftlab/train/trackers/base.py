"""What every tracker shares: where each writes inside the run folder, the run it records, the protocol the
trainer calls (:mod:`peftlab.train.trackers`), and the error for a library that is not installed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from peftlab.core.errors import UserError

FOLDERS = {"tensorboard": "tensorboard", "mlflow": "mlruns", "wandb": "wandb", "trackio": "trackio"}
STATE_NAME = "trackers.json"  # in the run folder: the run ids that --resume continues
OWNED = (*FOLDERS.values(), STATE_NAME)  # what the trackers write inside --output (train.plan.TRAIN_OUTPUT)


class TrackerMissing(UserError, ImportError):
    """``--report-to NAME`` without the library installed."""

    def __init__(self, name: str, error: ImportError) -> None:
        super().__init__(f"--report-to {name} needs {name}: pip install 'peftlab[{name}]' (all four trackers: "
                         f"'peftlab[trackers]') ({error})")


@dataclass(frozen=True)
class TrackerRun:
    """Where and under which names a tracker records the run."""

    root: Path  # --tracker-dir, else --output
    shared: bool  # root is --tracker-dir: many runs write there
    name: str
    project: str
    tags: dict[str, str]
    continues: bool  # --resume: continue the stored runs
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)  # trackers.json of an earlier attempt


class Tracker(Protocol):
    """One library's view of a run; every call comes from the main process."""

    def start(self, config: dict[str, Any], step: int) -> None:
        """Open the run (``step``: the step training starts from, 0 unless resumed) and record ``config``."""

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, summary: dict[str, float], status: str) -> None:
        """Record the final ``summary`` and close; ``status``: finished, failed or killed."""

    def state(self) -> dict[str, Any]:
        """What ``--resume`` needs to continue this run (its id), kept in ``trackers.json``."""

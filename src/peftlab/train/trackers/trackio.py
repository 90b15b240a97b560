"""``--report-to trackio``: one trackio run in its local SQLite database.

The database folder is ``$TRACKIO_DIR`` when set, else ``--output/trackio`` (or ``--tracker-dir``/trackio).
trackio reads that folder once, when it is first imported, so one process logs to one folder: a second run
in the same process that wants another folder is refused. Project ``--tracker-project``, run ``--run-name``
(grouped by method, the tags in its config); ``--resume`` continues the run of that name. trackio's own lines
go to standard error (the command's standard output is its JSON summary).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from peftlab.train.args import ArgumentError
from peftlab.train.trackers.base import FOLDERS, TrackerMissing, TrackerRun


class TrackioTracker:
    def __init__(self, run: TrackerRun) -> None:
        folder = Path(os.environ.get("TRACKIO_DIR") or run.root / FOLDERS["trackio"]).resolve()
        loaded = sys.modules.get("trackio.utils")
        if loaded is not None and Path(loaded.TRACKIO_DIR).resolve() != folder:
            raise ArgumentError(f"--report-to trackio: trackio was already imported in this process with its "
                                f"database in {loaded.TRACKIO_DIR}, and reads that folder once; run this in a "
                                f"new process to log to {folder}")
        before = os.environ.get("TRACKIO_DIR")
        os.environ["TRACKIO_DIR"] = str(folder)
        try:
            import trackio
        except ImportError as error:
            raise TrackerMissing("trackio", error) from None
        finally:
            if before is None:
                os.environ.pop("TRACKIO_DIR", None)
        self.trackio, self.run, self.step, self.folder = trackio, run, 0, folder

    def start(self, config: dict[str, Any], step: int) -> None:
        self.step = step
        with contextlib.redirect_stdout(sys.stderr):
            self.session = self.trackio.init(
                project=self.run.project, name=self.run.name, group=self.run.tags["method"],
                config={**config, **{f"tags.{key}": value for key, value in self.run.tags.items()}},
                resume="allow" if self.run.continues else "never", embed=False, auto_log_cpu=False,
                auto_log_gpu=False)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.session.log(metrics, step=step)
        self.step = step

    def finish(self, summary: dict[str, float], status: str) -> None:
        if summary:
            self.log(summary, self.step)
        with contextlib.redirect_stdout(sys.stderr):
            self.trackio.finish()  # trackio's own: also forgets the run, so its exit hook has nothing left to print

    def state(self) -> dict[str, Any]:
        return {"folder": str(self.folder)}

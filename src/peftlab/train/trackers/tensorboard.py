"""``--report-to tensorboard``: event files through ``torch.utils.tensorboard.SummaryWriter``.

The run writes into ``--output/tensorboard`` (or ``--tracker-dir``/tensorboard/RUN-NAME). Each start opens the
folder with ``purge_step`` = the step training starts from + 1, so a resumed run's events replace what the
interrupted one wrote after its checkpoint, and a fresh run replaces an older one of the same name.
"""

from __future__ import annotations

from typing import Any

from peftlab.train.trackers.base import FOLDERS, TrackerMissing, TrackerRun


class TensorBoardTracker:
    def __init__(self, run: TrackerRun) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise TrackerMissing("tensorboard", error) from None
        self.make_writer, self.run, self.step = SummaryWriter, run, 0
        self.folder = run.root / FOLDERS["tensorboard"] / (run.name if run.shared else "")

    def start(self, config: dict[str, Any], step: int) -> None:
        self.writer, self.step = self.make_writer(str(self.folder), purge_step=step + 1), step
        if step == 0:
            rows = [*(f"| {key} | {value} |" for key, value in self.run.tags.items()),
                    *(f"| {key} | {value} |" for key, value in config.items())]
            self.writer.add_text("config", "\n".join(["| setting | value |", "|---|---|", *rows]), 0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.step = step

    def finish(self, summary: dict[str, float], status: str) -> None:
        self.log(summary, self.step)
        self.writer.add_text("status", status, self.step)
        self.writer.close()

    def state(self) -> dict[str, Any]:
        return {"folder": str(self.folder)}

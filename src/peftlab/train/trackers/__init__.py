"""Experiment trackers: ``peftlab train --report-to tensorboard|mlflow|wandb|trackio`` sends a run to each
library itself, beside its ``log.jsonl``: the run's config at the start (:func:`run_config`), every log line's
metrics (``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s``, ``train/peak_memory_bytes``;
``eval/<metric>``) at its step, and the final scores at the end (:func:`final_summary`).

The trainer talks to one :class:`Trackers` on the main process; each library is imported only when asked for
(a missing one names its pip extra). Files go into the run's ``--output`` (``tensorboard/``, ``mlruns/``,
``wandb/``, ``trackio/``) or into ``--tracker-dir``, which many runs share (``peftlab bench``: one project, a
run per suite run). A run folder also keeps ``trackers.json``, the MLflow and W&B run ids, so ``--resume``
continues the same runs; TensorBoard purges what it had after the checkpoint's step and appends.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import Any

from torch import nn

from peftlab.core.accounting import parameter_report
from peftlab.core.atomic import write_text_atomic
from peftlab.core.state import peft_state
from peftlab.train.args import TrainArgs
from peftlab.train.trackers.base import OWNED, STATE_NAME, Tracker, TrackerMissing, TrackerRun

__all__ = ["OWNED", "Tracker", "TrackerMissing", "TrackerRun", "Trackers", "final_summary", "open_trackers",
           "run_config"]

SKIPPED_KEYS = ("type", "step")  # a log line's fields that are not metrics


def open_trackers(args: TrainArgs, output: Path | None, is_main: bool) -> Trackers:
    """The trackers ``args.report_to`` asks for (none on the other processes): each library is imported now,
    so a missing one fails before the run writes anything; the trackers write from :meth:`Trackers.start` on."""
    if not args.report_to or not is_main:
        return Trackers({}, None)
    shared = args.tracker_dir is not None
    root = Path(args.tracker_dir) if shared else output
    model = Path(args.model).name if Path(args.model).exists() else args.model
    stored_path = output / STATE_NAME if output is not None else None
    stored = json.loads(stored_path.read_text()) if args.resume and stored_path and stored_path.is_file() else {}
    run = TrackerRun(root=root, shared=shared, project=args.tracker_project, continues=args.resume, stored=stored,
                     name=args.run_name or (output.name if output is not None else
                                            f"{args.method}-{args.task}-s{args.seed}"),
                     tags={"method": args.method, "task": args.task, "model": model, "seed": str(args.seed)})
    return Trackers({name: OPENERS[name](run) for name in args.report_to}, stored_path)


class Trackers:
    """The run's trackers, called as one; as a context, a run that raises is closed as failed (or killed)."""

    def __init__(self, trackers: dict[str, Tracker], state_path: Path | None) -> None:
        self.trackers, self.state_path, self.last_step = trackers, state_path, 0
        self.started = self.finished = False

    def start(self, config: dict[str, Any], step: int) -> None:
        self.last_step, self.started = step, True
        for tracker in self.trackers.values():
            tracker.start(config, step)
        if self.trackers and self.state_path is not None:
            state = {name: tracker.state() for name, tracker in self.trackers.items()}
            write_text_atomic(self.state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        """A ``log.jsonl`` line (``type`` train or eval) as metrics named ``<type>/<field>`` at its step."""
        if not self.trackers:
            return
        kind, self.last_step = record["type"], record["step"]
        metrics = {f"{kind}/{key}": float(value) for key, value in record.items()
                   if key not in SKIPPED_KEYS and not (kind == "eval" and key == "epoch")
                   and isinstance(value, (int, float)) and not isinstance(value, bool)}
        for tracker in self.trackers.values():
            tracker.log(metrics, self.last_step)

    def finish(self, summary: dict[str, float], status: str = "finished") -> None:
        self.finished = True
        for tracker in self.trackers.values():
            tracker.finish(summary, status)

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if kind is not None and self.started and not self.finished:  # a run that failed before it started: none
            from peftlab.core.errors import Interrupted

            try:
                self.finish({}, "killed" if issubclass(kind, (Interrupted, KeyboardInterrupt)) else "failed")
            except Exception as closing:  # noqa: BLE001  (the run's own error is the one to show)
                print(f"peftlab train: closing the trackers failed too: {closing}", file=sys.stderr)


def run_config(args: TrainArgs, model: nn.Module) -> dict[str, Any]:
    """The run's settings as one flat mapping: every ``TrainArgs`` field but the raw options, the method
    applied to ``model`` with its whole config as ``method.<option>`` (defaults included), the parameter counts."""
    state = peft_state(model)
    method_config = state.config.to_dict() if state else {}
    parameters = parameter_report(model).as_dict()
    config = {item.name: _plain(getattr(args, item.name)) for item in fields(args) if item.name != "options"}
    config.update({f"method.{key}": _plain(value) for key, value in method_config.items()
                   if key not in ("method", "format_version")})
    config.update({f"parameters.{key}": value for key, value in parameters.items() if key in
                   ("trainable", "total", "trainable_percent")})
    return config


def final_summary(metrics: dict[str, Any]) -> dict[str, float]:
    """The finished run's record (``metrics.json``) as the trackers' summary: final scores, best, time, memory."""
    summary = {f"final/{key}": float(value) for key, value in metrics["scores"].items()}
    for key in ("best_score", "best_step", "steps", "train_time_s", "train_tokens_per_s", "peak_memory_bytes"):
        if metrics.get(key) is not None:
            summary[f"final/{key}"] = float(metrics[key])
    return summary


def _plain(value: Any) -> Any:
    """A JSON scalar as it is; a list, tuple or mapping as JSON text (MLflow keeps parameters as text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(list(value) if isinstance(value, tuple) else value, sort_keys=True, default=str)


def _tensorboard(run: TrackerRun) -> Tracker:
    from peftlab.train.trackers.tensorboard import TensorBoardTracker

    return TensorBoardTracker(run)


def _mlflow(run: TrackerRun) -> Tracker:
    from peftlab.train.trackers.mlflow import MlflowTracker

    return MlflowTracker(run)


def _wandb(run: TrackerRun) -> Tracker:
    from peftlab.train.trackers.wandb import WandbTracker

    return WandbTracker(run)


def _trackio(run: TrackerRun) -> Tracker:
    from peftlab.train.trackers.trackio import TrackioTracker

    return TrackioTracker(run)


OPENERS = {"tensorboard": _tensorboard, "mlflow": _mlflow, "wandb": _wandb, "trackio": _trackio}

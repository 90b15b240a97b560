"""What a task is: examples from its files, how the model answers it, and its official metric.

A task module defines :class:`Task` subclasses and registers instances with :func:`register_task`.
Examples are plain text; turning them into tokens for a given model is the training loop's job.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from peftlab.core.errors import UserError

# How the model answers: a class/score from a head, generated text, the likelihood of option
# letters, or the loss on a response (instruction tuning).
Kind = Literal["classification", "regression", "generation", "multiple_choice", "language_modeling"]

DATA_ENV = "PEFTLAB_DATA"


class TaskError(UserError, ValueError):
    """An unknown task, or data that cannot be found or read; the message says where to put it."""


@dataclass(frozen=True)
class Example:
    """One input with its answer.

    ``text``/``text_pair``: the input (a sentence or sentence pair, a source sentence, a prompt).
    ``label``: class index, similarity score, or the index of the right option.
    ``target``: the text to produce (a translation, a response, the answer letter).
    ``group``: a sub-collection the metric reports on its own (an MMLU subject).
    ``shots``: the few-shot examples inside ``text``, in order and side by side, which a prompt too
    long for the model drops whole (see :meth:`with_shots`).
    ``messages``: a conversation as ``(role, content)`` pairs (the ``chat`` task), rendered by the model's chat
    template when it is encoded; ``text`` then holds the contents joined, for sorting by length.
    """

    text: str
    text_pair: str | None = None
    label: int | float | None = None
    target: str | None = None
    group: str | None = None
    shots: tuple[str, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()

    def with_shots(self, keep: int) -> str:
        """``text`` with only its first ``keep`` few-shot examples (as the benchmarks' own scripts shorten)."""
        if keep >= len(self.shots):
            return self.text
        head, found, question = self.text.partition("".join(self.shots))
        if not found:
            raise ValueError("an Example's shots must appear in its text, side by side")
        return head + "".join(self.shots[:keep]) + question


class Task:
    """One benchmark task. Subclasses set the class attributes and implement ``read``/``metrics``."""

    name: str = ""
    kind: Kind = "classification"
    num_labels: int = 0  # classes for classification, 1 for regression, 0 otherwise
    main_metric: str = ""  # the score used to keep the best checkpoint
    greater_is_better: bool = True  # False for losses: the lowest main_metric is the best
    fractions: tuple[str, ...] = ()  # metrics() names in [0, 1] ([-1, 1] for correlations); tables show them x100
    scored_before_training: bool = False  # as an extra eval task, also scored before the first step (forgetting)
    train_split: str = "train"
    eval_splits: tuple[str, ...] = ("dev",)
    separator: str = " "  # joins prompt and target when a decoder reads them as one sequence
    description: str = ""

    def read(self, root: Path, split: str) -> list[Example]:
        """Examples of ``split`` from the local folder ``root`` (the data root of every dataset)."""
        raise NotImplementedError

    def read_hub(self, split: str) -> list[Example]:
        """Examples of ``split`` from the HuggingFace hub (needs the ``datasets`` package)."""
        raise NotImplementedError

    def local_files(self, root: Path, split: str) -> list[Path]:
        """The files ``read`` needs, to tell the user what is missing."""
        raise NotImplementedError

    def metrics(self, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
        """The official scores of ``predictions`` (one per example, in order)."""
        raise NotImplementedError

    def load(self, split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
        """Examples from ``data_dir`` (or ``$PEFTLAB_DATA``); where its files are missing (or no folder is
        given) from the HuggingFace hub when ``datasets`` is installed; else a :class:`TaskError` naming both."""
        root = _data_root(data_dir)
        problem = self._local_problem(root, [split])
        return self.read(root, split) if problem is None else self._read_hub_or_explain(split, problem)

    def score_name(self, split: str, metric: str) -> str:
        """Metric names carry the split only when there are several (MNLI: ``matched_accuracy``)."""
        return f"{split.removeprefix('dev_')}_{metric}" if len(self.eval_splits) > 1 else metric

    def is_fraction(self, score: str) -> bool:
        """Whether ``score`` (a :meth:`metrics` name, or its :meth:`score_name`: MNLI's ``matched_accuracy``)
        is one of :attr:`fractions`."""
        return any(score in (metric, self.score_name(split, metric))
                   for metric in self.fractions for split in self.eval_splits)

    def layout_hint(self) -> str:
        return ", ".join(str(p) for p in self.local_files(Path("<data>"), self.train_split))

    def missing_data(self, splits: Sequence[str], data_dir: str | os.PathLike | None = None) -> str | None:
        """Why :meth:`load` of ``splits`` would find no data, told without reading any: None where the local
        files are all there, or where ``datasets`` is installed (whether the hub answers, only a load tells)."""
        problem = self._local_problem(_data_root(data_dir), splits)
        if problem is None:
            return None
        try:
            import datasets  # noqa: F401
        except ImportError:
            return self._no_route_message(problem)
        return None

    def _local_problem(self, root: Path | None, splits: Sequence[str]) -> str | None:
        """What keeps ``splits`` from being read under ``root``, or None when every file is there."""
        if root is None:
            return "no data folder given"
        missing = [path for split in splits for path in self.local_files(root, split) if not path.exists()]
        return f"{missing[0]} not found under the data folder {root}" if missing else None

    def _local_route(self) -> str:
        return (f"put the {self.description or self.name} files in a folder in the standard layout "
                f"({self.layout_hint()}) and pass it as --data-dir (or set ${DATA_ENV})")

    def _no_route_message(self, local_problem: str) -> str:
        return (f"task {self.name!r}: {local_problem}. Either {self._local_route()}, or `pip install datasets` "
                f"and run with network access to read them from the HuggingFace hub")

    def _read_hub_or_explain(self, split: str, local_problem: str) -> list[Example]:
        """The hub's copy of ``split``; else one error naming both routes to the data."""
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise TaskError(self._no_route_message(local_problem)) from None
        try:
            return self.read_hub(split)
        except TaskError:
            raise
        except Exception as error:  # noqa: BLE001  (offline, unknown split, hub error: any of them means "no data")
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise TaskError(f"task {self.name!r}: {local_problem}, and the HuggingFace hub could not be read "
                            f"({reason}). Either {self._local_route()}, or check the network access of `datasets`") from error


def _data_root(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir``, else ``$PEFTLAB_DATA``, else None."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or None
    return None if root is None else Path(root)


def subsample(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """At most ``limit`` examples, chosen at random with ``seed`` but kept in file order."""
    if limit is None or limit >= len(examples):
        return examples
    if limit <= 0:
        raise TaskError(f"the sample limit must be positive (got {limit})")
    chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in chosen]


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is registered twice")
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}") from None


def task_names() -> list[str]:
    return sorted(_TASKS)

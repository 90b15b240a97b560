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
    """

    text: str
    text_pair: str | None = None
    label: int | float | None = None
    target: str | None = None
    group: str | None = None


class Task:
    """One benchmark task. Subclasses set the class attributes and implement ``read``/``metrics``."""

    name: str = ""
    kind: Kind = "classification"
    num_labels: int = 0  # classes for classification, 1 for regression, 0 otherwise
    main_metric: str = ""  # the score used to keep the best checkpoint (higher is better)
    greater_is_better: bool = True
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
        """Examples from ``data_dir`` (or ``$PEFTLAB_DATA``), else the hub, else a clear error."""
        root = data_dir if data_dir is not None else os.environ.get(DATA_ENV) or None
        if root is not None:
            root = Path(root)
            missing = [path for path in self.local_files(root, split) if not path.exists()]
            if missing:
                raise TaskError(
                    f"task {self.name!r}: {missing[0]} not found under the data folder {root}. "
                    f"Put the {self.description or self.name} files there in the standard layout "
                    f"({self.layout_hint()}), or point --data-dir / ${DATA_ENV} to a folder that has them"
                )
            return self.read(root, split)
        return self._read_hub_or_explain(split)

    def score_name(self, split: str, metric: str) -> str:
        """Metric names carry the split only when there are several (MNLI: ``matched_accuracy``)."""
        return f"{split.removeprefix('dev_')}_{metric}" if len(self.eval_splits) > 1 else metric

    def layout_hint(self) -> str:
        return ", ".join(str(p) for p in self.local_files(Path("<data>"), self.train_split))

    def _read_hub_or_explain(self, split: str) -> list[Example]:
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise TaskError(
                f"task {self.name!r}: no data folder given. Pass --data-dir (or set ${DATA_ENV}) to a folder "
                f"with the files ({self.layout_hint()}), or `pip install datasets` to read them from the "
                f"HuggingFace hub"
            ) from None
        try:
            return self.read_hub(split)
        except (ConnectionError, OSError, ValueError) as error:
            raise TaskError(
                f"task {self.name!r}: the HuggingFace hub could not be read ({error}); pass --data-dir "
                f"(or set ${DATA_ENV}) to a local folder with the files ({self.layout_hint()})"
            ) from None


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

"""Tasks on the user's own files (``classify``, ``chat``, ``seq2seq``), read through HF ``datasets``.

A file task is registered once, unbound; :func:`task_for` binds it to the run's files and columns
(:class:`DataFiles`), which reads and checks every row at once, before any model loads: a missing file,
an unknown column (the file's columns listed), an empty label or a bad row is a :class:`TaskError` naming
the file, the row and the fix. Without an eval file a fixed tenth of the training rows (at least one; the
same seeded draw on every run) is held out and scored. What a run needs to score the task again (its
files, columns, classes) is saved beside the adapter as ``task.json``.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from peftlab.core.atomic import write_text_atomic
from peftlab.tasks._table import Table, is_empty, read_table
from peftlab.tasks.base import Example, Task, TaskError, get_task, task_names

HELD_OUT_FRACTION = 0.1
HELD_OUT_SEED = 20231219
TASK_FILE = "task.json"


@dataclass(frozen=True)
class DataFiles:
    """A file task's data: the files (or folders, or hub names) and the columns to read."""

    train_file: str | None = None
    eval_file: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    source_column: str | None = None
    target_column: str | None = None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> DataFiles:
        """From run settings (TrainArgs / EvalArgs fields, a suite run's training keys): the keys named as here."""
        return cls(**{f.name: None if settings.get(f.name) is None else str(settings[f.name]) for f in fields(cls)})

    def given(self) -> dict[str, str]:
        return {name: value for name, value in asdict(self).items() if value is not None}


def flag(setting: str) -> str:
    """The command-line flag of a :class:`DataFiles` setting (``train_file`` -> ``--train``)."""
    return "--" + setting.removesuffix("_file").replace("_", "-")


class FileTask(Task):
    """A task whose examples come from the user's files; subclasses read one row (:meth:`example`)."""

    eval_splits = ("eval",)
    columns: ClassVar[dict[str, str | None]] = {}  # the DataFiles column settings it takes -> their default column
    saved: dict[str, Any]  # a trained run's task.json (see bind)

    def __init__(self) -> None:
        self.data = DataFiles()
        self.saved = {}
        self.examples: dict[str, list[Example]] = {}

    def bind(self, data: DataFiles, saved: Mapping[str, Any] | None = None) -> FileTask:
        """A copy of this task with ``data`` read and checked; ``saved``: a trained run's ``task.json`` (its
        classes), so an evaluation maps labels as training did."""
        if data.train_file is None and data.eval_file is None:
            raise self.unbound()
        unused = [flag(name) for name in data.given() if name.endswith("_column") and name not in self.columns]
        if unused:
            takes = ", ".join(flag(name) for name in self.columns) or "no column flags"
            raise TaskError(f"--task {self.name} takes no {', '.join(unused)} (it takes {takes})")
        task = copy.copy(self)
        task.data, task.saved, task.examples = data, dict(saved or {}), {}
        tables = {split: read_table(path, flag(name)) for split, name, path in
                  (("train", "train_file", data.train_file), ("eval", "eval_file", data.eval_file)) if path}
        task.prepare(list(tables.values()))
        for split, table in tables.items():
            task.examples[split] = [task.example(table, index, row) for index, row in enumerate(table.rows)]
        if "eval" not in task.examples:
            task.examples["train"], task.examples["eval"] = held_out(task.examples["train"], data.train_file)
        return task

    def unbound(self) -> TaskError:
        return TaskError(f"--task {self.name} reads your own data: give --train FILE (and --eval FILE; without "
                         f"it {HELD_OUT_FRACTION:.0%} of the training rows are held out and scored)")

    def column(self, table: Table, setting: str) -> str | None:
        """The column ``setting`` names in ``table`` (its default when not given), checked to exist."""
        given = getattr(self.data, setting)
        name = given or self.columns[setting]
        return None if name is None else table.column(name, flag(setting), default=given is None)

    def text(self, table: Table, index: int, row: dict[str, Any], column: str) -> str:
        value = row[column]
        if is_empty(value) or isinstance(value, (list, dict)):
            what = "empty" if is_empty(value) else f"not text ({json.dumps(value)[:40]})"
            raise TaskError(f"{table.where(index)}: column {column!r} is {what}; fill it in or remove that row")
        return str(value)

    def prepare(self, tables: list[Table]) -> None:
        """Whatever depends on every table at once (classify: the classes); called before any row is read."""

    def example(self, table: Table, index: int, row: dict[str, Any]) -> Example:
        raise NotImplementedError

    def load(self, split: str, data_dir: Any = None) -> list[Example]:
        if split not in self.examples:
            if split in ("train", "eval"):  # no --train file (an eval file alone scores, it does not train)
                raise self.unbound()
            raise TaskError(f"--task {self.name} has the splits train and eval (the --train and --eval files), "
                            f"not {split!r}")
        return self.examples[split]

    def missing_data(self, splits: Sequence[str], data_dir: Any = None) -> str | None:
        return None if self.examples else f"--task {self.name}: no --train FILE given"

    def local_files(self, root: Path, split: str) -> list[Path]:
        return [Path(path) for path in (self.data.train_file, self.data.eval_file) if path]

    def record(self) -> dict[str, Any]:
        """``task.json``: the task, its data settings, and what an evaluation must map the same way."""
        data = {name: str(Path(value).resolve()) if name.endswith("_file") and Path(value).exists() else value
                for name, value in self.data.given().items()}  # found again from any folder
        return {"task": self.name, "kind": self.kind, "data": data}


def held_out(examples: list[Example], source: str | None) -> tuple[list[Example], list[Example]]:
    """``(train, eval)``: a fixed tenth of ``examples`` held out (the same draw on every run and seed)."""
    if len(examples) < 2:
        raise TaskError(f"--train {source} has {len(examples)} row: too few to hold some out for scoring; add rows "
                        f"or give --eval FILE")
    count = max(1, round(len(examples) * HELD_OUT_FRACTION))
    chosen = set(random.Random(HELD_OUT_SEED).sample(range(len(examples)), count))
    return ([e for i, e in enumerate(examples) if i not in chosen], [e for i, e in enumerate(examples) if i in chosen])


def file_task_names() -> list[str]:
    return [name for name in task_names() if isinstance(get_task(name), FileTask)]


def task_for(name: str, settings: Mapping[str, Any], saved: Mapping[str, Any] | None = None) -> Task:
    """Task ``name``; a file task bound to the data in ``settings`` (see :meth:`DataFiles.from_settings`),
    with a trained run's ``saved`` record filling in what ``settings`` leave out."""
    task = get_task(name)
    given = {key: value for key, value in settings.items() if value is not None}
    data = DataFiles.from_settings({**((saved or {}).get("data") or {}), **given})
    if isinstance(task, FileTask):
        return task.bind(data, saved)
    own_data = DataFiles.from_settings(settings).given()
    if own_data:
        raise TaskError(f"{', '.join(flag(n) for n in own_data)}: only for the tasks on your own files "
                        f"({', '.join(file_task_names())}); task {name!r} reads its own data (--data-dir)")
    return task


def save_record(task: Task, folder: Path) -> None:
    """Beside a file task's adapter: its ``task.json`` (data, columns, classes), which ``peftlab eval`` reads
    back (:func:`saved_record`); other tasks need none."""
    if isinstance(task, FileTask):
        write_text_atomic(folder / TASK_FILE, json.dumps(task.record(), indent=2) + "\n")


def saved_record(folder: str | Path | None) -> dict[str, Any] | None:
    """The ``task.json`` a file task's run saved in ``folder`` (an adapter folder), or None."""
    path = None if folder is None else Path(folder) / TASK_FILE
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TaskError(f"{path} is not valid JSON ({error}); it is written by peftlab train beside the adapter")
    return record if isinstance(record, dict) else None

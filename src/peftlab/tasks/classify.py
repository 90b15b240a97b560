"""``classify``: the user's texts (or text pairs) and labels, from a file (:mod:`peftlab.tasks.files`).

    peftlab train --task classify --train reviews.csv --text-column review --label-column stars

String labels become classes in sorted order (of the training and eval files together); integer labels
are the class ids themselves (0 to the largest); a float label column makes the task a regression, scored
like STS-B (Pearson and Spearman correlation). Classes are scored by accuracy and macro-F1. The classes are
saved with the run (``task.json``), so ``peftlab eval`` maps an eval file's labels as training did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

from peftlab.core.errors import few
from peftlab.tasks import metrics
from peftlab.tasks._table import Table, is_empty
from peftlab.tasks.base import Example, TaskError, register_task
from peftlab.tasks.files import FileTask

NUMBER_TYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


class Classify(FileTask):
    name = "classify"
    kind = "classification"
    main_metric = "accuracy"
    fractions = ("accuracy", "macro_f1")
    description = "your own classification or regression data"
    columns: ClassVar[dict[str, str | None]] = {"text_column": "text", "text_pair_column": None,
                                                "label_column": "label"}
    labels: tuple[str, ...] = ()  # class names in class-id order
    ids: bool = False  # the file's labels are class ids (integers), not names

    def prepare(self, tables: list[Table]) -> None:
        values = [(table, index, self.label_value(table, index, row))
                  for table in tables for index, row in enumerate(table.rows)]
        types = {table.dtype(self.column(table, "label_column")) for table in tables}
        saved_kind = self.saved.get("kind")
        if saved_kind == "regression" or (saved_kind is None and types & {"float16", "float32", "float64"}):
            self.kind, self.num_labels, self.main_metric = "regression", 1, "pearson"
            self.fractions = ("pearson", "spearman")
            return
        self.ids = bool(types & set(NUMBER_TYPES))
        if "labels" in self.saved:
            self.labels = tuple(self.saved["labels"])
            self.ids = bool(self.saved.get("ids", self.ids))
        elif self.ids:
            negative = next(((t, i, v) for t, i, v in values if int(v) < 0), None)
            if negative is not None:
                table, index, value = negative
                raise TaskError(f"{table.where(index)}: label {value!r} is negative; integer labels are class ids "
                                f"counting from 0 (or write the classes as names)")
            self.labels = tuple(str(i) for i in range(max(int(v) for _, _, v in values) + 1))
        else:
            self.labels = tuple(sorted({self.name_of(table, v) for table, _, v in values}))
        if len(self.labels) < 2:
            raise TaskError(f"{tables[0].source}: every label is {self.labels[0]!r}; a classifier needs two classes "
                            f"at least (a float label column trains a regression)")
        self.num_labels = len(self.labels)

    def label_value(self, table: Table, index: int, row: dict[str, Any]) -> Any:
        column = self.column(table, "label_column")
        value = row[column]
        if is_empty(value):
            raise TaskError(f"{table.where(index)}: the label (column {column!r}) is empty; fill it in or remove "
                            f"that row")
        return value

    def name_of(self, table: Table, value: Any) -> str:
        """A label as a class name: the text itself, or a class id's number; a ClassLabel's name by its id."""
        feature = table.features[self.column(table, "label_column")]
        return feature.int2str(int(value)) if hasattr(feature, "int2str") else str(value)

    def example(self, table: Table, index: int, row: dict[str, Any]) -> Example:
        pair_column = self.column(table, "text_pair_column")
        text = self.text(table, index, row, self.column(table, "text_column"))
        pair = self.text(table, index, row, pair_column) if pair_column else None
        return Example(text=text, text_pair=pair, label=self.label(table, index, row))

    def label(self, table: Table, index: int, row: dict[str, Any]) -> int | float:
        value = self.label_value(table, index, row)
        where = f"{table.where(index)}: label {value!r}"
        if self.kind == "regression":
            try:
                score = float(value)
            except (TypeError, ValueError):
                score = math.nan
            if not math.isfinite(score):
                raise TaskError(f"{where} is not a finite number, as a regression's labels are; fix or remove that row")
            return score
        if self.ids and not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise TaskError(f"{where} is not a class id (0 to {len(self.labels) - 1}); fix or remove that row")
        name = str(int(value)) if self.ids else self.name_of(table, value)
        if name not in self.labels:
            raise TaskError(f"{where} is not one of the classes the model was trained on "
                            f"({few(list(self.labels), 10)}); fix or remove that row")
        return self.labels.index(name)

    def metrics(self, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
        labels = [example.label for example in examples]
        if self.kind == "regression":
            return metrics.pearson_spearman([float(p) for p in predictions], labels)
        return {"accuracy": metrics.accuracy(predictions, labels), "macro_f1": metrics.macro_f1(predictions, labels)}

    def record(self) -> dict[str, Any]:
        classes = {} if self.kind == "regression" else {"labels": list(self.labels), "ids": self.ids}
        return {**super().record(), **classes}


register_task(Classify())

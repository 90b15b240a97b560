"""GLUE (Wang et al. 2019, arXiv 1804.07461): eight sentence and sentence-pair tasks.

Local layout, as GLUE's ``download_glue_data.py`` writes it: ``<data>/glue/<TASK>/{train,dev}.tsv``
(``<data>/<TASK>/`` works too); MNLI has ``dev_matched.tsv`` and ``dev_mismatched.tsv``. The TSVs
are read with quoting off, since MRPC, STS-B and RTE sentences hold bare ``"`` characters.
Scores: CoLA Matthews correlation; STS-B Pearson and Spearman; MRPC and QQP F1 and accuracy;
the others accuracy (MNLI on the matched and mismatched dev sets).
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from peftlab.tasks import metrics
from peftlab.tasks.base import Example, Task, TaskError, register_task

Column = str | int  # a header name, or a position in a file without a header


@dataclass(frozen=True)
class GlueSpec:
    name: str
    folder: str
    text: Column
    label: Column
    text_pair: Column | None = None
    label_names: tuple[str, ...] = ()  # string labels in class-index order; empty: the file holds numbers
    header: bool = True
    fields: int | None = None  # the columns of a file without a header (with one: the header's)
    hub_columns: tuple[str, ...] = ("sentence",)


class GlueTask(Task):
    description = "GLUE"

    def __init__(self, spec: GlueSpec, kind: str, num_labels: int, main_metric: str,
                 eval_splits: tuple[str, ...] = ("dev",)) -> None:
        self.spec = spec
        self.name = spec.name
        self.kind = kind
        self.num_labels = num_labels
        self.main_metric = main_metric
        self.eval_splits = eval_splits
        main_score = (main_metric,) if main_metric in ("matthews_correlation", "f1") else ()
        self.fractions = ("pearson", "spearman") if kind == "regression" else ("accuracy", *main_score)

    def folder(self, root: Path) -> Path:
        nested = root / "glue" / self.spec.folder
        return nested if nested.is_dir() or not (root / self.spec.folder).is_dir() else root / self.spec.folder

    def local_files(self, root: Path, split: str) -> list[Path]:
        return [self.folder(root) / f"{split}.tsv"]

    def read(self, root: Path, split: str) -> list[Example]:
        path = self.local_files(root, split)[0]
        csv.field_size_limit(sys.maxsize)
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
        header = rows.pop(0) if self.spec.header else []
        position = {name: index for index, name in enumerate(header)}

        def column(key: Column) -> int:
            if isinstance(key, int):
                return key
            if key not in position:
                raise TaskError(f"{path}: no column {key!r} in the header {header}; is this the GLUE {self.name} file?")
            return position[key]

        text, label = column(self.spec.text), column(self.spec.label)
        pair = column(self.spec.text_pair) if self.spec.text_pair is not None else None
        expected = len(header) if header else self.spec.fields
        needed = max(c for c in (text, label, pair) if c is not None) + 1
        examples = []
        for line, row in enumerate(rows, start=2 if header else 1):
            if len(row) < needed or (expected is not None and len(row) != expected):
                raise TaskError(f"{path} line {line}: {len(row)} fields, expected {expected or needed} (tab-separated: "
                                f"a tab inside a sentence, or a row cut short?); fix or remove that line")
            examples.append(Example(text=row[text], text_pair=row[pair] if pair is not None else None,
                                    label=self._label(row[label], path, line)))
        return examples

    def _label(self, value: str, path: Path, line: int) -> int | float:
        """The row's label, checked: a class of this task (name or number), or a finite score."""
        where = f"{path} line {line}: label {value!r}"
        if self.kind == "regression":
            try:
                score = float(value)
            except ValueError:
                score = math.nan
            if not math.isfinite(score):
                raise TaskError(f"{where} is not a finite number, as {self.name} scores are; fix or remove that line")
            return score
        if self.spec.label_names:
            if value not in self.spec.label_names:
                raise TaskError(f"{where} is not one of {self.spec.label_names}; fix or remove that line")
            return self.spec.label_names.index(value)
        classes = range(self.num_labels)
        if not value.strip().isdigit() or int(value) not in classes:
            raise TaskError(f"{where} is not a class of {self.name} (the numbers {classes.start} to "
                            f"{classes.stop - 1}); fix or remove that line")
        return int(value)

    def read_hub(self, split: str) -> list[Example]:
        import datasets

        hub_split = {"train": "train", "dev": "validation"}.get(split, split.replace("dev", "validation"))
        table = datasets.load_dataset("nyu-mll/glue", self.name, split=hub_split)
        first, *second = self.spec.hub_columns
        return [Example(text=row[first], text_pair=row[second[0]] if second else None,
                        label=float(row["label"]) if self.kind == "regression" else int(row["label"]))
                for row in table]

    def metrics(self, predictions: Sequence, examples: Sequence[Example]) -> dict[str, float]:
        labels = [example.label for example in examples]
        if self.kind == "regression":
            return metrics.pearson_spearman([float(p) for p in predictions], labels)
        scores = {"accuracy": metrics.accuracy(predictions, labels)}
        if "matthews_correlation" in self.fractions:
            scores["matthews_correlation"] = metrics.matthews(predictions, labels)
        if "f1" in self.fractions:
            scores["f1"] = metrics.binary_f1(predictions, labels)
        return scores


NLI = ("entailment", "not_entailment")

register_task(GlueTask(GlueSpec("cola", "CoLA", text=3, label=1, header=False, fields=4), "classification", 2,
                       "matthews_correlation"))
register_task(GlueTask(GlueSpec("sst2", "SST-2", text="sentence", label="label"), "classification", 2, "accuracy"))
register_task(GlueTask(GlueSpec("mrpc", "MRPC", text="#1 String", text_pair="#2 String", label="Quality",
                                hub_columns=("sentence1", "sentence2")), "classification", 2, "f1"))
register_task(GlueTask(GlueSpec("stsb", "STS-B", text="sentence1", text_pair="sentence2", label="score",
                                hub_columns=("sentence1", "sentence2")), "regression", 1, "pearson"))
register_task(GlueTask(GlueSpec("rte", "RTE", text="sentence1", text_pair="sentence2", label="label",
                                label_names=NLI, hub_columns=("sentence1", "sentence2")),
                       "classification", 2, "accuracy"))
register_task(GlueTask(GlueSpec("qnli", "QNLI", text="question", text_pair="sentence", label="label",
                                label_names=NLI, hub_columns=("question", "sentence")),
                       "classification", 2, "accuracy"))
register_task(GlueTask(GlueSpec("mnli", "MNLI", text="sentence1", text_pair="sentence2", label="gold_label",
                                label_names=("entailment", "neutral", "contradiction"),
                                hub_columns=("premise", "hypothesis")),
                       "classification", 3, "matched_accuracy", eval_splits=("dev_matched", "dev_mismatched")))
register_task(GlueTask(GlueSpec("qqp", "QQP", text="question1", text_pair="question2", label="is_duplicate",
                                hub_columns=("question1", "question2")), "classification", 2, "f1"))

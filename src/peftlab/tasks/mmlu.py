"""MMLU (Hendrycks et al. 2021, arXiv 2009.03300): 57 subjects of four-option questions.

Local layout: ``<data>/mmlu/{dev,val,test}/<subject>_<split>.csv`` (no header; question, A, B, C, D,
answer letter). ``mmlu`` asks zero-shot, ``mmlu-5shot`` puts the subject's five ``dev`` questions
first (a prompt longer than the model takes drops them whole, the last first, as the benchmark's
own script does). The model answers with the option letter it finds most likely right after ``Answer:``
(compared over the four letters only), as in the benchmark's own evaluation. Scores: accuracy over
all questions, the mean of the per-subject accuracies, and each subject's accuracy.
MMLU has no training split: fine-tuning on it uses the ``val`` questions; ``test`` is scored.

``mmlu-subset`` and ``mmlu-subset-5shot`` score a fixed stratified subset: from every subject, the same
``SUBSET_PER_SUBJECT`` (25) questions (all of a subject's, where it has fewer), 1,425 of the 14,042 test
questions. They are drawn with a seed made from the subject's name alone (``SUBSET_SEED``), so every run,
seed and method scores the same questions, and kept in file order; the 0-shot and 5-shot subsets hold the
same questions. The scores are those of the full test set's, over the subset.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from peftlab.tasks import metrics
from peftlab.tasks.base import Example, Task, TaskError, register_task

LETTERS = ("A", "B", "C", "D")
SUBSET_PER_SUBJECT = 25
SUBSET_SEED = "mmlu-subset"  # with the subject's name: one draw per subject, whatever the run


def format_subject(subject: str) -> str:
    return subject.replace("_", " ")


def format_question(row: Sequence[str], with_answer: bool) -> str:
    text = row[0] + "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, row[1:5], strict=True))
    return text + "\nAnswer:" + (f" {row[5]}\n\n" if with_answer else "")


class Mmlu(Task):
    kind = "multiple_choice"
    num_labels = len(LETTERS)
    main_metric = "accuracy"
    fractions = ("accuracy", "subject_average")  # and each subject/<name> accuracy, which no table shows
    train_split = "val"
    eval_splits = ("test",)
    description = "MMLU"

    def __init__(self, name: str, shots: int, per_subject: int | None = None) -> None:
        self.name = name
        self.shots = shots
        self.per_subject = per_subject  # None: every question; else the fixed subset (module docstring)
        if per_subject is not None:
            self.description = f"MMLU (a fixed {per_subject} questions per subject)"

    def local_files(self, root: Path, split: str) -> list[Path]:
        folders = [root / "mmlu" / split]
        return folders + ([root / "mmlu" / "dev"] if self.shots else [])

    def read(self, root: Path, split: str) -> list[Example]:
        examples = []
        for subject, rows in self.subject_rows(root, split).items():
            shots = _rows(root / "mmlu" / "dev" / f"{subject}_dev.csv")[: self.shots] if self.shots else []
            examples.extend(self._example(subject, row, shots) for row in rows)
        return examples

    def subject_rows(self, root: Path, split: str) -> dict[str, list[list[str]]]:
        """Each subject's rows this task scores from ``<root>/mmlu/<split>`` (question, A-D, answer letter), in
        file order: the questions the lm-evaluation-harness tasks ``mmlu_local*`` read too (train.harness)."""
        folder = root / "mmlu" / split
        files = sorted(folder.glob(f"*_{split}.csv"))
        if not files:
            raise TaskError(f"{folder} holds no <subject>_{split}.csv files")
        return {(subject := path.name.removesuffix(f"_{split}.csv")): self._chosen(subject, _rows(path)) for path in files}

    def read_hub(self, split: str) -> list[Example]:
        import datasets

        def rows(hub_split: str) -> list[tuple[str, list[str]]]:
            table = datasets.load_dataset("cais/mmlu", "all", split=hub_split)
            return [(r["subject"], [r["question"], *r["choices"], LETTERS[r["answer"]]]) for r in table]

        dev: dict[str, list[list[str]]] = defaultdict(list)
        for subject, row in rows("dev") if self.shots else []:
            dev[subject].append(row)
        hub_split = {"val": "validation"}.get(split, split)
        by_subject: dict[str, list[list[str]]] = defaultdict(list)
        for subject, row in rows(hub_split):
            by_subject[subject].append(row)
        return [self._example(subject, row, dev[subject][: self.shots])
                for subject in sorted(by_subject) for row in self._chosen(subject, by_subject[subject])]

    def _chosen(self, subject: str, rows: list[list[str]]) -> list[list[str]]:
        """The subject's questions this task scores: all, or the fixed subset, in file order."""
        if self.per_subject is None or len(rows) <= self.per_subject:
            return rows
        draw = random.Random(f"{SUBSET_SEED}/{subject}")  # str seeds are hashed by SHA-512: stable across runs
        return [rows[i] for i in sorted(draw.sample(range(len(rows)), self.per_subject))]

    def _example(self, subject: str, row: list[str], shots: list[list[str]]) -> Example:
        header = f"The following are multiple choice questions (with answers) about {format_subject(subject)}.\n\n"
        examples = tuple(format_question(shot, True) for shot in shots)
        prompt = header + "".join(examples) + format_question(row, False)
        return Example(text=prompt, label=LETTERS.index(row[5]), target=row[5], group=subject, shots=examples)

    def metrics(self, predictions: Sequence[int], examples: Sequence[Example]) -> dict[str, float]:
        by_subject: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for prediction, example in zip(predictions, examples, strict=True):
            by_subject[example.group][0].append(prediction)
            by_subject[example.group][1].append(example.label)
        per_subject = {f"subject/{s}": metrics.accuracy(p, l) for s, (p, l) in sorted(by_subject.items())}
        return {
            "accuracy": metrics.accuracy(predictions, [example.label for example in examples]),
            "subject_average": sum(per_subject.values()) / len(per_subject),
            **per_subject,
        }


def _rows(path: Path) -> list[list[str]]:
    """A subject's rows (question, four options, answer letter), each checked with its file and line."""
    rows = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if len(row) != 6:
                raise TaskError(f"{where}: {len(row)} fields, expected 6 (question, four options, answer letter "
                                f"A-D; a field with a comma needs quotes); fix or remove that line")
            if row[5] not in LETTERS:
                raise TaskError(f"{where}: the answer {row[5]!r} is not one of {', '.join(LETTERS)}; fix or remove "
                                f"that line")
            rows.append(row)
    return rows


register_task(Mmlu("mmlu", shots=0))
register_task(Mmlu("mmlu-5shot", shots=5))
register_task(Mmlu("mmlu-subset", shots=0, per_subject=SUBSET_PER_SUBJECT))
register_task(Mmlu("mmlu-subset-5shot", shots=5, per_subject=SUBSET_PER_SUBJECT))

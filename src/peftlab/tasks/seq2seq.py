"""``seq2seq``: the user's source and target texts, from a file (:mod:`peftlab.tasks.files`).

    peftlab train --task seq2seq --train pairs.jsonl --source-column en --target-column de

The model writes the target from the source (T5 reads one and writes the other; a decoder reads
``source + "\\n"`` and continues). Scored as WMT16 is (:mod:`peftlab.tasks.wmt16`): corpus BLEU of the
generated text against the targets (sacreBLEU 13a), with chrF beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from peftlab.tasks import metrics
from peftlab.tasks._table import Table
from peftlab.tasks.base import Example, register_task
from peftlab.tasks.files import FileTask


class Seq2seq(FileTask):
    name = "seq2seq"
    kind = "generation"
    main_metric = "bleu"
    separator = "\n"
    description = "your own source/target pairs"
    columns: ClassVar[dict[str, str | None]] = {"source_column": "source", "target_column": "target"}

    def example(self, table: Table, index: int, row: dict[str, Any]) -> Example:
        return Example(text=self.text(table, index, row, self.column(table, "source_column")),
                       target=self.text(table, index, row, self.column(table, "target_column")))

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        targets = [example.target for example in examples]
        return {"bleu": metrics.sacrebleu_score(predictions, targets), "chrf": metrics.chrf_score(predictions, targets)}


register_task(Seq2seq())

"""General English language modelling: a forgetting metric for instruction tuning (as HF peft's method
comparison reports beside its task score).

Text: the English side of WMT16 newstest2016 (news, unseen by instruction data), the first ``LINES``
(500) lines of ``<data>/wmt16_en_ro/newstest2016.en``, each line one sequence (the tokenizer's start
token where it adds one, the line, the end-of-sequence token). The score is the mean cross-entropy per
token over every line's tokens (``loss``, nats) and its ``perplexity``; lower is better. Used with
``--eval-task english-lm`` the run scores it before its first step as well as after its last
(``scores_before_training`` in ``metrics.json``): the rise is what tuning cost the model's general English.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from peftlab.tasks import metrics
from peftlab.tasks.base import Example, Task, TaskError, register_task

LINES = 500
SPLIT = "newstest2016"


class EnglishLm(Task):
    name = "english-lm"
    kind = "language_modeling"
    main_metric = "loss"
    greater_is_better = False
    scored_before_training = True
    train_split = SPLIT  # there is no other: a run trains on another task and scores this one
    eval_splits = (SPLIT,)
    separator = ""
    description = "WMT16 newstest2016 English"

    def local_files(self, root: Path, split: str) -> list[Path]:
        return [root / "wmt16_en_ro" / f"{split}.en"]

    def read(self, root: Path, split: str) -> list[Example]:
        lines = self.local_files(root, split)[0].read_text(encoding="utf-8").splitlines()
        return self._examples(lines, str(self.local_files(root, split)[0]))

    def read_hub(self, split: str) -> list[Example]:
        import datasets

        hub_split = {"newsdev2016": "validation", "newstest2016": "test"}.get(split, split)
        table = datasets.load_dataset("wmt/wmt16", "ro-en", split=hub_split)
        return self._examples([row["translation"]["en"] for row in table], "wmt/wmt16")

    def _examples(self, lines: list[str], source: str) -> list[Example]:
        chosen = [line for line in lines[:LINES] if line.strip()]
        if not chosen:
            raise TaskError(f"{source} holds no text lines")
        return [Example(text="", target=line) for line in chosen]

    def metrics(self, predictions: Sequence[tuple[float, int]], examples: Sequence[Example]) -> dict[str, float]:
        """``predictions``: per line, the summed loss over its tokens and their count."""
        return metrics.token_loss(predictions)


register_task(EnglishLm())

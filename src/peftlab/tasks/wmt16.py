"""WMT16 English->Romanian news translation (Bojar et al. 2016), scored by sacreBLEU.

Local layout: ``<data>/wmt16_en_ro/<split>.{en,ro}``, one sentence per line, line i of ``.en``
paired with line i of ``.ro``. Splits: ``train`` (Europarl + SETimes, when present),
``newsdev2016`` and ``newstest2016`` (the scored test set). Where no ``train`` files exist, as in
the shared data of this project, train on the dev set with ``--train-split newsdev2016``.
Scoring: corpus BLEU of the detokenized model output against the raw references (sacreBLEU 13a).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from peftlab.tasks import metrics
from peftlab.tasks.base import Example, Task, TaskError, register_task

PREFIX = "translate English to Romanian: "


class Wmt16EnRo(Task):
    name = "wmt16-en-ro"
    kind = "generation"
    main_metric = "bleu"
    train_split = "train"
    eval_splits = ("newstest2016",)
    separator = "\n"
    description = "WMT16 en-ro"

    def local_files(self, root: Path, split: str) -> list[Path]:
        folder = root / "wmt16_en_ro"
        return [folder / f"{split}.en", folder / f"{split}.ro"]

    def read(self, root: Path, split: str) -> list[Example]:
        english, romanian = (path.read_text(encoding="utf-8").splitlines() for path in self.local_files(root, split))
        if len(english) != len(romanian):
            raise TaskError(f"{root / 'wmt16_en_ro'}: {split}.en has {len(english)} lines but {split}.ro has "
                            f"{len(romanian)}; the files must be line-aligned")
        return [Example(text=PREFIX + en, target=ro) for en, ro in zip(english, romanian, strict=True)]

    def read_hub(self, split: str) -> list[Example]:
        import datasets

        hub_split = {"newsdev2016": "validation", "newstest2016": "test"}.get(split, split)
        table = datasets.load_dataset("wmt/wmt16", "ro-en", split=hub_split)
        return [Example(text=PREFIX + row["translation"]["en"], target=row["translation"]["ro"]) for row in table]

    def metrics(self, predictions: Sequence[str], examples: Sequence[Example]) -> dict[str, float]:
        return {"bleu": metrics.sacrebleu_score(predictions, [example.target for example in examples])}


register_task(Wmt16EnRo())

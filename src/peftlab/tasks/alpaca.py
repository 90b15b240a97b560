"""Alpaca instruction tuning (Taori et al. 2023): 52K instruction/response pairs in the Alpaca prompt.

Local layout: ``<data>/alpaca/alpaca_data.json``, a JSON list of ``{instruction, input, output}``.
The file has one split; every 50th item (index % 50 == 0) is held out as ``eval``, the rest is
``train``. Only the response tokens carry the loss. The score is the mean loss per response token
on the held-out items (and its perplexity); the survey scores instruction tuning on MMLU, which a
run adds with ``--eval-task mmlu``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from peftlab.tasks import metrics
from peftlab.tasks.base import Example, Task, TaskError, register_task

HELD_OUT_EVERY = 50

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    template = PROMPT_WITH_INPUT if input else PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=input)


class Alpaca(Task):
    name = "alpaca"
    kind = "language_modeling"
    main_metric = "loss"
    greater_is_better = False
    eval_splits = ("eval",)
    separator = ""
    description = "Alpaca"

    def local_files(self, root: Path, split: str) -> list[Path]:
        return [root / "alpaca" / "alpaca_data.json"]

    def read(self, root: Path, split: str) -> list[Example]:
        path = self.local_files(root, split)[0]
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise TaskError(f"{path} is not valid JSON ({error})") from None
        return self._split(items, split, str(path))

    def read_hub(self, split: str) -> list[Example]:
        import datasets

        return self._split(list(datasets.load_dataset("tatsu-lab/alpaca", split="train")), split, "tatsu-lab/alpaca")

    def _split(self, items: list, split: str, source: str) -> list[Example]:
        if split not in ("train", "eval"):
            raise TaskError(f"alpaca has the splits 'train' and 'eval' (every {HELD_OUT_EVERY}th item), not {split!r}")
        if not isinstance(items, list):
            raise TaskError(f"{source} must be a JSON list of objects with 'instruction', 'input', 'output' "
                            f"(it holds a {type(items).__name__})")
        for index, item in enumerate(items):
            problem = _item_problem(item)
            if problem is not None:
                raise TaskError(f"{source} item {index} (counting from 0): {problem}; fix or remove that item")
        held_out = split == "eval"
        return [Example(text=alpaca_prompt(item["instruction"], item.get("input", "")), target=item["output"])
                for index, item in enumerate(items) if (index % HELD_OUT_EVERY == 0) == held_out]

    def metrics(self, predictions: Sequence[tuple[float, int]], examples: Sequence[Example]) -> dict[str, float]:
        """``predictions``: per example, the summed loss over its response tokens and their count."""
        return metrics.token_loss(predictions)


register_task(Alpaca())


def _item_problem(item: object) -> str | None:
    """What is wrong with one Alpaca item, or None: an object with text 'instruction' and 'output' (and 'input')."""
    if not isinstance(item, dict):
        return f"{_short(item)} is not an object with 'instruction', 'input', 'output'"
    for key in ("instruction", "output"):
        if key not in item:
            return f"no {key!r} (it has {', '.join(map(repr, item)) or 'no keys'})"
    for key in ("instruction", "input", "output"):
        if key in item and not isinstance(item[key], str):
            return f"{key!r} is {_short(item[key])}, not text"
    return None


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."

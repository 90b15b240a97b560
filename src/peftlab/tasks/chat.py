"""``chat``: the user's conversations or instructions, from a file (:mod:`peftlab.tasks.files`).

    peftlab train --task chat --train chats.jsonl --model smollm2-135m

Rows are either a ``messages`` column, each a list of ``{role, content}``, rendered with the model
tokenizer's chat template, the loss on the assistant turns only (every other token's label is the ignore
index); or ``instruction``, ``output`` (and optionally ``input``) columns in the Alpaca prompt
(:mod:`peftlab.tasks.alpaca`), the loss on the output only. A tokenizer without a chat template is refused
for ``messages`` rows, before training, with the fix (no fallback template: the model would learn a format it
is not served with). Scored by the loss per trained token on the eval rows, and its perplexity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from peftlab.core.errors import few
from peftlab.tasks import metrics
from peftlab.tasks._table import Table, is_empty
from peftlab.tasks.alpaca import alpaca_prompt
from peftlab.tasks.base import Example, TaskError, register_task
from peftlab.tasks.files import FileTask

ASSISTANT = "assistant"


class Chat(FileTask):
    name = "chat"
    kind = "language_modeling"
    main_metric = "loss"
    greater_is_better = False
    separator = ""
    description = "your own conversations or instructions"

    def prepare(self, tables: list[Table]) -> None:
        for table in tables:
            if "messages" not in table.columns and not {"instruction", "output"} <= set(table.columns):
                raise TaskError(f"{table.source}: --task chat needs a 'messages' column (each a list of {{role, "
                                f"content}}) or 'instruction' and 'output' columns (and 'input', optional); its "
                                f"columns: {few(table.columns, 20)}")

    def example(self, table: Table, index: int, row: dict[str, Any]) -> Example:
        if "messages" not in table.columns:
            given = "" if is_empty(row.get("input")) else self.text(table, index, row, "input")
            return Example(text=alpaca_prompt(self.text(table, index, row, "instruction"), given),
                           target=self.text(table, index, row, "output"))
        messages = tuple(self.message(table, index, number, item) for number, item in
                         enumerate(self.conversation(table, index, row["messages"])))
        if not any(role == ASSISTANT for role, _ in messages):
            raise TaskError(f"{table.where(index)}: no {ASSISTANT!r} message, so nothing to learn from; add the "
                            f"answer or remove that row")
        return Example(text="\n".join(content for _, content in messages), messages=messages)

    def conversation(self, table: Table, index: int, value: Any) -> list:
        if not isinstance(value, list) or not value:
            raise TaskError(f"{table.where(index)}: 'messages' is {json.dumps(value)[:40]}, not a list of "
                            f"{{role, content}}; fix or remove that row")
        return value

    def message(self, table: Table, index: int, number: int, item: Any) -> tuple[str, str]:
        where = f"{table.where(index)}: message {number + 1}"
        if not isinstance(item, dict) or is_empty(item.get("role")) or not isinstance(item.get("role"), str):
            raise TaskError(f"{where} has no 'role' (system, user, assistant); fix or remove that row")
        if not isinstance(item.get("content"), str):
            raise TaskError(f"{where} ({item['role']}) has no text 'content'; fix or remove that row")
        return item["role"], item["content"]

    def metrics(self, predictions: Sequence[tuple[float, int]], examples: Sequence[Example]) -> dict[str, float]:
        """``predictions``: per example, the summed loss over its trained tokens and their count."""
        return metrics.token_loss(predictions)


register_task(Chat())

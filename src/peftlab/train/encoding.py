"""Examples to token ids for each kind of model, and padding into batches.

Decoders read ``prompt + separator + target + eos`` as one sequence with the loss on the target
only (the prompt's labels are -100); T5 reads the prompt and writes the target; encoders read the
text (pair) and predict the label with their head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from peftlab.core.errors import UserError
from peftlab.tasks import Example, Task

IGNORE = -100
Features = dict[str, list[int] | int | float]


def encode(task: Task, examples: Sequence[Example], tokenizer: Any, kind: str, max_length: int) -> list[Features]:
    """Training features: model inputs plus ``labels``."""
    if task.kind in ("classification", "regression"):
        return [_encode_pair(e, tokenizer, max_length) for e in examples]
    if any(e.messages for e in examples):
        check_chat_template(tokenizer, kind)
    if kind == "encoder-decoder":
        return [_encode_seq2seq(e, tokenizer, max_length) for e in examples]
    return [_encode_chat(e, tokenizer, max_length) if e.messages else
            _encode_causal(e, task.separator, tokenizer, max_length) for e in examples]


@dataclass
class PromptCuts:
    """What fitting prompts into a length cost: prompts that lost text, few-shot examples dropped."""

    prompts: int = 0
    shots: int = 0

    def add(self, other: PromptCuts) -> None:
        self.prompts += other.prompts
        self.shots += other.shots

    def as_metrics(self) -> dict[str, int]:
        return {"prompts_shortened": self.prompts, "shots_dropped": self.shots}


def encode_prompts(examples: Sequence[Example], tokenizer: Any, max_length: int) -> tuple[list[Features], PromptCuts]:
    """Prompts alone (for generation and option-letter scoring) in at most ``max_length`` tokens.

    An over-long prompt first drops its few-shot examples whole, the last first; if it is still too
    long, it is cut from the left, so it always ends where the answer starts.
    """
    features, cuts = [], PromptCuts()
    for example in examples:
        ids, keep = _prompt_ids(example, tokenizer, max_length)
        cut = len(ids) > max_length
        ids = ids[-max_length:]
        if cut or keep < len(example.shots):
            cuts.prompts += 1
            cuts.shots += len(example.shots) - keep
        features.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return features, cuts


def _prompt_ids(example: Example, tokenizer: Any, budget: int) -> tuple[list[int], int]:
    """The prompt's ids with as many of its few-shot examples as fit in ``budget`` tokens (dropped whole,
    the last first), and how many were kept; the result may still be longer than ``budget``."""
    keep = len(example.shots)
    ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
    while len(ids) > budget and keep > 0:
        keep -= 1
        ids = tokenizer(example.with_shots(keep), add_special_tokens=True)["input_ids"]
    return ids, keep


def _encode_pair(example: Example, tokenizer: Any, max_length: int) -> Features:
    encoded = tokenizer(example.text, example.text_pair, truncation=True, max_length=max_length)
    features: Features = {key: list(value) for key, value in encoded.items()}
    features["labels"] = example.label
    return features


def _encode_seq2seq(example: Example, tokenizer: Any, max_length: int) -> Features:
    """An over-long few-shot source drops whole examples first, then loses its end (the tokenizer's cut)."""
    text = example.with_shots(_prompt_ids(example, tokenizer, max_length)[1]) if example.shots else example.text
    ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    labels = tokenizer(text_target=example.target, truncation=True, max_length=max_length)["input_ids"]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def _encode_causal(example: Example, separator: str, tokenizer: Any, max_length: int) -> Features:
    """Over-long pairs keep at least half the budget for the target; the prompt drops whole few-shot
    examples first, then is cut from the left, so it still ends where the answer starts."""
    target = tokenizer(separator + example.target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt, _ = _prompt_ids(example, tokenizer, max(max_length - len(target), max_length - max_length // 2))
    if len(prompt) + len(target) > max_length:
        target = target[: max(max_length - len(prompt), max_length // 2)]
        prompt = prompt[len(prompt) - (max_length - len(target)):]
    ids = prompt + target
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [IGNORE] * len(prompt) + target}


def check_chat_template(tokenizer: Any, kind: str) -> None:
    """Conversations (``messages`` rows) need a decoder whose tokenizer has a chat template."""
    if kind != "decoder":
        raise UserError("rows with 'messages' train a decoder-only model (a chat model) on its chat template; "
                        f"this is an {kind} model: use a decoder, or write the rows as instruction/input/output")
    if not getattr(tokenizer, "chat_template", None):
        raise UserError("rows with 'messages' are rendered with the tokenizer's chat template, and this model's "
                        "tokenizer has none: use a chat (instruct) model, add a chat_template to its tokenizer "
                        "(tokenizer_config.json or chat_template.jinja), or write the rows as instruction/input/"
                        "output columns (the Alpaca prompt, no template needed)")


def _encode_chat(example: Example, tokenizer: Any, max_length: int) -> Features:
    """A conversation in the chat template; the labels are the assistant turns' tokens (their end-of-turn
    marks included), every other token ignored. Each assistant turn's text is what the template adds between
    the conversation before it with the generation prompt and the conversation through it. Over-long
    conversations lose their end."""
    messages = [{"role": role, "content": content} for role, content in example.messages]

    def render(count: int, prompt: bool = False) -> str:
        if not count:
            return ""
        return tokenizer.apply_chat_template(messages[:count], tokenize=False, add_generation_prompt=prompt)

    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(turn, prompt=True), render(turn + 1)
        if not (before.startswith(done) and through.startswith(before)):
            raise UserError("the chat template does not render a conversation as the one before it plus its last "
                            "turn, so the assistant turns cannot be told apart: use a template that does")
        for text, trained in ((before[len(done):], False), (through[len(before):], True)):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
        done = through
    rest = render(len(messages))[len(done):]
    if rest:  # turns after the last answer: read, not trained
        piece = tokenizer(rest, add_special_tokens=False)["input_ids"]
        ids, labels = ids + piece, labels + [IGNORE] * len(piece)
    ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def collate(features: Sequence[Features], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Pad every list field to the longest in the batch (``labels`` with -100); scalars become a vector."""
    batch: dict[str, torch.Tensor] = {}
    for key in features[0]:
        values = [f[key] for f in features]
        if not isinstance(values[0], list):
            dtype = torch.float32 if isinstance(values[0], float) else torch.long
            batch[key] = torch.tensor(values, dtype=dtype)
            continue
        fill = IGNORE if key == "labels" else pad_id if key == "input_ids" else 0
        width = max(len(v) for v in values)
        rows = [[fill] * (width - len(v)) + v if left else v + [fill] * (width - len(v)) for v in values]
        batch[key] = torch.tensor(rows, dtype=torch.long)
    return batch


def loss_items(feature: Features, kind: str) -> int:
    """How many terms one example adds to the mean its loss takes: 1 for a label per example; the labelled
    tokens of a sequence, less the first for a decoder (its labels are shifted by one)."""
    labels = feature["labels"]
    if not isinstance(labels, list):
        return 1
    return sum(label != IGNORE for label in (labels[1:] if kind == "decoder" else labels))


def sequence_length(feature: Features, kind: str) -> int:
    """The positions an example takes in a padded batch: its input, plus a seq2seq target's."""
    labels = feature["labels"]
    return len(feature["input_ids"]) + (len(labels) if kind == "encoder-decoder" and isinstance(labels, list) else 0)


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens a step processes: the non-pad inputs plus, for seq2seq, the target tokens."""
    tokens = int(batch["attention_mask"].sum())
    labels = batch.get("labels")
    if labels is not None and labels.dim() == 2 and labels.shape != batch["input_ids"].shape:
        tokens += int((labels != IGNORE).sum())
    return tokens

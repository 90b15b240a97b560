"""Score a model on a task's examples, each task kind the way its benchmark does."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.tasks import Example, Task
from peftlab.tasks.mmlu import LETTERS
from peftlab.train.encoding import IGNORE, PromptCuts, collate, encode, encode_prompts
from peftlab.train.models import input_positions, last_position_logits
from peftlab.train.shared_prefix import letter_logprobs, reuses_prefix_cache

UNSTATED_LENGTH = 10**9  # transformers' model_max_length when a tokenizer states none is far above this


@torch.no_grad()
def evaluate(model: nn.Module, tokenizer: Any, kind: str, task: Task, examples: Sequence[Example], *,
             batch_size: int = 32, max_length: int = 128, num_beams: int = 1, max_new_tokens: int = 64,
             device: torch.device | None = None) -> dict[str, float]:
    """The task's official scores for ``model`` on ``examples`` (the model is put in eval mode and back)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    predict = {"classification": _classify, "regression": _regress, "generation": _generate,
               "multiple_choice": _choose, "language_modeling": _response_loss}[task.kind]
    predictions: list = []
    cuts = PromptCuts()
    if task.kind == "multiple_choice" and any(e.shots for e in examples) and reuses_prefix_cache(model, kind):
        # Few-shot prompts share each subject's examples: read them once per subject (train.shared_prefix).
        predictions = letter_logprobs(model, tokenizer, examples, letter_ids(tokenizer, kind),
                                      limit=prompt_limit(model, tokenizer, max_length), batch_size=batch_size,
                                      device=device, cuts=cuts).argmax(-1).tolist()
    else:
        predictions = [None] * len(examples)
        for positions in length_batches(examples, batch_size):
            chunk = [examples[position] for position in positions]
            found = predict(model, tokenizer, kind, task, chunk, device=device, max_length=max_length,
                            num_beams=num_beams, max_new_tokens=max_new_tokens, cuts=cuts)
            for position, prediction in zip(positions, found, strict=True):
                predictions[position] = prediction
    model.train(was_training)
    scores = task.metrics(predictions, examples)
    if task.kind == "multiple_choice":
        scores.update(cuts.as_metrics())
        if cuts.prompts:
            dropped = f"{cuts.shots} few-shot examples were dropped whole; " if cuts.shots else ""
            warnings.warn(f"{task.name}: {cuts.prompts} of {len(examples)} prompts were longer than the "
                          f"{prompt_limit(model, tokenizer, max_length)} tokens the model takes: {dropped}what "
                          f"still did not fit was cut from the start (scores: prompts_shortened, shots_dropped)",
                          stacklevel=3)  # past torch.no_grad's wrapper, to the caller
    return scores


def score_sets(model: nn.Module, tokenizer: Any, kind: str, sets: Sequence[Any], args: Any, max_length: int,
               device: torch.device) -> dict[str, float]:
    """The scores of a run's eval sets (``train.plan.EvalSet``), each named ``<prefix><split-qualified metric>``."""
    scores: dict[str, float] = {}
    for item in sets:
        result = evaluate(model, tokenizer, kind, item.task, item.examples, batch_size=args.eval_batch_size,
                          max_length=max_length, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                          device=device)
        scores.update({item.prefix + item.task.score_name(item.split, k): v for k, v in result.items()})
    return scores


def length_batches(examples: Sequence[Example], batch_size: int) -> list[list[int]]:
    """Positions of ``examples`` in batches of similar length, longest first (a batch pads to its longest
    example, so this wastes little on padding; a batch too big for memory fails at once, not at the end).
    Characters stand in for tokens: the order only has to be close."""
    def size(position: int) -> int:
        example = examples[position]
        return len(example.text) + len(example.text_pair or "") + len(example.target or "")

    order = sorted(range(len(examples)), key=size, reverse=True)
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def prompt_limit(model: nn.Module, tokenizer: Any, max_length: int) -> int:
    """The prompt tokens a model can read: the positions it has left for its input, else the tokenizer's
    ``model_max_length`` when it states one, else ``max_length`` (which only bounds training sequences)."""
    limit = input_positions(model) or getattr(tokenizer, "model_max_length", None)
    return limit if limit and limit < UNSTATED_LENGTH else max_length


def _inputs(features: list, tokenizer: Any, device: torch.device, left: bool = False) -> dict[str, torch.Tensor]:
    batch = collate(features, tokenizer.pad_token_id, left=left)
    batch.pop("labels", None)
    return {key: value.to(device) for key, value in batch.items()}


def _classify(model, tokenizer, kind, task, examples, *, device, max_length, **_) -> list[int]:
    features = encode(task, examples, tokenizer, kind, max_length)
    return model(**_inputs(features, tokenizer, device)).logits.argmax(-1).tolist()


def _regress(model, tokenizer, kind, task, examples, *, device, max_length, **_) -> list[float]:
    features = encode(task, examples, tokenizer, kind, max_length)
    return model(**_inputs(features, tokenizer, device)).logits[:, 0].float().tolist()


def _generate(model, tokenizer, kind, task, examples, *, device, max_length, num_beams, max_new_tokens, **_) -> list[str]:
    decoder = kind == "decoder"
    inputs = _inputs(encode_prompts(examples, tokenizer, max_length)[0], tokenizer, device, left=decoder)
    output = model.generate(**inputs, num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    if decoder:
        output = output[:, inputs["input_ids"].shape[1]:]
    texts = tokenizer.batch_decode(output, skip_special_tokens=True)
    # A decoder may run on past its answer: the task's answer ends where its separator would start a new one.
    return [text.strip().split("\n")[0].strip() if decoder else text.strip() for text in texts]


def letter_ids(tokenizer: Any, kind: str) -> list[int]:
    """The token each option letter starts with when it follows ``Answer:``."""
    prefix = "" if kind == "encoder-decoder" else " "
    return [tokenizer(prefix + letter, add_special_tokens=False)["input_ids"][-1] for letter in LETTERS]


def _choose(model, tokenizer, kind, task, examples, *, device, max_length, cuts, **_) -> list[int]:
    """The likeliest option letter after each whole prompt (as long as the model takes, not ``max_length``)."""
    limit = prompt_limit(model, tokenizer, max_length)
    return full_prompt_letter_logprobs(model, tokenizer, kind, examples, limit, device, cuts).argmax(-1).tolist()


def full_prompt_letter_logprobs(model: nn.Module, tokenizer: Any, kind: str, examples: Sequence[Example], limit: int,
                                device: torch.device, cuts: PromptCuts) -> torch.Tensor:
    """``(len(examples), 4)``: each option letter's log-probability after each whole prompt, read in one batch."""
    features, batch_cuts = encode_prompts(examples, tokenizer, limit)
    cuts.add(batch_cuts)
    inputs = _inputs(features, tokenizer, device, left=kind == "decoder")
    if kind == "encoder-decoder":
        start = torch.full((len(examples), 1), model.config.decoder_start_token_id, device=device)
        logits = model(**inputs, decoder_input_ids=start).logits[:, 0]
    else:  # left-padded: positions count from each prompt's first real token
        positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        logits = model(**inputs, position_ids=positions, **last_position_logits(model)).logits[:, -1]
    return F.log_softmax(logits.float(), dim=-1)[:, letter_ids(tokenizer, kind)]


def _response_loss(model, tokenizer, kind, task, examples, *, device, max_length, **_) -> list[tuple[float, int]]:
    """Per example: the summed cross-entropy over its target tokens, and how many there are."""
    batch = {k: v.to(device) for k, v in collate(encode(task, examples, tokenizer, kind, max_length),
                                                  tokenizer.pad_token_id).items()}
    labels = batch.pop("labels")
    if kind == "encoder-decoder":
        logits = model(**batch, labels=labels).logits
    else:
        logits, labels = model(**batch).logits[:, :-1], labels[:, 1:]
    losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    counts = (labels != IGNORE).sum(-1)
    return [(float(loss), int(count)) for loss, count in zip(losses.sum(-1), counts, strict=True)]

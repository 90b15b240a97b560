"""Few-shot option scoring that reads each shared prompt prefix once.

In MMLU 5-shot every question of a subject starts with the same header and five solved examples
(~500 tokens) before its own ~100. Scoring the full prompts reads that prefix once per question;
here it is read once per subject: one forward pass over the longest run of token ids that all the
subject's prompts begin with keeps its KV cache, and each batch of questions then reads only its own
tokens on top of that cache (expanded over the batch, without a copy). A decoder's state at a token
depends on the tokens before it alone, so the option-letter log-likelihoods equal those of the full
prompts (to float rounding).

The split is taken on token ids, not on text, so a tokenizer that merges across the boundary only
shortens the shared run. Each batch is padded on the left of the questions' own tokens; the mask
hides the padding and the positions continue from the prefix, as the full-prompt path's left padding
does.

Every registered method allows it: prompt tuning and prefix tuning (and the hybrids built on it) put their
virtual tokens in on the uncached pass and extend a cached pass's mask and positions, as generation needs,
so their scores match too (tested over every method on LLaMA and GPT-2). A method whose forward could not
continue from a cache declares ``MethodHooks(reuses_kv_cache=False)``; :func:`reuses_prefix_cache` then sends
its scoring down the full-prompt path, as it does for encoder-decoders.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from peftlab.core.method_hooks import reuses_kv_cache
from peftlab.tasks import Example
from peftlab.train.encoding import PromptCuts, encode_prompts
from peftlab.train.models import last_position_logits


def reuses_prefix_cache(model: nn.Module, kind: str) -> bool:
    """Whether a prompt prefix's KV cache can be reused under ``model``'s questions: decoders only, and
    not under a method that declares otherwise (see the module docstring)."""
    return kind == "decoder" and not getattr(model.config, "is_encoder_decoder", False) and reuses_kv_cache(model)


def shared_length(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading ids every sequence shares, leaving each at least one id of its own."""
    shortest = min(len(ids) for ids in sequences)
    first, length = sequences[0], 0
    while length < shortest - 1 and all(ids[length] == first[length] for ids in sequences):
        length += 1
    return length


@torch.no_grad()
def letter_logprobs(model: nn.Module, tokenizer: Any, examples: Sequence[Example], letters: Sequence[int], *,
                    limit: int, batch_size: int, device: torch.device, cuts: PromptCuts) -> torch.Tensor:
    """``(len(examples), len(letters))``: each option letter's log-probability right after each prompt
    (cut to ``limit`` tokens as :func:`encode_prompts` does), the shared prefix of each ``group`` read once."""
    features, prompt_cuts = encode_prompts(examples, tokenizer, limit)
    cuts.add(prompt_cuts)
    groups: dict[str | None, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        groups[example.group].append(index)
    scores = torch.empty(len(examples), len(letters))
    for indices in groups.values():
        ids = [features[i]["input_ids"] for i in indices]
        length = shared_length(ids)
        prefix = _prefix_cache(model, ids[0][:length], device)
        for start in range(0, len(indices), batch_size):
            chosen = indices[start:start + batch_size]
            logits = _continue(model, prefix, length, [features[i]["input_ids"][length:] for i in chosen],
                               tokenizer.pad_token_id, device)
            scores[chosen] = F.log_softmax(logits.float(), dim=-1)[:, list(letters)].cpu()
    return scores


def _prefix_cache(model: nn.Module, ids: list[int], device: torch.device) -> DynamicCache | None:
    """The KV cache of ``ids`` read once (batch 1); None for an empty prefix."""
    if not ids:
        return None
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True)
    return cache


def _expanded(model: nn.Module, cache: DynamicCache, batch: int) -> DynamicCache:
    """A fresh cache holding ``cache``'s keys and values as ``batch`` views (the forward appends by
    concatenation, so the shared tensors are never written)."""
    views = [(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1)) for layer in cache.layers]
    return DynamicCache(views, config=model.config)


def _continue(model: nn.Module, prefix: DynamicCache | None, length: int, suffixes: list[list[int]],
              pad_id: int, device: torch.device) -> torch.Tensor:
    """The last-position logits ``(B, vocab)`` of ``prefix + suffix`` for each suffix (left-padded)."""
    width = max(len(ids) for ids in suffixes)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in suffixes], device=device)
    own = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in suffixes], device=device)
    mask = torch.cat([own.new_ones(len(suffixes), length), own], dim=1)  # (B, L + S)
    positions = (length + own.cumsum(-1) - 1).clamp(min=length)  # (B, S): the prompt's own positions
    cache = _expanded(model, prefix, len(suffixes)) if prefix is not None else None
    output = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=cache is not None, **last_position_logits(model))
    return output.logits[:, -1]

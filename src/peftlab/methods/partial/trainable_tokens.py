"""Trainable tokens: train only chosen rows of the input embedding, e.g. the embeddings of special tokens added
to a tokenizer for a chat template (HF peft's ``TrainableTokens``; the rows-only update of sparse embedding
fine-tuning).

``e(t) = R[slot(t)]`` for a chosen token ``t`` and ``e(t) = E[t]`` otherwise, with ``E`` frozen and ``R``
(``k x d``, initialised to ``E``'s chosen rows) trained; a tied output head uses ``R`` for the same columns.
Partial: it selects part of a base weight. The rows live in the core's ``token_indices`` mechanism
(:mod:`peftlab.core.token_rows`), which every method takes (``peftlab.apply(model, "lora", token_indices=[...])``
is LoRA plus new tokens); this method is that mechanism on its own, so its ``inject`` adds nothing itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftlab.core.config import MethodConfig, require
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection


@dataclass(frozen=True, kw_only=True)
class TrainableTokensConfig(MethodConfig):
    method = "trainable_tokens"

    def validate(self) -> None:
        require(bool(self.token_indices), self, "token_indices",
                "give the ids of the tokens whose embedding rows train (e.g. tokenizer.convert_tokens_to_ids(new))")


def inject(model: nn.Module, config: TrainableTokensConfig) -> Injection:
    return Injection()  # apply_config wraps the embedding for config.token_indices, as for every method


register(MethodSpec(
    name="trainable_tokens",
    family="partial",
    config_class=TrainableTokensConfig,
    inject=inject,
    paper="HF peft's TrainableTokens (no paper): sparse update of chosen embedding rows, e.g. new special tokens",
    summary="Only chosen rows of the input embedding (and of a tied output head) train.",
    mergeable=True,
    shares_base=True,
))

"""The models the side-by-side benchmark runs and their batches: one shape per family and setting.

Every model is built from a config with a fixed seed (random weights: speed and memory do not depend
on the values). The methods each library puts on them are in ``method_entries.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    batch: int
    length: int
    target_length: int = 0  # decoder length of seq2seq models


@dataclass(frozen=True)
class Workload:
    """One model family at each benchmark setting. ``task`` is how its loss is computed."""

    name: str
    task: str  # "causal", "seq2seq" or "classify"
    build: Callable[[Shape], nn.Module]
    shapes: dict[str, Shape]
    dropout: bool = False  # trains with dropout (the configs' default 0.1): RoBERTa and T5, not LLaMA


def _llama(shape: Shape, tie: bool = False) -> nn.Module:
    config = LlamaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
                         num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                         num_key_value_heads=shape.kv_heads, max_position_embeddings=2048,
                         tie_word_embeddings=tie, rope_theta=100000.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def _smollm2(shape: Shape) -> nn.Module:
    return _llama(shape, tie=True)  # SmolLM2 ties its 49,152-token embedding and head


def _roberta(shape: Shape) -> nn.Module:
    config = RobertaConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                           num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                           max_position_embeddings=shape.length + 64, num_labels=2, pad_token_id=1)  # room for soft prompts
    return RobertaForSequenceClassification(config)


def _t5(shape: Shape) -> nn.Module:
    config = T5Config(vocab_size=shape.vocab, d_model=shape.hidden, d_kv=shape.hidden // shape.heads,
                      d_ff=shape.intermediate, num_layers=shape.layers, num_decoder_layers=shape.layers,
                      num_heads=shape.heads, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(config)


# quick: seconds per measurement, for a smoke run; moderate: RESULTS.md; issue: the LLaMA setting.
WORKLOADS: dict[str, Workload] = {
    "llama": Workload("llama", "causal", _llama, {
        "quick": Shape(2, 256, 688, 4, 4, 32000, 2, 64),
        "moderate": Shape(8, 512, 1376, 8, 8, 32000, 4, 128),
        "issue": Shape(8, 512, 1376, 8, 8, 32000, 8, 256),
    }),
    "roberta": Workload("roberta", "classify", _roberta, dropout=True, shapes={
        "quick": Shape(2, 256, 1024, 4, 4, 50265, 2, 64),
        "moderate": Shape(8, 512, 2048, 8, 8, 50265, 8, 128),
        "issue": Shape(8, 512, 2048, 8, 8, 50265, 8, 256),
    }),
    "t5": Workload("t5", "seq2seq", _t5, dropout=True, shapes={
        "quick": Shape(2, 256, 1024, 4, 4, 32128, 2, 64, 32),
        "moderate": Shape(6, 512, 2048, 8, 8, 32128, 4, 128, 64),
        "issue": Shape(8, 512, 2048, 8, 8, 32128, 8, 256, 128),
    }),
    "smollm2": Workload("smollm2", "causal", _smollm2, {
        "quick": Shape(4, 576, 1536, 9, 3, 49152, 4, 128),  # enough tokens for the logits to matter
        "moderate": Shape(30, 576, 1536, 9, 3, 49152, 4, 128),
        "issue": Shape(30, 576, 1536, 9, 3, 49152, 8, 256),
    }),
}


def build_model(workload: Workload, setting: str) -> nn.Module:
    torch.manual_seed(0)
    return workload.build(workload.shapes[setting])


def make_batch(workload: Workload, setting: str, with_labels: bool = True, lead_tokens: int = 0
               ) -> dict[str, torch.Tensor]:
    """The benchmark's batch; ``lead_tokens`` more input tokens in front, unlabelled, as prompt tuning's
    virtual tokens are (the floor of a method that lengthens the input runs the base on this batch)."""
    shape = workload.shapes[setting]
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, shape.vocab, (shape.batch, shape.length), generator=generator)
    if workload.task == "classify":
        labels = torch.randint(0, 2, (shape.batch,), generator=generator)
    elif workload.task == "seq2seq":
        labels = torch.randint(3, shape.vocab, (shape.batch, shape.target_length), generator=generator)
    else:
        labels = ids.clone()
    if lead_tokens:
        lead = torch.randint(3, shape.vocab, (shape.batch, lead_tokens), generator=generator)
        ids = torch.cat([lead, ids], dim=1)
        if workload.task == "causal":
            labels = torch.cat([torch.full_like(lead, -100), labels], dim=1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if with_labels:
        batch["labels"] = labels
    elif workload.task == "seq2seq":
        batch["decoder_input_ids"] = labels
    return batch

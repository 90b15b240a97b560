"""Packed causal-LM batches: several examples in one row, trained as if each were alone.

A micro-batch of decoder examples is laid out in as few rows as fit, each row no wider than the
micro-batch's longest example (so a packed batch never has more positions, nor wider attention rows,
than the padded one). This is transformers' own padding-free format (what its
``DataCollatorWithFlattening`` writes):

* ``position_ids`` restart at 0 at each example, and no ``attention_mask`` is passed: transformers then
  finds the examples from the restarts (``masking_utils.find_packed_sequence_indices``) and builds a
  block-diagonal causal mask under sdpa/eager, or variable-length (``cu_seqlens``) kernels under
  flash-attention, so no token attends across examples;
* the first label of each example is -100: in a row it would be predicted from the previous example's
  last token, and unpacked it is never predicted (labels shift by one);
* the model must run without a KV cache (``use_cache=False``): with a cache transformers skips the
  detection and every row would be one causal sequence.

The loss is the mean over the same labelled tokens as the padded batch's, so packed and padded
batches give the same loss and gradients (up to float rounding; tested).

Methods that act on attention inputs may not survive the layout: prompt tuning puts its virtual
tokens in front of each row, not each example. :func:`packing_problem` says why a model cannot run
packed: by rule where the reason is known, else by a probe that runs two short examples packed and
apart and compares the logits. The loop falls back to padded batches then.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from peftlab.core.method_hooks import prepended_positions
from peftlab.train.encoding import IGNORE, Features

PROBE_LENGTHS = (5, 3)  # two short examples, packed into one row, in the probe


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into rows of at most ``capacity`` tokens (first fit, longest first;
    an example longer than ``capacity`` gets a row of its own). Rows keep their first example's order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, left in enumerate(room) if left >= lengths[index]), None)
        if row is None:
            rows.append([index])
            room.append(capacity - lengths[index])
        else:
            rows[row].append(index)
            room[row] -= lengths[index]
    return rows


def collate_packed(features: Sequence[Features], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids``, ``position_ids`` and ``labels`` of the packed rows (padded at the end with ``pad_id``,
    label -100, positions counting on from 0), no ``attention_mask``. Rows are as wide as the longest example."""
    lengths = [len(f["input_ids"]) for f in features]
    rows = pack_rows(lengths, max(lengths))
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids, positions, labels = [], [], []
    for row in rows:
        row_ids: list[int] = []
        row_positions: list[int] = []
        row_labels: list[int] = []
        for index in row:
            feature = features[index]
            row_ids += feature["input_ids"]
            row_positions += range(lengths[index])
            row_labels += [IGNORE] + list(feature["labels"][1:])  # never predicted from the example before
        pad = width - len(row_ids)
        ids.append(row_ids + [pad_id] * pad)
        positions.append(row_positions + list(range(pad)))
        labels.append(row_labels + [IGNORE] * pad)
    return {"input_ids": torch.tensor(ids), "position_ids": torch.tensor(positions), "labels": torch.tensor(labels)}


def packing_problem(model: nn.Module, kind: str, writes_text: bool) -> str | None:
    """Why ``model`` (adapted) cannot train on packed rows, or None when it can."""
    if kind != "decoder" or not writes_text:
        return "packing applies to decoder-only language models on text tasks"
    if prepended_positions(model):
        return "the method puts virtual tokens in front of each row (one copy per row, not per example)"
    return _probe(model)


@torch.no_grad()
def _probe(model: nn.Module) -> str | None:
    """Run two short examples packed in one row and each alone; None when the logits agree."""
    parameter = next(model.parameters())
    vocabulary = min(int(getattr(model.config, "vocab_size", 0) or 0), 1000)
    if vocabulary < 2:
        return "the model's vocabulary size is unknown"
    generator = torch.Generator().manual_seed(0)
    examples = [torch.randint(0, vocabulary, (1, n), generator=generator).to(parameter.device) for n in PROBE_LENGTHS]
    was_training = model.training
    model.eval()
    try:
        alone = torch.cat([model(input_ids=ids, use_cache=False).logits[0] for ids in examples]).float()
        positions = torch.cat([torch.arange(n) for n in PROBE_LENGTHS])[None].to(parameter.device)
        packed = model(input_ids=torch.cat(examples, dim=1), position_ids=positions, use_cache=False).logits[0].float()
    except (RuntimeError, ValueError, TypeError) as error:
        return f"a packed forward fails ({type(error).__name__}: {str(error).splitlines()[0]})"
    finally:
        model.train(was_training)
    tolerance = (1e-4 if parameter.dtype == torch.float32 else 3e-2) * (1 + float(alone.abs().max()))
    difference = float((packed - alone).abs().max())
    if not difference <= tolerance:
        return (f"a packed row's logits differ from the examples' own by {difference:.3g}: the model or method "
                f"lets tokens attend across examples")
    return None

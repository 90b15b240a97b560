"""Training several adapters at once on one frozen base, each with its own data, optimizer and schedule.

A *lane* is one named adapter with its own stream of batches, optimizer and learning-rate schedule. One
packed step stacks every lane's next micro-batch into one batch (padded to the longest), runs it as one
forward with each row routed to its lane's adapter (:mod:`peftlab.core.routing`), and takes each lane's loss
over its own rows as the model would compute it for that micro-batch alone (the mean over its examples or
labelled tokens). One backward of the sum gives every adapter exactly the gradient of its own loss, since
the adapters share no parameter and the base is frozen; then each lane clips and steps its own optimizer.

Without dropout a lane's losses and weights equal training it alone up to float rounding
(``tests/train/test_several.py``); with dropout the masks drawn differ, as between any two batchings.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.adapters import set_adapter
from peftlab.core.architectures import model_kind
from peftlab.core.errors import UserError
from peftlab.core.state import adapter_states, named_adapter_parameters
from peftlab.train.encoding import IGNORE


class PackedTrainingError(UserError, ValueError):
    pass


@dataclass
class Lane:
    """One adapter's training: its batches (``input_ids``, ``attention_mask``, ``labels``), optimizer, schedule."""

    adapter: str
    batches: Iterator[dict[str, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    max_grad_norm: float | None = None
    losses: list[float] = field(default_factory=list)  # one per step, as logged


def train_packed(model: nn.Module, lanes: Sequence[Lane], steps: int, pad_token_id: int) -> None:
    """``steps`` packed steps over ``lanes`` (every lane's adapter trainable while they run)."""
    _check_lanes(model, lanes)
    set_adapter(model, [lane.adapter for lane in lanes])
    for _ in range(steps):
        packed_step(model, lanes, pad_token_id)


def packed_step(model: nn.Module, lanes: Sequence[Lane], pad_token_id: int,
                forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> list[float]:
    """One optimizer step for every lane, through one forward and one backward; returns the lanes' losses.
    ``forward_context``: entered around the forward and the losses (e.g. autocast), not the backward."""
    batches = [next(lane.batches) for lane in lanes]
    batch = stack_batches(batches, pad_token_id)
    labels = batch.pop("labels")
    names = [lane.adapter for lane, part in zip(lanes, batches) for _ in range(len(part["input_ids"]))]
    if model_kind(model) == "encoder-decoder":
        batch["labels"] = labels  # the decoder's inputs are made from them
    with forward_context():
        logits = model(**batch, adapter_names=names).logits
        losses, start = [], 0
        for part in batches:
            rows = slice(start, start + len(part["input_ids"]))
            losses.append(lane_loss(model, logits[rows], labels[rows]))
            start = rows.stop
    torch.stack(losses).sum().backward()
    states = adapter_states(model)
    for lane, loss in zip(lanes, losses):
        if lane.max_grad_norm is not None:
            parameters = [p for _, p in named_adapter_parameters(model, states[lane.adapter])]
            torch.nn.utils.clip_grad_norm_(parameters, lane.max_grad_norm)
        lane.optimizer.step()
        if lane.scheduler is not None:
            lane.scheduler.step()
        lane.optimizer.zero_grad(set_to_none=True)
        lane.losses.append(float(loss.detach()))
    return [float(loss.detach()) for loss in losses]


def stack_batches(batches: Sequence[dict[str, torch.Tensor]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The lanes' micro-batches as one, each sequence field padded on the right to the longest."""
    stacked = {}
    for key in batches[0]:
        parts = [part[key] for part in batches]
        if parts[0].dim() < 2:
            stacked[key] = torch.cat(parts)
            continue
        fill = IGNORE if key == "labels" else pad_token_id if key == "input_ids" else 0
        width = max(part.shape[1] for part in parts)
        stacked[key] = torch.cat([F.pad(part, (0, width - part.shape[1]), value=fill) for part in parts])
    return stacked


def lane_loss(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The loss ``model(**batch).loss`` gives for these rows alone: cross-entropy or squared error for a
    classification or regression head, token cross-entropy (shifted for a decoder) over the labelled tokens."""
    if logits.dim() == 2:
        if labels.is_floating_point():
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)
    if model_kind(model) == "decoder":
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def _check_lanes(model: nn.Module, lanes: Sequence[Lane]) -> None:
    names = [lane.adapter for lane in lanes]
    missing = [name for name in names if name not in adapter_states(model)]
    if missing or len(set(names)) != len(names) or not names:
        raise PackedTrainingError(
            f"each lane needs its own adapter on the model (lanes: {names}; the model has "
            f"{list(adapter_states(model))}); add them with peftlab.apply(model, METHOD, adapter_name=NAME)"
        )

"""An epoch's order: which examples each optimizer step trains on.

Random batches pad every sequence to the longest of the batch; on sentences of 5 to 60 tokens a batch
of 32 then spends most of its compute on padding. Length grouping (as HF ``Trainer``'s
``group_by_length`` does) keeps the randomness where it matters and drops the padding:

1. draw a random permutation of the examples from (seed, epoch) alone;
2. cut it into *megabatches* of ``MEGABATCH_STEPS`` steps' examples and sort each megabatch by length,
   so a step holds examples of similar length drawn at random from the whole set;
3. shuffle the order of the full steps (the one partial step, if any, stays last).

A step's examples are the same whatever its micro-batches (gradient accumulation, processes): the loop
cuts each step, sorted by length, into its micro-batches, so 2 x 4 accumulated train what 8 at once do.

Every example is visited exactly once per epoch, and the order depends on (seed, epoch) alone, so a
resumed run replays exactly what the killed one would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from peftlab.train.args import ArgumentError

MEGABATCH_STEPS = 50  # HF Trainer's LengthGroupedSampler uses the same multiple


def epoch_order(lengths: Sequence[int], step_batch: int, seed: int, epoch: int,
                group_by_length: bool) -> list[list[int]]:
    """The epoch's steps (lists of example indices) of at most ``step_batch`` examples each."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if not group_by_length:
        return [order[i:i + step_batch] for i in range(0, len(order), step_batch)]
    span = step_batch * MEGABATCH_STEPS
    grouped = []
    for start in range(0, len(order), span):
        grouped += sorted(order[start:start + span], key=lambda index: -lengths[index])
    steps = [grouped[i:i + step_batch] for i in range(0, len(grouped), step_batch)]
    partial = steps.pop() if steps and len(steps[-1]) < step_batch else None
    shuffled = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
    return shuffled + ([partial] if partial else [])


def padded_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The share of the padded batches' positions that are padding."""
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1.0 - sum(lengths[i] for batch in batches for i in batch) / padded if padded else 0.0


def accumulation_groups(lengths: Sequence[int], batch_size: int, world: int, accumulate: int, seed: int, epoch: int,
                        group_by_length: bool) -> list[list[list[int]]]:
    """Each optimizer step's examples for ``epoch`` (:func:`epoch_order`), cut into global micro-batches of
    ``batch_size`` per process (``world`` processes, ``accumulate`` micro-batches a step)."""
    size = batch_size * world
    steps = epoch_order(lengths, size * accumulate, seed, epoch, group_by_length)
    groups = [[step[i:i + size] for i in range(0, len(step), size)] for step in steps]
    if groups and len(groups[-1][-1]) < world:  # every process needs at least one example
        groups[-1].pop()
        if not groups[-1]:
            groups.pop()
    if not groups:
        raise ArgumentError(f"{len(lengths)} training examples cannot feed {world} processes")
    return groups

"""Length-grouped epochs: every example once, seeded, far less padding than random batches."""

from __future__ import annotations

import random

import pytest

from peftlab.train.batching import MEGABATCH_STEPS, epoch_order, padded_fraction


def sentence_lengths(count: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 64) for _ in range(count)]


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("count", [1, 31, 32, 1000, 3217])
def test_every_example_once_per_epoch(grouped: bool, count: int) -> None:
    micro = epoch_order(sentence_lengths(count), step_batch=32, seed=3, epoch=1, group_by_length=grouped)
    flat = [index for batch in micro for index in batch]
    assert sorted(flat) == list(range(count))
    assert all(len(batch) == 32 for batch in micro[:-1]) and 0 < len(micro[-1]) <= 32


def test_order_is_a_function_of_seed_and_epoch() -> None:
    lengths = sentence_lengths(2000)
    first = epoch_order(lengths, 16, seed=5, epoch=0, group_by_length=True)
    assert first == epoch_order(lengths, 16, seed=5, epoch=0, group_by_length=True)
    assert first != epoch_order(lengths, 16, seed=5, epoch=1, group_by_length=True)
    assert first != epoch_order(lengths, 16, seed=6, epoch=0, group_by_length=True)


def test_grouping_cuts_padding_and_keeps_batches_mixed() -> None:
    lengths = sentence_lengths(5000)
    grouped = epoch_order(lengths, 32, seed=0, epoch=0, group_by_length=True)
    plain = epoch_order(lengths, 32, seed=0, epoch=0, group_by_length=False)
    assert padded_fraction(lengths, grouped) < 0.1 < 0.4 < padded_fraction(lengths, plain)
    longest = [max(lengths[i] for i in batch) for batch in grouped[:-1]]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)  # steps not in length order


def test_a_batch_is_drawn_from_one_megabatch_of_the_permutation() -> None:
    lengths = list(range(64 * MEGABATCH_STEPS * 2))  # all different: each batch is a run of one megabatch
    micro = epoch_order(lengths, 64, seed=1, epoch=0, group_by_length=True)
    plain = epoch_order(lengths, 64 * MEGABATCH_STEPS, seed=1, epoch=0, group_by_length=False)
    megabatch_of = {index: n for n, mega in enumerate(plain) for index in mega}
    assert all(len({megabatch_of[i] for i in batch}) == 1 for batch in micro)


def test_the_partial_batch_comes_last() -> None:
    lengths = sentence_lengths(100)
    micro = epoch_order(lengths, 32, seed=0, epoch=0, group_by_length=True)
    assert [len(batch) for batch in micro] == [32, 32, 32, 4]

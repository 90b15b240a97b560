"""``--budget`` values: what each key reads, and each bad value's message."""

from __future__ import annotations

import pytest

from peftlab.search.budgets import BudgetError, Budgets, parse_budgets


def test_each_key_reads_its_unit():
    budgets = parse_budgets(["trainable=1%", "memory=3GiB", "hours=0.5"])
    assert budgets == Budgets(trainable_percent=1.0, memory_bytes=3 * 2**30, hours=0.5)
    assert parse_budgets(["trainable=5000", "memory=200 MB"]) == Budgets(trainable_count=5000, memory_bytes=200 * 10**6)
    assert parse_budgets(budgets.as_text()) == budgets


def test_a_footprint_over_any_budget_says_which():
    budgets = Budgets(trainable_percent=1.0, memory_bytes=1000)
    assert budgets.over(trainable=10, base=1000, memory_bytes=1000) is None
    assert "trainable 1.100% of the base > budget 1%" in budgets.over(trainable=11, base=1000, memory_bytes=10)
    assert "predicted memory" in budgets.over(trainable=1, base=1000, memory_bytes=1001)
    assert "trainable 11 > budget 10" in Budgets(trainable_count=10).over(trainable=11, base=1000, memory_bytes=0)


@pytest.mark.parametrize(("given", "message"), [
    (["speed=2"], "unknown budget 'speed'; known: trainable, memory, hours"),
    (["trainable"], "takes KEY=VALUE"),
    (["trainable=1%", "trainable=5"], "given twice"),
    (["trainable=150%"], "at most 100%"),
    (["trainable=1.5"], "a whole count"),
    (["memory=3 parsecs"], "units: B, KB, MB, GB, KiB, MiB, GiB"),
    (["hours=-1"], "must be positive"),
    (["hours=soon"], "'soon' is not a number"),
])
def test_bad_budgets_are_refused_with_the_fix(given, message):
    with pytest.raises(BudgetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_budgets(given)

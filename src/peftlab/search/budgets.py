"""``--budget KEY=VALUE``: the hard limits of a search, parsed and checked before anything loads.

    trainable=1%       trainable parameters (task head included) as a percentage of the base model
    trainable=50000    ... or as a count
    memory=3GiB        predicted training memory: weights + gradients + AdamW state (B, KB, MB, GB, KiB, MiB, GiB)
    hours=2            wall-clock hours for the whole search, counted from the study's first start
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from peftlab.core.errors import UserError

KEYS = ("trainable", "memory", "hours")
UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


class BudgetError(UserError, ValueError):
    """A ``--budget`` that cannot be read, or that no configuration can meet."""


@dataclass(frozen=True)
class Budgets:
    trainable_percent: float | None = None
    trainable_count: int | None = None
    memory_bytes: int | None = None
    hours: float | None = None

    def over(self, trainable: int, base: int, memory_bytes: int) -> str | None:
        """Why a configuration with this footprint breaks a budget, or None when it fits."""
        if self.trainable_count is not None and trainable > self.trainable_count:
            return f"trainable {trainable:,} > budget {self.trainable_count:,}"
        percent = 100.0 * trainable / base
        if self.trainable_percent is not None and percent > self.trainable_percent:
            return f"trainable {percent:.3f}% of the base > budget {self.trainable_percent:g}%"
        if self.memory_bytes is not None and memory_bytes > self.memory_bytes:
            return f"predicted memory {memory_bytes / 2**30:.3f} GiB > budget {self.memory_bytes / 2**30:.3f} GiB"
        return None

    def as_text(self) -> list[str]:
        """The budgets as ``--budget`` values (what the study records, to refuse a resume under others)."""
        given = {"trainable": f"{self.trainable_percent:g}%" if self.trainable_percent is not None
                 else self.trainable_count, "memory": self.memory_bytes, "hours": self.hours}
        return [f"{key}={value}" for key, value in given.items() if value is not None]


def parse_budgets(items: list[str]) -> Budgets:
    values: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip().lower(), text.strip()
        if not sep or not text:
            raise BudgetError(f"--budget takes KEY=VALUE, e.g. trainable=1% (got {item!r})")
        if key not in KEYS:
            raise BudgetError(f"--budget {item}: unknown budget {key!r}; known: {', '.join(KEYS)}")
        if key in values or (key == "trainable" and ("trainable_percent" in values or "trainable_count" in values)):
            raise BudgetError(f"--budget {key} is given twice; give each budget once")
        if key == "trainable":
            values.update(_trainable(text, item))
        elif key == "memory":
            values["memory_bytes"] = _memory(text, item)
        else:
            values["hours"] = _positive(text, item)
    return Budgets(**values)  # type: ignore[arg-type]


def _trainable(text: str, item: str) -> dict[str, object]:
    if text.endswith("%"):
        percent = _positive(text[:-1], item)
        if percent > 100:
            raise BudgetError(f"--budget {item}: a percentage of the base model is at most 100%")
        return {"trainable_percent": percent}
    if not text.isdigit() or int(text) < 1:
        raise BudgetError(f"--budget {item}: give a percentage (trainable=1%) or a whole count (trainable=50000)")
    return {"trainable_count": int(text)}


def _memory(text: str, item: str) -> int:
    match = re.fullmatch(r"([0-9.]+)\s*([a-zA-Z]*)", text)
    unit = (match.group(2) if match else "").lower() or "b"
    if match is None or unit not in UNITS:
        raise BudgetError(f"--budget {item}: give an amount with a unit, e.g. memory=3GiB "
                          f"(units: B, KB, MB, GB, KiB, MiB, GiB)")
    return int(_positive(match.group(1), item) * UNITS[unit])


def _positive(text: str, item: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BudgetError(f"--budget {item}: {text!r} is not a number") from None
    if not value > 0:
        raise BudgetError(f"--budget {item}: must be positive")
    return value

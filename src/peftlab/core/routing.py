"""Mixed-adapter batches: each row of a batch runs through its own named adapter (or the bare base).

While :func:`rows_use` is in effect, an :class:`~peftlab.core.layers.AdapterLayer` splits the batch it
gets: the rows named for its adapter take the adapted path, the others go on to the layer it wraps (which
may be another adapter's layer, doing the same for its rows). Each row is computed once, by exactly the
adapters named for it, so a row's output equals running it alone with that adapter active. A batch that
generation widened (beams, several sequences per prompt: ``repeat_interleave`` on the rows) is matched by
repeating each name as many times.

The names live in a module global, not a thread-local: ``torch.compile`` guards on a global's value (no
graph break), and one process runs one forward at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from peftlab.core.errors import UserError

BASE = "__base__"  # the row runs through the bare base model, as in HF peft

_rows: tuple[str, ...] | None = None


class MixedBatchError(UserError, ValueError):
    """A mixed-adapter batch that cannot run as asked."""


def current_rows() -> tuple[str, ...] | None:
    return _rows


@contextlib.contextmanager
def rows_use(names: Sequence[str] | None) -> Iterator[None]:
    """Within the block, row ``i`` of every batch runs with adapter ``names[i]`` (``None``: no routing)."""
    global _rows
    before = _rows
    _rows = tuple(names) if names is not None else None
    try:
        yield
    finally:
        _rows = before


def rows_for(batch_size: int, rows: tuple[str, ...]) -> tuple[str, ...]:
    """The names for a batch of ``batch_size`` rows: ``rows`` itself, or each name repeated when generation
    expanded every input row into the same number of consecutive rows."""
    if batch_size == len(rows):
        return rows
    if len(rows) and batch_size % len(rows) == 0:
        repeat = batch_size // len(rows)
        return tuple(name for name in rows for _ in range(repeat))
    raise MixedBatchError(
        f"adapter_names has {len(rows)} entries but a layer got a batch of {batch_size} rows; give one name per "
        f"row of the batch (input_ids.shape[0])"
    )


def route(adapter_name: str, x: torch.Tensor, adapted: Callable[[torch.Tensor], torch.Tensor],
          bypass: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``adapted`` on the rows named ``adapter_name``, ``bypass`` on the others, each under its rows' names;
    the outputs put back in row order."""
    rows = rows_for(x.shape[0], current_rows())
    mine = [i for i, name in enumerate(rows) if name == adapter_name]
    if not mine:
        with rows_use(rows):
            return bypass(x)
    if len(mine) == len(rows):
        with rows_use(rows):
            return adapted(x)
    others = [i for i, name in enumerate(rows) if name != adapter_name]
    mine_index = torch.tensor(mine, device=x.device)
    others_index = torch.tensor(others, device=x.device)
    with rows_use([rows[i] for i in mine]):
        mine_output = adapted(x.index_select(0, mine_index))
    with rows_use([rows[i] for i in others]):
        others_output = bypass(x.index_select(0, others_index))
    output = mine_output.new_empty((x.shape[0], *mine_output.shape[1:]))
    output = output.index_copy(0, mine_index, mine_output)
    return output.index_copy(0, others_index, others_output.to(mine_output.dtype))

"""When a run saves and stops early: SIGINT (Ctrl-C) and SIGTERM (what SLURM and Kubernetes send before they
kill), and checkpoints on the clock (``--save-minutes``).

The first signal asks the loop to stop after the step in progress: it writes a checkpoint (atomically, like
every checkpoint), prints one line saying where it is and how to resume, and the command exits with
128 + the signal's number (130 for SIGINT, 143 for SIGTERM). A second signal exits at once; since every file
is written atomically, what is on disk is then the previous checkpoint, whole.

Under several processes every rank must stop (and save) at the same step: the flags are agreed on with one
small all-reduce per step (only when there are several processes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch

from peftlab.core.errors import Interrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def agreed(flags: list[bool], accelerator: Any) -> list[bool]:
    """Each flag, true on every process if it is true on any (a no-op for one process)."""
    if accelerator.num_processes == 1:
        return flags
    votes = torch.tensor([float(flag) for flag in flags], device=accelerator.device)
    return [bool(vote) for vote in accelerator.reduce(votes, reduction="sum").tolist()]


@contextlib.contextmanager
def handling(numbers: tuple[int, ...], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for the signals ``numbers`` for the duration, then the handlers from before; only the main
    thread may set handlers, so elsewhere this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, handler) for number in numbers}
    try:
        yield
    finally:
        for number, earlier in previous.items():
            signal.signal(number, earlier)


class StopRequest:
    """Catches SIGINT and SIGTERM while :meth:`installed`; the loop asks :attr:`signal_number` after each step."""

    def __init__(self) -> None:
        self.signal_number: int | None = None

    def installed(self) -> contextlib.AbstractContextManager[None]:
        """Handle the stop signals for the duration (from the main thread only; elsewhere a no-op)."""
        return handling(STOP_SIGNALS, self._handle)

    def _handle(self, number: int, frame: Any) -> None:
        name = signal.Signals(number).name
        if self.signal_number is not None:  # the second one: no saving, no cleanup; the files are atomic
            os.write(2, f"\npeftlab: second {name}: stopping at once; the last complete checkpoint is kept\n".encode())
            os._exit(128 + number)
        self.signal_number = number
        os.write(2, f"\npeftlab: {name}: finishing the current step, then saving a checkpoint "
                    f"(send it again to stop at once)\n".encode())

    def requested(self, accelerator: Any) -> bool:
        """Whether a signal came (on any process)."""
        return agreed([self.signal_number is not None], accelerator)[0]

    def stop(self, step: int, total_steps: int, output: Path | None, save: Callable[[], Path]) -> NoReturn:
        """Save (when the run has an output folder) and raise :class:`Interrupted` with the line to print."""
        number = self.signal_number or signal.SIGINT
        name = signal.Signals(number).name
        where = f"stopped by {name} after step {step} of {total_steps}"
        if output is None:
            raise Interrupted(f"{where}; nothing was saved (the run has no --output)", exit_code=128 + number)
        checkpoint = save()
        raise Interrupted(f"{where}; checkpoint saved to {checkpoint}. Continue with the same command plus --resume",
                          exit_code=128 + number)


class SaveClock:
    """``--save-minutes``: a checkpoint is due when that much time has passed since the last one."""

    def __init__(self, minutes: float | None) -> None:
        self.seconds = minutes * 60 if minutes else None
        self.last = time.monotonic()

    def due(self, accelerator: Any) -> bool:
        if self.seconds is None:
            return False
        return agreed([time.monotonic() - self.last >= self.seconds], accelerator)[0]

    def saved(self) -> None:
        self.last = time.monotonic()

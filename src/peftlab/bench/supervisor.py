"""SIGINT and SIGTERM during a sweep: the run in progress saves a checkpoint and stops, the sweep stops.

The worker runs in its own session, so a Ctrl-C at the terminal reaches the sweep alone and the sweep passes
each signal on exactly once (SIGTERM from SLURM or Kubernetes reaches the sweep alone anyway). The first one
makes the worker finish its step, write a checkpoint and exit 128 + the signal's number; the sweep then
raises :class:`~peftlab.core.errors.Interrupted`, which says where the checkpoint is and that rerunning the
same command continues from it. A second signal stops the worker at once (every file it writes is atomic,
so the previous checkpoint stays whole). A sweep killed outright (SIGKILL) sends its worker SIGTERM on Linux.

A worker in its own session is also its own scheduling group where the kernel groups by session (Linux
autogroups), and there a niced process yields only to others of its group: ``nice -n 19 peftlab bench`` would
still take a full share of the CPU from the user's foreground work. So the worker's group takes the sweep's
niceness.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from peftlab.train.interrupt import STOP_SIGNALS, handling


def _stop_when_the_sweep_dies() -> None:
    """In the worker, before it starts (Linux): SIGTERM when the sweep dies, even by SIGKILL, so the run saves a
    checkpoint and stops instead of training on unwatched (prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


AUTOGROUP = Path("/proc/self/autogroup")  # "/autogroup-12 nice 0" where the kernel has autogroups


def sweep_niceness() -> int:
    """How far the sweep yields: its own niceness, or its scheduling group's where that is higher."""
    group = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        group = int(AUTOGROUP.read_text().split("nice")[1])
    return max(os.nice(0), group)


def _prepare_worker(niceness: int) -> None:
    """In the worker, between fork and exec (Linux): stop with the sweep, and yield as the sweep does."""
    _stop_when_the_sweep_dies()
    if niceness > 0:
        with contextlib.suppress(OSError):
            AUTOGROUP.write_text(str(niceness))


class SweepStop:
    """The stop signals the sweep received while :meth:`installed`, passed on to the worker running then."""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self.count = 0
        self.worker: subprocess.Popen[bytes] | None = None

    def installed(self) -> contextlib.AbstractContextManager[None]:
        return handling(STOP_SIGNALS, self._handle)

    def _handle(self, number: int, frame: Any) -> None:
        self.count += 1
        self.signal_number = self.signal_number or number
        name = signal.Signals(number).name
        if self.worker is not None and self.worker.poll() is None:
            what = ("the run in progress finishes its step, saves a checkpoint and stops (send it again to stop "
                    "at once)" if self.count == 1 else "stopping the run in progress at once")
            os.write(2, f"\npeftlab bench: {name}: {what}\n".encode())
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.worker.pid, number)
        else:
            os.write(2, f"\npeftlab bench: {name}: stopping before the next run\n".encode())

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def run(self, command: list[str], log: IO[str], env: dict[str, str], timeout: float | None) -> int | None:
        """Run the worker to its end; its exit status, or None when it ran past ``timeout`` (then it is killed)."""
        niceness = sweep_niceness()
        prepare = (lambda: _prepare_worker(niceness)) if sys.platform == "linux" else None
        self.worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                       preexec_fn=prepare)
        try:
            return self.worker.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.worker.pid, signal.SIGKILL)
            self.worker.wait()
            return None
        finally:
            if self.worker.poll() is None:  # an exception in the sweep itself: the worker must not outlive it
                os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait()
            self.worker = None

    def stopped_message(self, done: int, total: int, run_id: str | None = None, checkpoints: Path | None = None) -> str:
        """The line the sweep ends with: what finished, where the run in progress (if any) left its work."""
        name = signal.Signals(self.signal_number or signal.SIGINT).name
        saved = ""
        if run_id is not None and checkpoints is not None:
            saved = (f"; run {run_id} saved its progress in {checkpoints}" if any(checkpoints.glob("checkpoint-*"))
                     else f"; run {run_id} had no checkpoint yet and will start over")
        return (f"stopped by {name} after {done} of {total} run(s){saved}. Rerun the same command to continue "
                f"(finished runs are kept)")

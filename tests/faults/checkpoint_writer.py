"""A process that resumes from the newest checkpoint the real way and writes more with the real
``save_checkpoint`` (keep=2), for the kill -9 tests. After optimizer step k every adapter weight is set to
k, so a reader can tell which save a checkpoint holds and whether it mixes two.

    python checkpoint_writer.py OUT SAVES [--die-at KIND PATTERN N]

With ``--die-at`` the process SIGKILLs itself just before its N-th file operation of KIND (``fsync``,
``replace``, ``unlink``, ``rmdir``) on a path (relative to OUT; for ``replace``, the destination) that
fully matches the regex PATTERN: a kill at an exact point of the checkpoint protocol. Operations are
counted from the first save on, after the resume.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import torch
from torch import nn

import peftlab
from conftest import tiny_llama
from peftlab.core.hooks import TrainingHooks
from peftlab.train.checkpoint import Progress, latest_checkpoint, load_checkpoint, save_checkpoint

KEEP = 2
Objects = tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, TrainingHooks]


def build() -> Objects:
    """The tiny model, optimizer, scheduler and hooks both the writer and the test's reader use."""
    model = peftlab.apply(tiny_llama(), "lora", rank=4)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return model, optimizer, scheduler, peftlab.training_hooks(model)


def train_one_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler, step: int) -> None:
    ids = torch.arange(8).view(1, 8) % 90 + 3
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.fill_(float(step))


def die_at(out: Path, kind: str, pattern: str, occurrence: int) -> None:
    """Patch ``os.<kind>`` to SIGKILL this process before its ``occurrence``-th call on a matching path."""
    real = getattr(os, kind)
    regex = re.compile(pattern)
    seen = {"count": 0}

    def where(args: tuple, dir_fd: int | None) -> str:
        target = args[1] if kind == "replace" else args[0]
        if kind == "fsync":
            target = os.readlink(f"/proc/self/fd/{target if isinstance(target, int) else target.fileno()}")
        elif dir_fd is not None:
            target = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), target)
        return os.path.relpath(os.path.realpath(os.fspath(target)), out.resolve())

    def patched(*args, **kwargs):
        if regex.fullmatch(where(args, kwargs.get("dir_fd"))):
            seen["count"] += 1
            if seen["count"] == occurrence:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    setattr(os, kind, patched)


def main() -> None:
    out, saves = Path(sys.argv[1]), int(sys.argv[2])
    model, optimizer, scheduler, hooks = build()
    checkpoint = latest_checkpoint(out)
    progress = load_checkpoint(checkpoint, model, optimizer, scheduler, hooks) if checkpoint else Progress()
    if "--die-at" in sys.argv:
        kind, pattern, occurrence = sys.argv[sys.argv.index("--die-at") + 1:][:3]
        die_at(out, kind, pattern, int(occurrence))
    for _ in range(saves):
        progress.step += 1
        train_one_step(model, optimizer, scheduler, progress.step)
        save_checkpoint(out, model, optimizer, scheduler, hooks, progress, is_main=True, keep=KEEP)
        print(progress.step, flush=True)


if __name__ == "__main__":
    main()

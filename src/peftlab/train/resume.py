"""``--resume``: the newest checkpoint of a run folder that reads whole, restored into the model, optimizer,
scheduler and method hooks, after checking that it was written by a run with the same settings."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import nn

from peftlab.core.serialization import AdapterFileError
from peftlab.train.args import ArgumentError
from peftlab.train.checkpoint import (
    Progress,
    changed_settings,
    checkpoint_step,
    load_checkpoint,
    recovered_checkpoints,
)

UNREADABLE = (OSError, ValueError, KeyError, SafetensorError, AdapterFileError)  # a checkpoint damaged after writing


def resume_from(output: Path, settings: dict[str, Any], model: nn.Module, optimizer: Any, scheduler: Any,
                hooks: Any, up_to: int | None = None) -> tuple[Path, Progress] | None:
    """The newest checkpoint in ``output`` that reads whole, restored; a newer unreadable one is named in a
    warning and left in place. None when there is none; an error when none of them reads, or when the run
    that wrote it had other ``settings`` (``TrainArgs.resume_settings``). ``up_to``: only checkpoints of that
    step or before (the step every lane of a packed run has saved)."""
    found = [path for path in recovered_checkpoints(output) if up_to is None or checkpoint_step(path) <= up_to]
    if not found:
        return None
    problems = []
    for checkpoint in reversed(found):
        try:
            changes = changed_settings(checkpoint, settings)
            progress = None if changes else load_checkpoint(checkpoint, model, optimizer, scheduler, hooks)
        except UNREADABLE as error:  # every part is loaded again from the next one tried
            problems.append(f"{checkpoint.name} ({type(error).__name__}: {str(error).splitlines()[0]})")
            continue
        if changes:
            raise ArgumentError(f"--resume: {checkpoint} was written by a run with other settings "
                                f"({'; '.join(changes)}); resume with the same settings, or start a new run "
                                f"(another --output, or --overwrite without --resume)")
        if problems:
            warnings.warn(f"--resume: skipped unreadable checkpoint(s) {', '.join(problems)}; resuming from "
                          f"{checkpoint.name}. The skipped folders are left as they are.", stacklevel=3)
        return checkpoint, progress
    raise ArgumentError(f"--resume: no checkpoint in {output} reads whole: {', '.join(problems)}. Remove them "
                        f"to start over (or pass --overwrite without --resume)")

"""Checkpoints for an exact resume: ``DIR/checkpoint-<step>/`` written atomically, holding

* ``adapter/``: the method's weights and config (``peftlab.save_adapter``),
* ``optimizer.safetensors`` + ``optimizer.json``: AdamW's state flattened to named tensors, the rest as JSON,
* ``rng.safetensors``: the torch (and CUDA, NumPy) generator states,
* ``trainer_state.json``: step, data position, scheduler, Python's generator, counters, best score.

Nothing is pickled. A kill mid-write leaves the previous checkpoints as they were. Old checkpoints are
pruned by renaming them out of the ``checkpoint-<step>`` namespace first (``.checkpoint-<step>.pruned.tmp``),
then deleting: a kill mid-delete never leaves a half-deleted folder that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from peftlab.core.atomic import atomic_directory, recover_directory
from peftlab.core.hooks import TrainingHooks
from peftlab.core.serialization import load_adapter_state_dict, read_adapter_tensors, save_adapter
from peftlab.core.sharding import unsharded, units, whole

STATE_NAME = "trainer_state.json"
PATTERN = re.compile(r"checkpoint-(\d+)")
PRUNED_SUFFIX = ".pruned.tmp"


@dataclass
class Progress:
    """Where training stands: enough to continue exactly (with the tensors saved beside it)."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress
    groups_done: int = 0  # accumulation groups of that epoch already trained on
    train_time_s: float = 0.0
    train_tokens: int = 0
    best_score: float | None = None
    best_step: int | None = None
    last_eval: dict[str, float] = field(default_factory=dict)
    last_eval_step: int | None = None
    before_training: dict[str, float] = field(default_factory=dict)  # forgetting tasks, scored before step 1
    loss_sum: float = 0.0  # loss accumulated since the last log line
    loss_count: int = 0

    def keep_if_best(self, score: float, greater_is_better: bool) -> bool:
        """Record ``score`` (this step's main metric) as the best so far if it is; says whether it was."""
        better = self.best_score is None or (score > self.best_score if greater_is_better else score < self.best_score)
        if better and not math.isnan(score):
            self.best_score, self.best_step = score, self.step
            return True
        return False


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        match = PATTERN.fullmatch(path.name)
        if match and (path / STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def checkpoint_step(path: Path) -> int:
    return int(PATTERN.fullmatch(path.name).group(1))


def recovered_checkpoints(output_dir: Path) -> list[Path]:
    """:func:`checkpoints`, after finishing or clearing any checkpoint write that was interrupted."""
    for path in output_dir.glob("checkpoint-*"):
        recover_directory(path)
    return checkpoints(output_dir)


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = recovered_checkpoints(output_dir)
    return found[-1] if found else None


def full_parameters(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Under FSDP2, gather every sharded parameter whole for the duration (a collective: all ranks call it)."""
    return unsharded(units(model))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW's state as ``{"<param index>.<key>": tensor}`` plus a JSON document for the rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = whole(value).detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], document: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in document["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in document["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = rng
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(keys.astype(np.int64))
    python = random.getstate()
    return tensors, {"numpy": [kind, int(position), int(has_gauss), float(gauss)],
                     "python": [python[0], list(python[1]), python[2]]}


def restore_rng(tensors: dict[str, torch.Tensor], document: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors)) if f"cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, position, has_gauss, gauss = document["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = document["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_checkpoint(output_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, hooks: TrainingHooks, progress: Progress,
                    *, is_main: bool, keep: int, settings: dict[str, Any] | None = None,
                    adapter_name: str | None = None) -> Path:
    """Write ``checkpoint-<step>`` (all ranks call this; only the main one writes) and drop old ones.
    ``settings``: what the run trains (``TrainArgs.resume_settings``), for :func:`changed_settings`;
    ``adapter_name``: that adapter alone, where the model carries several (``train.packed_run``)."""
    path = output_dir / f"checkpoint-{progress.step}"
    optimizer_state, optimizer_document = optimizer_tensors(optimizer)
    if not is_main:
        with full_parameters(model) if _sharded(model) else contextlib.nullcontext():
            pass
        return path
    rng_state, rng_document = rng_tensors()
    hook_state = {k: v.detach().to("cpu").contiguous() for k, v in hooks.state_dict().items()}
    with atomic_directory(path) as staging:
        with full_parameters(model) if _sharded(model) else contextlib.nullcontext():
            save_adapter(model, staging / "adapter", adapter_name=adapter_name)
        save_file(optimizer_state, str(staging / "optimizer.safetensors"))
        (staging / "optimizer.json").write_text(json.dumps(optimizer_document))
        save_file(rng_state, str(staging / "rng.safetensors"))
        save_file(hook_state, str(staging / "hooks.safetensors"))
        document = {"progress": asdict(progress), "scheduler": scheduler.state_dict(), "rng": rng_document,
                    "settings": settings}
        (staging / STATE_NAME).write_text(json.dumps(document, indent=1))
    prune_checkpoints(output_dir, keep)
    return path


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (``keep <= 0``: keep all), and the remains
    of deletions a kill interrupted. Each is renamed away before it is deleted."""
    doomed = checkpoints(output_dir)[:-keep] if keep > 0 else []
    for old in doomed:
        retired = output_dir / f".{old.name}{PRUNED_SUFFIX}"
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(old, retired)
    for retired in output_dir.glob(f".checkpoint-*{PRUNED_SUFFIX}"):
        shutil.rmtree(retired, ignore_errors=True)


def changed_settings(path: Path, settings: dict[str, Any]) -> list[str]:
    """Each setting that differs between the checkpoint at ``path`` and ``settings``, as ``name: then -> now``
    (none for a checkpoint written before settings were recorded)."""
    saved = json.loads((path / STATE_NAME).read_text()).get("settings") or {}
    return [f"{name}: {saved[name]!r} -> {value!r}" for name, value in settings.items()
            if name in saved and saved[name] != value]


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, hooks: TrainingHooks) -> Progress:
    """Restore everything ``save_checkpoint`` wrote into the live objects; returns the progress."""
    document = json.loads((path / STATE_NAME).read_text())
    load_adapter_state_dict(model, read_adapter_tensors(path / "adapter"), source=str(path / "adapter"))
    load_optimizer(optimizer, load_file(str(path / "optimizer.safetensors")),
                   json.loads((path / "optimizer.json").read_text()))
    scheduler.load_state_dict(document["scheduler"])
    hooks.load_state_dict(load_file(str(path / "hooks.safetensors")))
    restore_rng(load_file(str(path / "rng.safetensors")), document["rng"])
    return Progress(**document["progress"])


def _sharded(model: nn.Module) -> bool:
    return bool(units(model))

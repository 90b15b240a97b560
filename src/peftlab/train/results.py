"""A run's record (``metrics.json``, and what ``run_training`` returns): its scores, parameters, steps, time,
tokens per second, memory, and how it ran (precision, loss, fused and compiled modules, packing)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

import peftlab
from peftlab.core.atomic import write_text_atomic
from peftlab.core.serialization import CONFIG_NAME, WEIGHTS_NAME
from peftlab.tasks.files import TASK_FILE
from peftlab.train.batching import padded_fraction
from peftlab.train.checkpoint import Progress
from peftlab.train.resources import peak_memory

if TYPE_CHECKING:
    from peftlab.train.trainer import Trainer


def record_run(trainer: Trainer, progress: Progress, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The finished run's record (plus ``extra``); with an output folder, written there beside the adapter
    (metrics.json last)."""
    device = trainer.accelerator.device
    tokens = int(trainer.accelerator.reduce(torch.tensor(progress.train_tokens, device=device), reduction="sum"))
    metrics = {**run_metrics(trainer, progress, tokens), **(extra or {})}
    if trainer.output is not None:
        save_final(trainer, metrics)
    trainer.accelerator.wait_for_everyone()
    return metrics


def run_metrics(trainer: Trainer, progress: Progress, tokens: int) -> dict[str, Any]:
    """The record of a finished run; ``tokens``: the real (non-pad) training tokens of all processes."""
    args = trainer.args
    report = peftlab.parameter_report(trainer.base)
    return {
        "model": args.model, "task": args.task, "method": args.method,
        "options": {k: v if isinstance(v, (int, float, str, bool)) else list(v) for k, v in args.options.items()},
        "seed": args.seed, "scores": progress.last_eval, "scores_before_training": progress.before_training,
        "main_metric": trainer.plan.task.main_metric, "best_score": progress.best_score, "best_step": progress.best_step,
        "eval_history": trainer.eval_history,
        "parameters": report.as_dict(),
        "steps": progress.step, "epochs": progress.epoch, "world_size": trainer.world,
        "train_examples": len(trainer.plan.train_examples), "group_by_length": args.group_by_length,
        "padding_fraction": padded_fraction(trainer.lengths, [b for g in trainer.epoch_groups(0) for b in g]),
        **trainer.tokenized, "packed": trainer.not_packed is None, "not_packed": trainer.not_packed,
        "train_time_s": progress.train_time_s, "train_tokens": tokens,
        "load_time_s": trainer.load_time_s, "eval_time_s": trainer.eval_time_s,  # this process's, since it started
        "train_tokens_per_s": tokens / progress.train_time_s if progress.train_time_s else 0.0,
        **peak_memory(trainer.accelerator.device),
        "device": str(trainer.accelerator.device), "mixed_precision": trainer.accelerator.mixed_precision,
        "loss": trainer.loss_kind, "fused_modules": trainer.fused_modules, "compiled_modules": trainer.compiled_modules,
        "kept_freed_memory": trainer.kept_freed_memory, "fast_dropout": trainer.fast_dropout,
        **peftlab.method_report(trainer.base),
    }


def save_final(trainer: Trainer, metrics: dict[str, Any]) -> None:
    """The adapter files beside metrics.json in the output folder (their size on disk goes into ``metrics`` as
    ``adapter_bytes``); metrics.json last marks the run done."""
    if not trainer.untuned:  # an untuned run has no adapter: metrics.json alone
        staging = trainer.output / ".final-adapter"
        trainer.save_adapter_to(staging)
        if trainer.is_main:
            for name in (WEIGHTS_NAME, CONFIG_NAME, TASK_FILE):
                if (staging / name).exists():  # task.json: a file task's only
                    (staging / name).replace(trainer.output / name)
            staging.rmdir()
            saved = [trainer.output / name for name in (WEIGHTS_NAME, CONFIG_NAME)]
            metrics["adapter_bytes"] = sum(path.stat().st_size for path in saved if path.exists())
    if trainer.is_main:
        write_text_atomic(trainer.output / "metrics.json", json.dumps(metrics, indent=2) + "\n")

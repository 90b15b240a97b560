"""Running a training: one call from arguments to the run's record.

:func:`run_training` starts ``accelerate`` (one process or many: ``torchrun`` / ``accelerate launch``, DDP, or
FSDP2 with ``fsdp=True``), loads the data, model and method (:mod:`peftlab.train.plan`), refuses what cannot run
before it writes anything, trains (:mod:`peftlab.train.trainer`) and writes the record
(:mod:`peftlab.train.results`); ``--report-to`` trackers (:mod:`peftlab.train.trackers`) follow along.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from peftlab.train.args import ArgumentError, TrainArgs
from peftlab.train.distributed import mixed_precision
from peftlab.train.loss import resolve_loss
from peftlab.train.plan import Plan, clear_output_dir, make_plan
from peftlab.train.results import record_run
from peftlab.train.speedups.compile import block_classes
from peftlab.train.trackers import final_summary, open_trackers
from peftlab.train.trainer import Trainer


def run_training(args: TrainArgs, on_plan: Callable[[Plan], None] | None = None,
                 on_eval: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Fine-tune ``args.model`` on ``args.task`` with ``args.method``; returns the run's metrics
    (the same record as ``metrics.json``: scores, parameters, time, tokens/s, peak memory). ``on_plan`` sees
    the loaded data and adapted model before training (the sweep measures memory there); ``on_eval`` sees
    each evaluation's step and scores, and may raise to end the run there (``peftlab select`` prunes so)."""
    from accelerate import Accelerator

    # cpu=True on machines without CUDA also makes accelerate see a torchrun launch (gloo).
    accelerator = Accelerator(mixed_precision=mixed_precision(args.mixed_precision), cpu=not torch.cuda.is_available())
    started = time.perf_counter()
    plan = make_plan(args, world=accelerator.num_processes)  # data, model and method: the load phase
    load_s = time.perf_counter() - started
    if on_plan is not None:
        on_plan(plan)
    if args.fsdp and accelerator.num_processes < 2:
        raise ArgumentError("--fsdp shards across processes: launch with torchrun or accelerate launch (2+ processes)")
    if args.fsdp and args.resume:
        raise ArgumentError("--resume of an FSDP run is not supported yet: resume it without --fsdp under DDP")
    writes_text = plan.task.kind not in ("classification", "regression")
    loss_kind = resolve_loss(args.loss, plan.loaded.model, writes_text=writes_text, fsdp=args.fsdp)  # before any output
    if args.compile and not block_classes(plan.loaded.model):
        raise ArgumentError(f"--compile: {type(plan.loaded.model).__name__} declares no transformer blocks "
                            "(_no_split_modules) to compile; train without --compile")
    trackers = open_trackers(args, plan.output_dir, accelerator.is_main_process)  # imports each library: before
    if plan.output_dir is not None and accelerator.is_main_process:  # anything is written
        if args.overwrite and not args.resume and plan.output_dir.exists():
            clear_output_dir(plan.output_dir)
        plan.output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    trainer = Trainer(plan, accelerator, loss_kind, trackers)
    trainer.load_time_s, trainer.on_eval = load_s, on_eval
    with trainer.stop.installed(), trainer.trackers:  # SIGINT/SIGTERM: save after the step in progress, then
        metrics = record_run(trainer, trainer.train())  # exit 130/143; the trackers close the run as killed
        trainer.trackers.finish(final_summary(metrics))
        return metrics

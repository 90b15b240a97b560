"""Several runs in one process: K adapters trained at once on one frozen base (``peftlab train --seeds``,
a repeated ``--config``, ``peftlab bench --pack K``), each a *lane* with its own seed, data order, method,
optimizer, schedule, evaluation, best adapter, checkpoints, ``log.jsonl`` and ``metrics.json``.

Each lane's start is drawn exactly as its solo run draws it: the lane's own :func:`~peftlab.train.plan.make_plan`
runs (seed, data, model load with its new head, method applied), and its adapter's tensors, new head
included, are copied into the lane's named adapter on the shared base (the same export/import as saving and
loading the adapter), so lane and solo run start bit-identical (``tests/train/test_packed_run.py``). The
price: the model is loaded once per lane at start (one at a time), plus once for the shared base.

A step stacks every lane's next micro-batch into one forward with per-row adapters
(:func:`peftlab.train.several.packed_step`); each lane then clips and steps its own optimizer and schedule.
Without dropout each lane trains as its solo run does, to float rounding. With dropout the masks drawn
differ from a solo run's (one batch, padded to the longest row across lanes), so a lane's result is
reproduced by rerunning the same pack: the run is deterministic given its lanes (a rerun gives identical
scores), and ``peftlab bench`` records that pack's command (``--lanes``) as each packed run's ``reproduce``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

import peftlab
from peftlab.core.adapters import set_adapter
from peftlab.core.registry import get_method
from peftlab.core.serialization import adapter_state_dict, load_adapter_state_dict
from peftlab.train.args import UNTUNED, ArgumentError, TrainArgs
from peftlab.train.checkpoint import Progress, checkpoint_step, recovered_checkpoints
from peftlab.train.distributed import mixed_precision
from peftlab.train.faults import check_finite_loss
from peftlab.train.models import load_model
from peftlab.train.plan import clear_output_dir, make_plan, method_options, optimizer_steps
from peftlab.train.results import record_run
from peftlab.train.several import Lane, packed_step
from peftlab.train.speedups.fast_dropout import fast_dropout
from peftlab.train.trainer import Trainer

# What may differ between lanes; every other setting must agree, since the lanes share one model and one loop.
LANE_SETTINGS = ("method", "options", "seed", "learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm",
                 "output_dir")
NOT_PACKED_NOTE = "several adapters trained at once: each micro-batch padded, one row per example"


class PackError(ArgumentError):
    """These runs cannot train together in one process (``methods``: those that cannot share a base)."""

    def __init__(self, message: str, methods: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.methods = list(methods)


def lane_names(lanes: Sequence[TrainArgs]) -> list[str]:
    """``<method>-seed<seed>`` per lane, numbered where two would share a name."""
    names = [f"{args.method}-seed{args.seed}" for args in lanes]
    return [f"{name}-{index}" if names.count(name) > 1 else name for index, name in enumerate(names)]


def pack_problem(lanes: Sequence[TrainArgs]) -> str | None:
    """Why ``lanes`` cannot train together in one process, or None (checked before anything loads)."""
    first = lanes[0]
    for item in dataclasses.fields(TrainArgs):
        if item.name not in LANE_SETTINGS and any(getattr(a, item.name) != getattr(first, item.name) for a in lanes):
            values = ", ".join(repr(getattr(a, item.name)) for a in lanes)
            return f"the lanes differ in {item.name} ({values}); only {', '.join(LANE_SETTINGS)} may differ"
    for name, flag in (("fsdp", "--fsdp"), ("compile", "--compile")):
        if getattr(first, name):
            return f"{flag} is not supported with several adapters at once; train them one by one"
    if first.report_to:
        return "--report-to is not supported with several adapters at once yet; train them one by one to track them"
    if first.gradient_accumulation_steps > 1:
        return "--grad-accum > 1 is not supported with several adapters at once; raise --batch-size instead"
    if first.loss == "chunked":
        return "--loss chunked is not supported with several adapters at once (each lane's loss is taken from logits)"
    for args in lanes:
        if args.method == UNTUNED:
            return f"--method {UNTUNED} trains nothing: score it on its own"
        if get_method(args.method).hooks.training_hooks is not None:
            return (f"method {args.method!r} cannot train beside other adapters (its training hooks act on the "
                    "whole model); train it alone")
    outputs = [a.output_dir for a in lanes]
    if None in outputs and set(outputs) != {None} or None not in outputs and len(set(outputs)) < len(outputs):
        return f"each lane needs its own output folder, or none has one (got {outputs})"
    return None


def run_packed(lanes: Sequence[TrainArgs], names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Train ``lanes`` at once on one base; returns each lane's record (``metrics.json``), in order."""
    from accelerate import Accelerator

    names = list(names or lane_names(lanes))
    problem = pack_problem(lanes) if len(lanes) > 1 else None
    if problem is not None:
        raise PackError(f"cannot train these {len(lanes)} runs at once: {problem}")
    accelerator = Accelerator(mixed_precision=mixed_precision(lanes[0].mixed_precision),
                              cpu=not torch.cuda.is_available())
    if accelerator.num_processes > 1:
        raise PackError("several adapters at once run in one process: launch without torchrun/accelerate launch")
    if accelerator.mixed_precision == "fp16":  # one loss scaler cannot serve K optimizers stepping apart
        raise PackError("fp16 mixed precision is not supported with several adapters at once (its loss scaling): "
                        "use --mixed-precision bf16 or no")
    started = time.perf_counter()
    trainers = _lane_trainers(lanes, names, accelerator)
    load_s = time.perf_counter() - started
    for trainer in trainers:
        trainer.load_time_s = load_s
    with trainers[0].stop.installed():
        progress = PackedLoop(trainers, names).train()
        records = []
        for trainer, name, done in zip(trainers, names, progress):
            set_adapter(trainer.base, name)
            others = [other for other in names if other != name]
            records.append(record_run(trainer, done, {"lane": name, "packed_with": others}))
        return records


def _lane_trainers(lanes: Sequence[TrainArgs], names: list[str], accelerator: Any) -> list[Trainer]:
    """One :class:`Trainer` per lane, all on one base carrying every lane's adapter at its solo start."""
    plans, starts = [], []
    for args in lanes:  # each lane's own draw: data, head and adapter as its solo run (make_plan) has them
        plan = make_plan(args)
        starts.append({key: value.detach().clone() for key, value in adapter_state_dict(plan.loaded.model).items()})
        plan.loaded.model = None  # free it before the next lane loads
        plans.append(plan)
    shared = load_model(lanes[0].model, plans[0].task)
    if shared.load_note:
        print(shared.load_note, file=sys.stderr)
    for args, plan, name, start in zip(lanes, plans, names, starts):
        total = optimizer_steps(args, len(plan.train_examples), 1)
        try:
            peftlab.apply(shared.model, args.method, adapter_name=name, **method_options(args, shared.head, total))
        except Exception as error:  # a method that changes the base refuses to sit beside another adapter
            raise PackError(f"lane {name}: {error}", methods=[args.method]) from error
        set_adapter(shared.model, name)
        load_adapter_state_dict(shared.model, start, source=f"lane {name}'s initial adapter")
        plan.loaded = shared
    for args, plan in zip(lanes, plans):
        if plan.output_dir is not None:
            if args.overwrite and not args.resume and plan.output_dir.exists():
                clear_output_dir(plan.output_dir)
            plan.output_dir.mkdir(parents=True, exist_ok=True)
    trainers = [Trainer(plan, accelerator, "plain") for plan in plans]
    set_adapter(shared.model, names[0])
    trainers[0].build_model()
    for trainer, name in zip(trainers, names):
        trainer.share_model(trainers[0])
        trainer.not_packed, trainer.adapter_name = NOT_PACKED_NOTE, name
        set_adapter(shared.model, name)
        trainer.build_optimizer()  # the method's optimizer rule over this lane's parameters only
    steps = {(t.total_steps, t.groups_per_epoch) for t in trainers}
    if len(steps) > 1:
        raise PackError(f"the lanes' runs differ in length ((steps, steps per epoch): {sorted(steps)})")
    return trainers


class LaneFeed:
    """A lane's micro-batches in its own seed's order, read at its progress (so a resumed lane goes on)."""

    def __init__(self, trainer: Trainer, progress: Progress) -> None:
        self.trainer, self.progress, self.epoch, self.groups, self.tokens = trainer, progress, -1, [], 0

    def __iter__(self) -> LaneFeed:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.epoch != self.progress.epoch:
            self.epoch, self.groups = self.progress.epoch, self.trainer.epoch_groups(self.progress.epoch)
        (indices,) = self.groups[self.progress.groups_done]  # one micro-batch per step (no accumulation)
        self.tokens = sum(self.trainer.lengths[i] for i in indices)
        return self.trainer.local_batch(indices)


class PackedLoop:
    """The lanes' loop: one packed step, then each lane's logging, evaluation and checkpoints, with it active."""

    def __init__(self, trainers: list[Trainer], names: list[str]) -> None:
        self.trainers, self.names, self.model = trainers, names, trainers[0].base

    def forward_context(self) -> contextlib.AbstractContextManager:
        """What a solo run's forward runs under: mixed precision's autocast, fast dropout on CPU."""
        first, stack = self.trainers[0], contextlib.ExitStack()
        stack.enter_context(first.accelerator.autocast())
        stack.enter_context(fast_dropout(first.fast_dropout))
        return stack

    def each(self) -> Iterator[Trainer]:
        for trainer, name in zip(self.trainers, self.names):
            set_adapter(self.model, name)
            yield trainer

    def train(self) -> list[Progress]:
        up_to = _common_checkpoint(self.trainers)
        progress = [trainer.start(up_to) for trainer in self.each()]
        if len({p.step for p in progress}) > 1:
            raise PackError(f"--resume: the lanes' checkpoints are at different steps ({[p.step for p in progress]}); "
                            "resume needs one step saved by every lane")
        if progress[0].step == 0 and self.trainers[0].total_steps:
            for trainer, done in zip(self.each(), progress):
                done.before_training = trainer.score([s for s in trainer.plan.eval_sets if s.task.scored_before_training])
        feeds = [LaneFeed(trainer, done) for trainer, done in zip(self.trainers, progress)]
        lanes = [Lane(name, feed, t.optimizer, t.scheduler, t.args.max_grad_norm)
                 for name, feed, t in zip(self.names, feeds, self.trainers)]
        first, total = self.trainers[0], self.trainers[0].total_steps
        while progress[0].step < total:
            set_adapter(self.model, self.names)
            started = time.perf_counter()
            losses = packed_step(self.model, lanes, first.tokenizer.pad_token_id, self.forward_context)
            seconds = time.perf_counter() - started
            for trainer, done, feed, loss in zip(self.each(), progress, feeds, losses):
                if not torch.isfinite(torch.tensor(loss)):
                    check_finite_loss(torch.tensor(loss), done.step + 1, learning_rate=trainer.scheduler.get_last_lr()[0],
                                      last_checkpoint=None)
                done.train_time_s += seconds  # the pack's step: every lane spent it
                done.train_tokens += feed.tokens
                done.step, done.groups_done = done.step + 1, done.groups_done + 1
                done.loss_sum, done.loss_count = done.loss_sum + loss, done.loss_count + 1
                trainer.after_step(done, epoch_end=done.groups_done == trainer.groups_per_epoch)
            if first.stop.requested(first.accelerator):
                first.stop.stop(progress[0].step, total, first.output, lambda: [
                    trainer.checkpoint(done) for trainer, done in zip(self.each(), progress)][0].parent.parent)
        for trainer, done in zip(self.each(), progress):
            if done.last_eval_step != done.step:
                trainer.evaluate(done)
        return progress


def _common_checkpoint(trainers: list[Trainer]) -> int | None:
    """The newest step every lane has a complete checkpoint of (None: not resuming; 0: none in common)."""
    if not trainers[0].args.resume or trainers[0].output is None:
        return None
    saved = [{checkpoint_step(path) for path in recovered_checkpoints(Path(t.output))} for t in trainers]
    common = set.intersection(*saved)
    return max(common) if common else 0

"""The training loop: AdamW with linear warm-up and decay over the method's parameter groups, on the
``accelerate`` objects :func:`peftlab.train.loop.run_training` made (one process or many: DDP, or FSDP2).

Each optimizer step trains on one *accumulation group* of micro-batches. An epoch's order is a
permutation drawn from (seed, epoch) alone, so the data position is just (epoch, groups done):
a resumed run replays exactly what the killed one would have seen.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import peftlab
from peftlab.core.checkpointing import enable_activation_checkpointing
from peftlab.core.serialization import save_adapter
from peftlab.tasks.files import save_record
from peftlab.train.args import UNTUNED, ArgumentError
from peftlab.train.batching import accumulation_groups
from peftlab.train.checkpoint import Progress, full_parameters, latest_checkpoint, save_checkpoint
from peftlab.train.distributed import shard_blocks
from peftlab.train.encoding import collate, loss_items, sequence_length
from peftlab.train.evaluation import score_sets
from peftlab.train.faults import check_finite_loss, raise_out_of_memory
from peftlab.train.feature_cache import encode_cached
from peftlab.train.interrupt import SaveClock, StopRequest
from peftlab.train.loss import loss_function
from peftlab.train.packing import collate_packed, packing_problem
from peftlab.train.plan import EvalSet, Plan
from peftlab.train.resources import step_measures, trim_log, write_log_line
from peftlab.train.resume import resume_from
from peftlab.train.schedule import linear_schedule
from peftlab.train.speedups.compile import compile_blocks
from peftlab.train.speedups.fast_dropout import checkpoint_contexts, draws_dropout, fast_dropout
from peftlab.train.speedups.fused_ops import fuse
from peftlab.train.speedups.host_memory import keep_freed_memory
from peftlab.train.trackers import Trackers, run_config

MEMORY_SETTINGS = ("batch_size", "max_length", "gradient_checkpointing", "method")  # named when memory runs out
PREPARE_BATCHES = 4  # training micro-batches a method's prepare hook sees (e.g. Child-Tuning D's Fisher estimate)


class Trainer:
    """One run's training: build the model and optimizer, resume or prepare, step, evaluate, checkpoint."""

    def __init__(self, plan: Plan, accelerator: Any, loss_kind: str, trackers: Trackers | None = None) -> None:
        self.loss_kind = loss_kind  # "chunked" or "plain", from resolve_loss
        self.plan, self.args, self.accelerator = plan, plan.args, accelerator
        self.kept_freed_memory = (self.args.keep_freed_memory and accelerator.device.type == "cpu"
                                  and keep_freed_memory())  # peftlab.train.speedups.host_memory
        self.fast_dropout = (self.args.fast_dropout and accelerator.device.type == "cpu"
                             and draws_dropout(plan.loaded.model))  # peftlab.train.speedups.fast_dropout
        self.tokenizer, self.kind = plan.loaded.tokenizer, plan.loaded.kind
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.max_length = plan.loaded.max_length(self.args.max_length)
        self.features, self.tokenized = encode_cached(plan.task, plan.train_examples, self.tokenizer, self.kind,
                                                      self.max_length)  # {tokenize_s, features_cached}
        self.loss_items = [loss_items(feature, self.kind) for feature in self.features]
        self.lengths = [sequence_length(feature, self.kind) for feature in self.features]
        self.groups_per_epoch = len(self.epoch_groups(0))
        self.untuned = self.args.method == UNTUNED  # scored as loaded: no optimizer, no step, no adapter
        self.total_steps = 0 if self.untuned else self.args.max_steps or self.args.epochs * self.groups_per_epoch
        self.output = plan.output_dir
        self.is_main = accelerator.is_main_process
        self.eval_history: list[dict[str, float]] = []  # this process's evaluations (a resumed run's since resuming)
        self.stop, self.save_clock, self.saved_step = StopRequest(), SaveClock(self.args.save_minutes), None
        self.adapter_name: str | None = None  # where the base carries several adapters: this run's (packed_run)
        self.load_time_s, self.eval_time_s = 0.0, 0.0  # make_plan's time (run_training sets it); evaluations'
        self.grad_norm: torch.Tensor | None = None  # the last step's, before clipping (with --max-grad-norm)
        self.trackers = trackers or Trackers({}, None)  # --report-to (train.trackers); none on other processes
        self.on_eval: Callable[[int, dict[str, float]], None] | None = None  # run_training's; sees each evaluation

    # -- data -------------------------------------------------------------------------------------
    def epoch_groups(self, epoch: int) -> list[list[list[int]]]:
        """Accumulation groups of global micro-batches (example indices) for ``epoch`` (train.batching)."""
        return accumulation_groups(self.lengths, self.args.batch_size, self.world, self.args.gradient_accumulation_steps,
                                   self.args.seed, epoch, self.args.group_by_length)

    def local_batch(self, indices: list[int], everyone: bool = False) -> dict[str, torch.Tensor]:
        """This process's share of a global micro-batch (or all of it, so every process sees the same)."""
        chosen = indices if everyone else indices[self.rank::self.world]
        features = [self.features[i] for i in chosen]
        pad = self.tokenizer.pad_token_id
        batch = collate_packed(features, pad) if self.not_packed is None else collate(features, pad)
        return {key: value.to(self.accelerator.device) for key, value in batch.items()}

    # -- setup --------------------------------------------------------------------------------------
    def build(self) -> None:
        self.build_model()
        self.build_optimizer()

    def build_model(self) -> None:
        """The model side of :meth:`build`: train mode, checkpointing, hooks, packing, compile, fusing, placing."""
        args, model = self.args, self.plan.loaded.model
        model.train()  # from_pretrained returns the model in eval mode: its dropout (and the adapters') would be off
        if args.gradient_checkpointing:
            model.config.use_cache = False
            recompute = None if args.compile else checkpoint_contexts  # compiled blocks draw their own masks
            enable_activation_checkpointing(model, context_fn=recompute)  # non-reentrant
        self.base = model
        self.hooks = peftlab.training_hooks(model)
        writes_text = self.plan.task.kind not in ("classification", "regression")
        self.not_packed = packing_problem(model, self.kind, writes_text) if args.pack else "--no-pack"
        if self.not_packed is None:
            model.config.use_cache = False  # with a KV cache transformers would not see the packed examples
        self.compute_loss = loss_function(self.loss_kind, model)
        if args.compile and hasattr(model.config, "use_cache"):
            model.config.use_cache = False  # a cache object in the blocks' inputs would specialise each compiled block
        self.compiled_modules = compile_blocks(model) if args.compile else 0
        self.fused_modules = fuse(model) if args.fused_ops else 0  # outside the compiled blocks only
        if args.fsdp:
            model = shard_blocks(model.to(self.accelerator.device))
        else:
            model = self.accelerator.prepare_model(model)
        self.model = model

    def share_model(self, other: Trainer) -> None:
        """Train on ``other``'s built model (several adapters on one base: :mod:`peftlab.train.packed_run`)."""
        for name in ("base", "model", "hooks", "not_packed", "compute_loss", "compiled_modules", "fused_modules"):
            setattr(self, name, getattr(other, name))

    def build_optimizer(self) -> None:
        """The optimizer and schedule over the trainable parameters of the adapter in use."""
        args = self.args
        if self.untuned:
            return
        if not any(parameter.requires_grad for parameter in self.base.parameters()):
            raise ArgumentError(f"method {args.method!r} left no parameter of {args.model} to train; check its "
                                f"options (or use --method {UNTUNED} to score the base model as it is)")
        optimizer = peftlab.make_optimizer(self.base, args.learning_rate, args.weight_decay)  # paged AdamW for QLoRA on CUDA
        self.optimizer = self.accelerator.prepare_optimizer(optimizer)
        self.scheduler = linear_schedule(optimizer, math.ceil(args.warmup_ratio * self.total_steps), self.total_steps)

    def start(self, up_to: int | None = None) -> Progress:
        """Resume (from a checkpoint at step ``up_to`` or before, when given) or prepare; the progress to go on from."""
        resumed = (resume_from(self.output, self.args.resume_settings(), self.base, self.optimizer, self.scheduler,
                               self.hooks, up_to) if self.args.resume and self.output else None)
        if resumed is not None:
            checkpoint, progress = resumed
            if self.is_main:
                trim_log(self.output / "log.jsonl", progress.step)
                print(f"resuming from {checkpoint} (step {progress.step} of {self.total_steps})", file=sys.stderr)
            return progress
        if self.args.resume and self.is_main:  # nothing to resume from: start clean, without the killed run's lines
            trim_log(self.output / "log.jsonl", 0)
            print(f"--resume: no checkpoint in {self.output} yet; starting from step 0 of {self.total_steps}",
                  file=sys.stderr)
        if self.hooks.needs_prepare():  # the same first batches on every process, so all agree (e.g. on masks)
            first = [indices for group in self.epoch_groups(0) for indices in group][:PREPARE_BATCHES]
            self.hooks.prepare(self.base, [self.local_batch(indices, everyone=True) for indices in first])
        return Progress()

    # -- the loop -----------------------------------------------------------------------------------
    def train(self) -> Progress:
        """Build, resume or prepare, then step to the end; returns the progress, scored at its last step."""
        self.build()
        progress = self.start()
        if self.trackers.trackers:
            self.trackers.start(run_config(self.args, self.base), progress.step)
        if progress.step == 0 and self.total_steps:
            progress.before_training = self.score([i for i in self.plan.eval_sets if i.task.scored_before_training])
        bar = tqdm(total=self.total_steps, initial=progress.step, unit="step", dynamic_ncols=True,
                   desc=f"{self.args.method} {self.args.task}", disable=not (self.is_main and self.args.progress))
        while progress.step < self.total_steps:
            groups = self.epoch_groups(progress.epoch)
            for index in range(progress.groups_done, len(groups)):
                started = time.perf_counter()
                try:
                    loss, tokens = self.optimizer_step(groups[index], progress.step)
                except Exception as error:  # an allocation failure becomes a message with the options that help
                    raise_out_of_memory(error, {key: getattr(self.args, key) for key in MEMORY_SETTINGS})
                progress.train_time_s += time.perf_counter() - started
                progress.train_tokens += tokens
                progress.step, progress.groups_done = progress.step + 1, index + 1
                progress.loss_sum, progress.loss_count = progress.loss_sum + loss, progress.loss_count + 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}",
                                tok_s=f"{progress.train_tokens / max(progress.train_time_s, 1e-9):.0f}")
                self.after_step(progress, epoch_end=index + 1 == len(groups))
                if self.stop.requested(self.accelerator):
                    self.stop.stop(progress.step, self.total_steps, self.output, lambda: self.checkpoint(progress))
                if progress.step >= self.total_steps:
                    break
        bar.close()
        if progress.last_eval_step != progress.step:
            self.evaluate(progress)
        return progress

    def optimizer_step(self, group: list[list[int]], step: int) -> tuple[float, int]:
        """Forward and backward over the group's micro-batches, then one optimizer step. The gradient is that
        of the loss's mean over every term (token or example) of the whole group, on all processes: each
        micro-batch's mean is weighted by its share of the terms, so neither the number of processes nor
        gradient accumulation changes what a step trains (a mean of means would weigh a short sequence's
        tokens more)."""
        model, accelerator, losses, tokens = self.model, self.accelerator, [], 0
        group_items = max(1, sum(self.loss_items[i] for indices in group for i in indices))  # every rank agrees
        for position, indices in enumerate(group):
            batch = self.local_batch(indices)
            share = self.world * sum(self.loss_items[i] for i in indices[self.rank::self.world]) / group_items
            last = position == len(group) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model), accelerator.autocast():
                with fast_dropout(self.fast_dropout):
                    data_loss = self.compute_loss(model, batch)
                regularization = self.hooks.regularization(self.base)
                loss = data_loss + regularization
                if not torch.isfinite(loss.detach()).all():  # only then look for the checkpoint to name
                    check_finite_loss(loss, step + 1, learning_rate=self.scheduler.get_last_lr()[0],
                                      last_checkpoint=latest_checkpoint(self.output) if self.output else None)
                accelerator.backward(data_loss * share + regularization / len(group))
            losses.append(float(loss.detach()))
            tokens += sum(self.lengths[i] for i in indices[self.rank::self.world])  # non-pad tokens
        if self.args.max_grad_norm is not None:
            self.grad_norm = accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                         self.args.max_grad_norm)
        self.hooks.before_optimizer_step(self.base, step)
        self.optimizer.step()
        self.hooks.after_optimizer_step(self.base, step)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(losses) / len(losses), tokens

    def after_step(self, progress: Progress, epoch_end: bool) -> None:
        args, step = self.args, progress.step
        if step % args.logging_steps == 0 or epoch_end or step == self.total_steps:
            self.log({"type": "train", "step": step, "epoch": progress.epoch,
                      "loss": progress.loss_sum / max(1, progress.loss_count),
                      "lr": self.scheduler.get_last_lr()[0], "train_time_s": progress.train_time_s,
                      **step_measures(self.accelerator, progress, self.grad_norm)})
            progress.loss_sum, progress.loss_count = 0.0, 0
        due = step % args.eval_steps == 0 if args.eval_steps else epoch_end
        if due or step == self.total_steps:
            self.evaluate(progress)
        if epoch_end:
            progress.epoch, progress.groups_done = progress.epoch + 1, 0
        if self.output is not None and (epoch_end or (args.save_steps and step % args.save_steps == 0)
                                        or self.save_clock.due(self.accelerator)):
            self.checkpoint(progress)

    def checkpoint(self, progress: Progress) -> Path:
        """Write ``checkpoint-<step>`` (all ranks call this), once per step: a signal may follow an epoch end's."""
        if self.saved_step != progress.step:
            save_checkpoint(self.output, self.base, self.optimizer, self.scheduler, self.hooks, progress,
                            is_main=self.is_main, keep=self.args.save_total_limit,
                            settings=self.args.resume_settings(), adapter_name=self.adapter_name)
            self.saved_step = progress.step
            self.save_clock.saved()
        return self.output / f"checkpoint-{progress.step}"

    # -- evaluation and results ---------------------------------------------------------------------
    def evaluate(self, progress: Progress) -> None:
        """Score every eval set (on every process: FSDP needs them all), log, keep the best adapter."""
        started = time.perf_counter()
        ending = progress.step >= self.total_steps  # the extra tasks are scored once, at the end
        scores = self.score([item for item in self.plan.eval_sets if ending or not item.prefix])
        progress.last_eval, progress.last_eval_step = scores, progress.step
        self.eval_time_s += time.perf_counter() - started
        self.eval_history.append({"step": progress.step, **scores})
        self.log({"type": "eval", "step": progress.step, "epoch": progress.epoch, **scores})
        task = self.plan.task
        if progress.keep_if_best(scores[task.main_metric], task.greater_is_better) and self.output is not None \
                and not self.untuned:
            self.save_adapter_to(self.output / "best")
        if self.on_eval is not None:
            self.on_eval(progress.step, scores)

    def score(self, sets: list[EvalSet]) -> dict[str, float]:
        with self.accelerator.autocast():
            return score_sets(self.base, self.tokenizer, self.kind, sets, self.args, self.max_length,
                              self.accelerator.device)

    def save_adapter_to(self, path: Path) -> None:
        with full_parameters(self.model) if self.args.fsdp else contextlib.nullcontext():
            if self.is_main:
                save_adapter(self.base, path, adapter_name=self.adapter_name)
                save_record(self.plan.task, path)  # a file task's data and classes, for peftlab eval

    def log(self, record: dict[str, Any]) -> None:
        """A line of ``log.jsonl`` (with an output folder), also sent to the ``--report-to`` trackers."""
        if not self.is_main:
            return
        if self.output is not None:
            write_log_line(self.output / "log.jsonl", record)
        self.trackers.log(record)

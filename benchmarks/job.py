"""A measurement job and the training step it measures: the job's model, adapted as its library adapts it
(peftlab, HF peft, the frozen-base floor or full fine-tuning), with the step's features, and one optimizer
step of it. ``measure.py`` times it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import peft
import torch
from torch import nn

import peftlab
from peftlab.core.checkpointing import enable_activation_checkpointing
from peftlab.train.speedups.compile import compile_blocks
from peftlab.train.speedups.fast_dropout import checkpoint_contexts, fast_dropout
from peftlab.train.speedups.fused_ops import fuse
from peftlab.train.speedups.losses import lm_loss

from method_entries import METHODS
from workloads import WORKLOADS, build_model, make_batch

LR = 1e-4


@dataclass(frozen=True)
class Job:
    workload: str
    setting: str
    library: str  # "peftlab", "peft", "floor" (frozen base, one trainable scalar) or "full"
    method: str = ""  # for "floor": the method whose base the floor runs (its own floor), or "" for the plain base
    step: str = "plain"  # "plain" (model(**batch).loss) or "chunked" (peftlab lm_loss), then "+fused", "+ckpt", "+compile", "+fastdrop"
    kind: str = "train"  # or "infer", "flops" (one eager step's matmul FLOPs), "paired" (against the own floor),
    #                      "versus" (against HF peft's step, ``partner_step``, in the same process)
    steps: int = 3
    warmup: int = 1
    threads: int = 2
    device: str = "cpu"
    partner_step: str = "plain"  # the peft side's step of a "versus" job
    host_memory: str = "keep"  # "keep": malloc keeps freed blocks (train.speedups.host_memory); "system": glibc's

    @property
    def key(self) -> str:
        return "/".join((self.kind, self.workload, self.library, self.method or "-", self.step))


def own_floor(job: Job) -> Job:
    """The floor job of ``job``'s method: the base as the method runs it (see ``MethodEntry.changes_the_base``)."""
    return replace(job, library="floor", method=job.method if METHODS[job.method].changes_the_base else "")


def _floor(model: nn.Module) -> list[nn.Parameter]:
    """Everything frozen; one scalar scales the embedding output, so backward still crosses every layer."""
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    scale = nn.Parameter(torch.ones((), device=next(model.parameters()).device))
    shared = model.get_input_embeddings().weight
    for module in model.modules():  # T5's stacks hold their own modules around the shared weight
        if isinstance(module, nn.Embedding) and module.weight is shared:
            module.register_forward_hook(lambda _m, _i, output: output * scale)
    return [scale]


def adapt(job: Job, model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer, Callable[[int], None], int]:
    """Apply the job's method; returns (model, optimizer, per-step hook, trainable count).

    peftlab rows use ``peftlab.make_optimizer`` (AdamW, or what the method asks for); the others AdamW."""
    workload = WORKLOADS[job.workload]
    if job.library == "floor":
        if job.method and METHODS[job.method].prepare_base is not None:
            METHODS[job.method].prepare_base(model, workload)
        return model, torch.optim.AdamW(_floor(model), lr=LR), lambda step: None, 1
    if job.library == "full":
        model.requires_grad_(True)
        trainable = sum(p.numel() for p in model.parameters())
        return model, torch.optim.AdamW(model.parameters(), lr=LR), lambda step: None, trainable
    entry = METHODS[job.method]
    if entry.prepare_base is not None:
        entry.prepare_base(model, workload)
    if job.library == "peft":
        model = peft.get_peft_model(model, entry.peft_config(model, workload))
        after = entry.peft_after_step or (lambda _model, _step: None)
        optimizer = (entry.peft_optimizer(model, LR) if entry.peft_optimizer is not None  # may freeze (LoRA-FA's A)
                     else torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model, optimizer, lambda step: after(model, step), trainable
    peftlab.apply(model, entry.registered_name, **entry.peftlab_options(model, workload))
    hooks = peftlab.training_hooks(model)
    if hooks.needs_prepare():
        hooks.prepare(model, [make_batch(workload, job.setting)])
    optimizer = peftlab.make_optimizer(model, lr=LR)
    return model, optimizer, lambda step: hooks.after_optimizer_step(model, step), peftlab.parameter_counts(model)[0]


@dataclass
class Prepared:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    after_step: Callable[[int], None]
    trainable: int
    compute_loss: Callable[[], torch.Tensor]  # with the method's regularization (AdaLoRA's), if any
    hooks: Any  # peftlab's training hooks, or None for the other libraries


def prepare(job: Job, features: set[str]) -> Prepared:
    """The job's model, adapted, with the step's features applied, its batch and its loss."""
    workload = WORKLOADS[job.workload]
    model = build_model(workload, job.setting).to(job.device)
    model, optimizer, after_step, trainable = adapt(job, model)
    model.train()
    if "ckpt" in features:
        enable_activation_checkpointing(model, context_fn=None if "compile" in features else checkpoint_contexts)
    if "compile" in features:
        compile_blocks(model)  # before fuse, which leaves what the compiler fuses alone
    if "fused" in features:
        fuse(model)
    lead_tokens = METHODS[job.method].lead_tokens if job.library == "floor" and job.method else 0
    batch = {name: value.to(job.device) for name, value in make_batch(workload, job.setting, lead_tokens=lead_tokens).items()}
    if "compile" in features and workload.task != "classify":
        batch["use_cache"] = False  # lm_loss does this itself; the plain loss needs telling
    model_loss = (lambda: lm_loss(model, batch)) if "chunked" in features else (lambda: model(**batch).loss)

    def loss_only() -> torch.Tensor:
        with fast_dropout("fastdrop" in features):
            return model_loss()

    hooks = peftlab.training_hooks(model) if job.library == "peftlab" else None
    compute_loss = loss_only if hooks is None else (lambda: loss_only() + hooks.regularization(model))
    return Prepared(model, optimizer, after_step, trainable, compute_loss, hooks)


def train_step(prepared: Prepared, step: int) -> float:
    """One optimizer step; returns the loss (``item()``: the step has finished when it returns)."""
    loss = prepared.compute_loss()
    loss.backward()
    if prepared.hooks is not None:
        prepared.hooks.before_optimizer_step(prepared.model, step)
    prepared.optimizer.step()
    prepared.after_step(step)
    prepared.optimizer.zero_grad(set_to_none=True)
    return loss.item()

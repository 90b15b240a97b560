"""The jobs a side-by-side comparison runs, from its command line (``compare_peft.parse``): the training rows
with their floors, the paired and versus rounds, the inference rounds, and one FLOP count per computation.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from job import Job, own_floor
from method_entries import METHODS
from report_tables import flop_job
from workloads import WORKLOADS, Workload


def peftlab_methods() -> set[str]:
    import peftlab

    return set(peftlab.list_methods())


def train_jobs(args: argparse.Namespace) -> list[Job]:
    registered = peftlab_methods()
    jobs = []
    for name in args.models:
        task = WORKLOADS[name].task
        ours, theirs = (step_for(WORKLOADS[name], args.peftlab_step), step_for(WORKLOADS[name], args.peft_step))
        common = {"workload": name, "setting": args.setting, "steps": args.steps, "warmup": args.warmup,
                  "threads": args.threads, "device": args.device}
        extras = [step_for(WORKLOADS[name], extra) for extra in args.extra_steps if task != "classify"]
        extras = [extra for extra in extras if extra != ours]
        steps = list(dict.fromkeys((theirs, ours, *extras)))  # every step a row runs: each gets its floor
        jobs += [Job(library="floor", **common), Job(library="full", **common)]
        jobs += [Job(library="floor", step=step, **common) for step in steps if step != "plain"]
        for method in args.model_methods.get(name, args.methods):
            if METHODS[method].changes_the_base:
                jobs += [Job(library="floor", method=method, step=step, **common) for step in steps]
            jobs.append(Job(library="peft", method=method, step=theirs, **common))
            if METHODS[method].registered_name in registered:
                jobs.append(Job(library="peftlab", method=method, step=ours, **common))
                jobs += [Job(library="peftlab", method=method, step=extra, **common) for extra in extras]
    return jobs


def paired_jobs(args: argparse.Namespace) -> list[Job]:
    """Each peftlab method against its own floor in one process, with peftlab's step."""
    registered = peftlab_methods()
    return [Job(workload=name, setting=args.setting, library="peftlab", method=method, kind="paired",
                step=step_for(WORKLOADS[name], args.peftlab_step), steps=args.steps, warmup=args.warmup,
                threads=args.threads, device=args.device)
            for name in args.models for method in args.model_methods.get(name, args.methods)
            if METHODS[method].registered_name in registered]


def versus_jobs(args: argparse.Namespace) -> list[Job]:
    """Each method's peftlab step against peft's, in one process (``measure.run_versus``)."""
    registered = peftlab_methods()
    return [Job(workload=name, setting=args.setting, library="peftlab", method=method, kind="versus",
                step=step_for(WORKLOADS[name], args.peftlab_step),
                partner_step=step_for(WORKLOADS[name], args.peft_step), steps=args.steps, warmup=args.warmup,
                threads=args.threads, device=args.device)
            for name in args.models for method in args.model_methods.get(name, args.methods)
            if METHODS[method].registered_name in registered]


def step_for(workload: Workload, step: str) -> str:
    """``step`` as it applies to ``workload``: a classifier has no vocabulary to chunk (and BERT-style models no
    RMSNorm to fuse); a model that trains with dropout is not compiled (on CPU the compiled dropout's random
    numbers cost more than the fusion saves: T5 LoRA 0.60 s against 0.49 s eager, RoBERTa 0.54 against 0.50)
    and only such a model has masks for fast dropout (``peftlab.train.speedups.fast_dropout``) to draw."""
    loss, *features = step.split("+")
    if workload.task == "classify":
        loss, features = "plain", [f for f in features if f != "fused"]
    drop = "compile" if workload.dropout else "fastdrop"
    return "+".join([loss, *(f for f in features if f != drop)])


def infer_jobs(args: argparse.Namespace) -> list[Job]:
    registered = peftlab_methods()
    jobs = []
    for name in args.models:
        for method in (m for m in args.model_methods.get(name, args.methods) if METHODS[m].mergeable):
            for library in ("peft", "peftlab") if METHODS[method].registered_name in registered else ("peft",):
                jobs.append(Job(workload=name, setting=args.setting, library=library, method=method, kind="infer",
                                steps=args.infer_rounds, warmup=1, threads=args.threads, device=args.device))
    return jobs


def flop_jobs(training: list[Job], paired: list[Job] = ()) -> list[Job]:
    """One FLOP count (``measure.run_flops``) per distinct computation among the training jobs and both sides
    of the paired ones: compiling changes how fast a step runs, not what it computes, so ``+compile``
    variants share one count."""
    counted = {}
    for job in [*training, *paired, *map(own_floor, paired)]:
        job = flop_job(job)
        counted.setdefault(job.key, job)
    return list(counted.values())


def all_jobs(args: argparse.Namespace) -> tuple[list[Job], list[Job], list[Job], list[Job]]:
    """The training, paired, versus and inference jobs ``--kinds`` asks for, each run with ``--host-memory``."""
    kinds = {"train": train_jobs, "paired": paired_jobs, "versus": versus_jobs, "infer": infer_jobs}
    chosen = set(args.kinds) - ({"infer"} if args.no_inference else set())
    return tuple([replace(job, host_memory=args.host_memory) for job in (build(args) if kind in chosen else [])]
                 for kind, build in kinds.items())  # type: ignore[return-value]

"""Side-by-side speed and memory of peftlab and HF peft, with the frozen-base floor and full fine-tuning.

    python benchmarks/compare_peft.py --setting quick                    # smoke run, a few minutes
    python benchmarks/compare_peft.py --setting moderate --repeats 3     # what RESULTS.md shows

Each measurement is its own process (``measure.py``); the job list is run ``--repeats`` times, alternating its
order, and every number reported is the median over repeats. The peftlab rows use peftlab's training step as
``peftlab train --compile`` runs it (step ``chunked+fused+compile+fastdrop``): for language models the chunked
cross-entropy (``peftlab.train.speedups.losses.lm_loss``), each transformer block compiled with
``torch.compile`` (``peftlab.train.speedups.compile``) and fused RMSNorm/SwiGLU
(``peftlab.train.speedups.fused_ops``) where no block is compiled; for classifiers the model's own loss.
Models that train with dropout (RoBERTa, T5) are not compiled: on CPU their compiled step is slower than the
eager one (``comparison_jobs.step_for`` has the numbers); they draw their dropout masks as ``peftlab train``
does on CPU (``peftlab.train.speedups.fast_dropout``: four masks per 64-bit random draw), their floors too.
Without ``--compile``, ``peftlab train`` runs ``chunked+fused+fastdrop`` (``--extra-steps
chunked+fused+fastdrop`` measures it too). The peft rows use the plain ``model(**batch).loss`` (what peft
gives; ``--peft-step plain+compile`` compiles peft's blocks the same way, for reference); the full row too.
"vs floor" divides by the frozen-base floor measured with the row's own step, so it isolates the adapter's own
cost. "vs own floor" divides by the floor of the base as the method runs it, where the method changes what the
base computes: prompt tuning's base reads 20 more input tokens, QLoRA's holds NF4 weights
(``MethodEntry.changes_the_base``; those floors have their own rows); for every other method it is "vs floor".
On the decoder-only models peftlab's prompt tuning runs each batch packed behind one copy of the prompt
(``shared_prompt``), so it computes less than that floor, which prepends the prompt to every example as peft
does: "FLOPs vs own floor" shows how much less, and "vs own floor" can read below 1.00x. Compiling happens in
the warm-up steps, which are not timed. "FLOPs vs own floor" is the same division for the matrix-multiply
FLOPs of one forward and backward, counted once per row with ``torch.utils.flop_counter`` on the eager step
(``measure.run_flops``): the arithmetic the method adds, which no implementation can skip (full fine-tuning's
weight gradients: 1.5x). Where it is well above 1.00x (QLoRA's r=64 LoRA on all seven linears of every block),
"vs own floor" can only come close to it; the ``qlora_qv`` rows run QLoRA at LoRA's size (r=8 on q and v, the
same NF4 base), where it adds what LoRA adds, so they read the 4-bit adapter's own cost apart from that
arithmetic.

"Paired" (``--kinds paired``): the method's step and its own floor's, both models in one process, steps
interleaved in alternating order (``measure.run_paired``); "vs own floor" is the median of the rounds' own
ratios. Separate processes differ by a few percent from one to the next on a shared machine, as much as an
adapter's own cost, so this is the reading of that cost; the training table's "vs own floor" divides medians
of separate processes. "vs own floor per FLOP" divides it by "FLOPs vs own floor": what the step costs beyond
the arithmetic the method adds, were that arithmetic as fast as the floor's (1.00x: nothing beyond it).
"ms over own floor" is the median of the rounds' differences: the adapter's cost in time, which stays put
when the machine's speed moves the floor and with it the ratio.
"Versus" (``--kinds versus``) reads "vs peft" the same way: peftlab's step and peft's for one method, in one
process, interleaved (``measure.run_versus``). It is fair where both sides run alike (the classifiers, whose
step is the model's own loss in both libraries); where they differ much, sharing the process slows one side:
peft's SmolLM2 LoRA step (full-vocabulary logits) took 1.40 s alone and 1.53 s interleaved with peftlab's
compiled chunked step, while LLaMA's (a smaller vocabulary) took 0.480 and 0.481 s. Read those models in the
training table.

Inference: the adapted model's forward (unmerged, then merged once as it is served) against the same model
with every adapter wrapper swapped for the layer it wraps, so both sides read the very same weight tensors
(``measure.bare``); forwards alternate round by round, times are the best round, "vs base" the median of
the rounds' own ratios. A merged peftlab model runs exactly the base model's operations (tested op by op in
``tests/core/test_accounting_and_merge.py``), so its "vs base" shows the machine's noise.

Memory, two ways. "peak MB" is the process's peak: RSS on CPU (what the machine must have; it includes
memory the C allocator keeps after tensors are freed, which varies from run to run) or ``max_memory_allocated``
on a GPU. "step tensors MB" is the most tensor memory one training step holds beyond the resident model and
optimizer state (activations, gradients, the loss's buffers), from one extra profiled step: the profiler's
running allocation total on CPU, ``max_memory_allocated`` minus what was allocated before the step on a GPU.

Host memory: on CPU every process, peft's and the floors' as well as peftlab's, keeps the blocks it frees
for the next step (``--host-memory keep``, ``peftlab.train.speedups.host_memory``), as ``peftlab train`` does;
without it glibc maps and zeroes each step's large tensors afresh, which costs a method that allocates
more than its floor more than the floor. ``--host-memory system`` measures glibc's default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import peft
import torch
import transformers

from peftlab.core.atomic import write_text_atomic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from comparison_jobs import all_jobs, flop_jobs  # noqa: E402
from job import Job  # noqa: E402
from method_entries import METHODS  # noqa: E402
from report_tables import infer_table, paired_table, train_table, versus_table  # noqa: E402
from workloads import WORKLOADS  # noqa: E402


def run_job(job: Job) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(HERE / "measure.py"), json.dumps(asdict(job))],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_all(jobs: list[Job], repeats: int, after_repeat: Callable[[dict[str, list[dict]], int], None]
            ) -> dict[str, list[dict]]:
    """Every job ``repeats`` times; ``after_repeat(results, done)`` writes the report so far, so a run cut
    short (a time limit on a lent machine, say) still leaves the medians of the repeats it finished."""
    results: dict[str, list[dict]] = {job.key: [] for job in jobs}
    for repeat in range(repeats):
        for job in jobs if repeat % 2 == 0 else list(reversed(jobs)):
            started = time.perf_counter()
            outcome = run_job(job)
            results[job.key].append(outcome)
            shown = outcome.get("error") or {k: round(v, 3) for k, v in outcome.items()
                                             if isinstance(v, float)}
            print(f"[{repeat + 1}/{repeats}] {job.key}: {shown} ({time.perf_counter() - started:.0f}s)", flush=True)
        after_repeat(results, repeat + 1)
    return results


def machine(args: argparse.Namespace) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = (f"GPU: {torch.cuda.get_device_name()} (timings synchronised, memory = max_memory_allocated)"
           if torch.cuda.is_available() else "no GPU was available for this run (memory = peak RSS of each process)")
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {args.threads} torch threads, host memory {args.host_memory} "
            f"(--host-memory); torch {torch.__version__}, "
            f"transformers {transformers.__version__}, peft {peft.__version__}; {gpu}")


def _step(text: str) -> str:
    loss, *features = text.split("+")
    if loss not in ("plain", "chunked") or not set(features) <= {"fused", "ckpt", "compile", "fastdrop"}:
        raise argparse.ArgumentTypeError(f"{text!r}: a step is plain or chunked, then any of +fused, +ckpt, +compile, "
                                         "+fastdrop")
    return text


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=("quick", "moderate", "issue"), default="quick")
    parser.add_argument("--models", type=lambda s: s.split(","), default=list(WORKLOADS),
                        help="comma-separated; 'name=m1+m2' measures only those methods on that model")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument("--peftlab-step", default="chunked+fused+compile+fastdrop", type=_step,
                        help="peftlab's step for LMs: plain or chunked loss, then +fused (RMSNorm, SwiGLU), +ckpt, "
                             "+compile (torch.compile each block), +fastdrop (peftlab.train.speedups.fast_dropout); "
                             "classifiers keep only +compile and +fastdrop (see comparison_jobs.step_for)")
    parser.add_argument("--peft-step", default="plain", type=_step,
                        help="the peft rows' step: plain (what peft gives), or plain+compile to compile peft's blocks too")
    parser.add_argument("--extra-steps", type=lambda s: [_step(x) for x in s.split(",") if x], default=[],
                        help="more peftlab steps to measure for LMs, e.g. plain,chunked+ckpt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per process (after warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--infer-rounds", type=int, default=8,
                        help="inference rounds per process and phase (unmerged, then merged): one forward of the "
                             "base and one of the adapted model each")
    parser.add_argument("--kinds", type=lambda s: s.split(","), default=["train", "infer"],
                        help="comma-separated: train (the training table), paired (each method against its own "
                             "floor in one process), versus (peftlab against peft in one process), infer "
                             "(inference latency)")
    parser.add_argument("--no-inference", action="store_true", help="the same as leaving infer out of --kinds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--host-memory", choices=("keep", "system"), default="keep",
                        help="keep: every process's malloc keeps freed blocks for reuse, as peftlab train does on "
                             "CPU (peftlab.train.speedups.host_memory); system: glibc's default, which returns them")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = parser.parse_args(argv)
    args.model_methods = {m.split("=")[0]: m.split("=")[1].split("+") for m in args.models if "=" in m}
    args.models = [m.split("=")[0] for m in args.models]
    chosen = args.methods + [m for ms in args.model_methods.values() for m in ms]
    if not set(args.kinds) <= {"train", "paired", "versus", "infer"}:
        parser.error(f"--kinds {','.join(args.kinds)}: choose from train, paired, versus, infer")
    unknown = [m for m in chosen if m not in METHODS] + [m for m in args.models if m not in WORKLOADS]
    if unknown:
        parser.error(f"unknown method/model {unknown}; methods: {sorted(METHODS)}, models: {sorted(WORKLOADS)}")
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    training, paired, versus, inference = all_jobs(args)

    def write(results: dict[str, list[dict]], done: int) -> list[str]:
        command = "python benchmarks/compare_peft.py " + shlex.join(argv)
        title = ("peftlab vs HF peft: training step and inference" if training or inference else
                 "peftlab: each method against its own floor" if not versus else
                 "peftlab vs HF peft, interleaved in one process" if not paired else
                 "peftlab: each method against HF peft and against its own floor, interleaved in one process")
        timed = (f"{args.steps} steps" if training or inference else
                 f"{args.steps} rounds (one step of each side: the method and its floor, or peftlab and peft)")
        out = [f"# {title}", "",
               f"Command: `{command}`  ", f"Started {started}, finished {time.strftime('%H:%M UTC', time.gmtime())}; "
               f"load average at start {load:.1f}, at end {os.getloadavg()[0]:.1f}.  ",
               f"Machine: {machine(args)}.  ",
               f"Every number is the median of {done} processes{' (order alternated)' if done > 1 else ''}, each timing "
               f"{timed} after {args.warmup} warm-up. Random-init models; AdamW; same batch in every row."
               + (f" **Partial: {done} of {args.repeats} repeats done.**" if done < args.repeats else ""), ""]
        if training:
            out += ["## Training step", ""]
            for name in args.models:
                out += train_table(name, [j for j in training if j.workload == name], results)
        if paired:
            out += ["## Each method against its own floor, interleaved in one process", ""]
            out += paired_table(paired, results)
        if versus:
            out += ["## peftlab against HF peft, interleaved in one process", ""]
            out += versus_table(versus, results)
        if inference:
            out += ["## Inference (forward, no grad): base vs adapter unmerged vs merged", ""]
            out += infer_table(inference, results)
        out += [__doc__.split("\n\n", 2)[2].strip(), ""]
        write_text_atomic(args.out, "\n".join(out) + "\n<!-- raw medians' inputs: " + json.dumps(results) + " -->\n")
        return out

    counts = {job.key: [run_job(job)] for job in flop_jobs(training, paired)}  # once: a count does not vary
    results = {**counts, **run_all(training + paired + versus + inference, args.repeats, lambda r, done: write({**counts, **r}, done))}
    print("\n".join(write(results, args.repeats)))


if __name__ == "__main__":
    main(sys.argv[1:])

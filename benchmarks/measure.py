"""One measurement, in its own process: a few training steps (or forward passes) of one model + method.

Run by ``compare_peft.py`` as ``python benchmarks/measure.py '<job json>'``; prints one JSON line.
Every process imports torch, transformers, peft and peftlab alike, so peak RSS differs only by what
the measured step allocates.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import peft  # noqa: E402  (imported in every process alike, see above)
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import peftlab  # noqa: E402
from peftlab.core.targeting import replace_module  # noqa: E402
from peftlab.train.speedups.host_memory import keep_freed_memory  # noqa: E402

from job import Job, Prepared, adapt, own_floor, prepare, train_step  # noqa: E402
from workloads import WORKLOADS, build_model, make_batch  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _step_tensor_peak_mb(step: Callable[[], None], device: str) -> float:
    """The most tensor memory one step holds beyond what existed before it (activations, gradients, the
    loss's buffers): CUDA's max_memory_allocated, or on CPU the profiler's running allocation total, which
    unlike peak RSS does not depend on how the C allocator reuses freed memory."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    with tempfile.TemporaryDirectory() as folder:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
            step()
        trace = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0]
    return max([0, *totals]) / 2**20


def run_flops(job: Job) -> dict[str, Any]:
    """The matrix-multiply FLOPs of one training step's forward and backward (``FlopCounterMode``), run
    eagerly: compiling changes how fast the step runs, not what it computes. Set against the floor's count
    it is the adapter's own arithmetic, which no implementation can skip."""
    prepared = prepare(job, set(job.step.split("+")) - {"compile"})
    with FlopCounterMode(display=False, custom_mapping=_custom_flop_formulas()) as counter:
        prepared.compute_loss().backward()
    return {"flops": float(counter.get_total_flops())}


def _custom_flop_formulas() -> dict[Any, Callable[..., int]]:
    """FLOPs of the matmuls torch's counter does not know: bitsandbytes' 4-bit forward (its backward
    dequantizes and runs a plain ``mm``, which is counted)."""
    if "bitsandbytes" not in sys.modules:  # not imported: no 4-bit layer in this process
        return {}
    gemm_4bit = getattr(torch.ops.bitsandbytes, "gemm_4bit", None)
    if gemm_4bit is None:
        return {}

    def nf4_matmul(a_shape: torch.Size, *_: Any, out_shape: torch.Size, **__: Any) -> int:
        return 2 * math.prod(out_shape) * a_shape[-1]

    return {gemm_4bit: nf4_matmul}


def run_train(job: Job) -> dict[str, Any]:
    prepared = prepare(job, set(job.step.split("+")))
    model, optimizer, trainable = prepared.model, prepared.optimizer, prepared.trainable
    times, losses = [], []
    for step in range(job.warmup + job.steps):
        _sync(job.device)
        start = time.perf_counter()
        losses.append(train_step(prepared, step))
        _sync(job.device)
        times.append(time.perf_counter() - start)
    peak_mb = _peak_mb(job.device)  # before the profiled step below, which adds its own buffers
    step_tensor_mb = _step_tensor_peak_mb(lambda: train_step(prepared, job.warmup + job.steps), job.device)
    trainable_ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    frozen_with_grad = sum(1 for p in model.parameters() if p.grad is not None and id(p) not in trainable_ids)
    optimizer_state = sum(t.numel() for state in optimizer.state.values() for key, t in state.items()
                          if isinstance(t, torch.Tensor) and key != "step")
    return {"step_s": statistics.median(times[job.warmup:]), "peak_mb": peak_mb, "step_tensor_mb": step_tensor_mb,
            "trainable": trainable, "first_loss": losses[0], "frozen_with_grad": frozen_with_grad,
            "optimizer_state": optimizer_state}


def run_paired(job: Job) -> dict[str, Any]:
    """The method's training step against its own floor's, both models in one process, steps interleaved.

    Separate processes (``run_train``) differ by a few percent from process to process on a shared machine
    (where the allocator placed memory, what else ran meanwhile), which is as large as an adapter's own cost
    over the floor. Here a round runs one step of each model back to back, in alternating order, so a slow
    stretch slows both sides of a round alike; "vs floor" is the median of the rounds' own ratios. Peak
    memory is not measured here: the process holds both models. "over_floor_s", the median of the rounds'
    differences, is the adapter's cost in seconds: it stays put when the machine's speed moves the ratio."""
    features = set(job.step.split("+"))
    times = _interleaved(job, {"floor": prepare(own_floor(job), features), "adapted": prepare(job, features)})
    rounds = list(zip(times["adapted"], times["floor"]))
    return {"step_s": statistics.median(times["adapted"]), "floor_step_s": statistics.median(times["floor"]),
            "vs_floor": statistics.median(a / b for a, b in rounds),
            "over_floor_s": statistics.median(a - b for a, b in rounds)}


def run_versus(job: Job) -> dict[str, Any]:
    """peftlab's training step (``job.step``) against HF peft's (``job.partner_step``) for the same method,
    model and batch, interleaved in one process as :func:`run_paired` does; "vs peft" is the median of the
    rounds' own ratios."""
    partner = replace(job, library="peft", step=job.partner_step)
    times = _interleaved(job, {"peft": prepare(partner, set(partner.step.split("+"))),
                               "peftlab": prepare(job, set(job.step.split("+")))})
    return {"step_s": statistics.median(times["peftlab"]), "peft_step_s": statistics.median(times["peft"]),
            "vs_peft": statistics.median(a / b for a, b in zip(times["peftlab"], times["peft"]))}


def _interleaved(job: Job, sides: dict[str, Prepared]) -> dict[str, list[float]]:
    """Each round one training step of every side, the order reversed every other round; the timed rounds'
    seconds per side (the first ``job.warmup`` rounds are not timed)."""
    times: dict[str, list[float]] = {side: [] for side in sides}
    for round_ in range(job.warmup + job.steps):
        for side in sides if round_ % 2 == 0 else reversed(sides):
            _sync(job.device)
            start = time.perf_counter()
            train_step(sides[side], round_)
            _sync(job.device)
            if round_ >= job.warmup:
                times[side].append(time.perf_counter() - start)
    return times


def _forward_ms(model: nn.Module, batch: dict[str, torch.Tensor], device: str, repeats: int) -> float:
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            model(**batch)
            _sync(device)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@contextmanager
def bare(model: nn.Module) -> Iterator[nn.Module]:
    """The adapted model's own transformers model with every adapter wrapper swapped for the layer it wraps:
    the base computation on the very same weight tensors (the merged ones while merged), so timing it
    against the adapted forward compares like with like, memory placement included."""
    inner = model.get_base_model() if isinstance(model, peft.PeftModel) else model
    wrappers = []
    for name, module in list(inner.named_modules()):
        if isinstance(getattr(module, "base_layer", None), nn.Module) and not any(
                name.startswith(f"{outer}.") for outer, _ in wrappers):
            wrappers.append((name, module))
    for name, wrapper in wrappers:
        replace_module(inner, name, wrapper.base_layer)
    try:
        yield inner
    finally:
        for name, wrapper in wrappers:
            replace_module(inner, name, wrapper)


def run_infer(job: Job) -> dict[str, Any]:
    """Adapted and bare (:func:`bare`) forward latency in one process: first with the adapter unmerged, then
    merged once (as it is served) and warmed up again, since the first forwards after a merge pay for the
    memory the merge freed and no served request sees that.

    In each phase a round times one forward of the bare model and one of the adapted model, back to back,
    in alternating order. Times are the best of the rounds (interference on a shared machine only ever
    adds time); "vs base" is the median of the rounds' own ratios, so a slow stretch slows both sides of a
    ratio alike instead of landing on one of them."""
    workload = WORKLOADS[job.workload]
    model, _, _, _ = adapt(job, build_model(workload, job.setting).to(job.device))
    model.eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # move the adapter off its identity start so merging changes weights
        for parameter in (p for p in model.parameters() if p.requires_grad):
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator).to(parameter))
    batch = {name: value.to(job.device) for name, value in make_batch(workload, job.setting, with_labels=False).items()}
    results: dict[str, float] = {}
    for phase in ("unmerged", "merged"):
        if phase == "merged":
            model.merge_adapter() if job.library == "peft" else peftlab.merge(model)
        times: dict[str, list[float]] = {"adapted": [], "bare": []}
        for round_ in range(-1, job.steps):  # round -1 warms both up
            for which in ("bare", "adapted") if round_ % 2 == 0 else ("adapted", "bare"):
                if which == "bare":
                    with bare(model) as plain:
                        elapsed = _forward_ms(plain, batch, job.device, 1)
                else:
                    elapsed = _forward_ms(model, batch, job.device, 1)
                if round_ >= 0:
                    times[which].append(elapsed)
        results[f"{phase}_ms"] = min(times["adapted"])
        results[f"{phase}_base_ms"] = min(times["bare"])
        results[f"{phase}_vs_base"] = statistics.median(a / b for a, b in zip(times["adapted"], times["bare"]))
    results["base_ms"] = min(results["unmerged_base_ms"], results["merged_base_ms"])
    return results


def main(argv: list[str]) -> None:
    job = Job(**json.loads(argv[0]))
    torch.set_num_threads(job.threads)
    if job.host_memory == "keep" and job.device == "cpu" and not keep_freed_memory():
        raise SystemExit("--host-memory keep needs glibc's malloc; measure with --host-memory system here")
    runs = {"train": run_train, "infer": run_infer, "flops": run_flops, "paired": run_paired, "versus": run_versus}
    result = runs[job.kind](job)
    print(json.dumps({"job": asdict(job), **result}))


if __name__ == "__main__":
    main(sys.argv[1:])

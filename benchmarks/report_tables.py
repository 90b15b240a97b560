"""The benchmark report's Markdown tables, from the jobs and their outcomes (``compare_peft.py`` writes them).

Every table takes the jobs it shows and ``results``: job key -> the outcome of each repeat (``measure.py``'s
JSON, or ``{"error": ...}``); the numbers shown are medians over repeats.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace

from job import Job, own_floor
from method_entries import METHODS
from workloads import WORKLOADS


def eager(step: str) -> str:
    return "+".join(feature for feature in step.split("+") if feature != "compile")


def flop_job(job: Job) -> Job:
    """The FLOP count of ``job``'s computation: compiling changes how fast a step runs, not what it computes."""
    return replace(job, kind="flops", step=eager(job.step))


def median(outcomes: list[dict], field: str) -> float | None:
    values = [o[field] for o in outcomes if field in o]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def train_table(name: str, jobs: list[Job], results: dict[str, list[dict]]) -> list[str]:
    def get(library: str, method: str = "", step: str = "plain") -> list[dict]:
        key = next((j.key for j in jobs if (j.workload, j.library, j.method, j.step) == (name, library, method, step)), None)
        return results.get(key, []) if key else []

    def flops(library: str, method: str, step: str) -> float | None:
        return median(results.get(Job(name, jobs[0].setting, library, method, eager(step), "flops").key, []), "flops")

    shape = WORKLOADS[name].shapes[jobs[0].setting]
    lines = [f"### {name} ({shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab:,}, "
             f"batch {shape.batch} x {shape.length}{f' -> {shape.target_length}' if shape.target_length else ''})", "",
             "| method | library | step | step s | vs peft | vs floor | vs own floor | FLOPs vs own floor | vs full "
             "| peak MB | vs peft | step tensors MB | vs peft | trainable | frozen grads |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    full = median(get("full"), "step_s")

    def row(label: str, library: str, step: str, outcomes: list[dict], peft_outcomes: list[dict] | None,
            method: str = "", counted: tuple[str, str] = ("floor", "")) -> None:
        """``method``: whose own floor the row divides by ("" for the plain one); ``counted``: the
        (library, method) whose FLOP count is the row's."""
        if not outcomes:
            return
        if "error" in outcomes[0] and not median(outcomes, "step_s"):
            lines.append(error_row([label, library, step], outcomes, width=15))
            return
        seconds, peak = median(outcomes, "step_s"), median(outcomes, "peak_mb")
        floor = median(get("floor", "", step), "step_s")
        own_floor = median(get("floor", method, step), "step_s") if method else floor
        flop_ratio = "" if counted == ("floor", "") else ratio(flops(*counted, step), flops("floor", method, step))
        peft_s = median(peft_outcomes, "step_s") if peft_outcomes else None
        peft_mb = median(peft_outcomes, "peak_mb") if peft_outcomes else None
        tensors = median(outcomes, "step_tensor_mb")
        peft_tensors = median(peft_outcomes, "step_tensor_mb") if peft_outcomes else None
        lines.append(
            f"| {label} | {library} | {step} | {seconds:.3f} | {ratio(seconds, peft_s) if peft_outcomes else ''} | "
            f"{ratio(seconds, floor)} | {ratio(seconds, own_floor) if library != '-' else ''} | {flop_ratio} | "
            f"{ratio(seconds, full)} | {peak:.0f} | {ratio(peak, peft_mb) if peft_outcomes else ''} | "
            f"{tensors:.0f} | {ratio(tensors, peft_tensors) if peft_outcomes else ''} | "
            f"{int(median(outcomes, 'trainable')):,} | {int(max(o.get('frozen_with_grad', 0) for o in outcomes))} |")

    steps = sorted({j.step for j in jobs if j.workload == name})
    for step in steps:
        row("floor", "-", step, get("floor", "", step), None)
    row("full", "-", "plain", get("full"), None, counted=("full", ""))
    for method in dict.fromkeys(j.method for j in jobs if j.workload == name and j.method):
        entry = METHODS[method]
        for step in steps if entry.changes_the_base else ():
            row(f"floor of {method}'s base", "-", step, get("floor", method, step), None, counted=("floor", method))
        own = method if entry.changes_the_base else ""
        peft_step = next(j.step for j in jobs if (j.library, j.method) == ("peft", method))
        theirs = get("peft", method, peft_step)
        row(method, "peft", peft_step, theirs, None, own, ("peft", method))
        for step in steps:
            row(method, "peftlab", step, get("peftlab", method, step), theirs, own, ("peftlab", method))
    return lines + [""]


def paired_table(jobs: list[Job], results: dict[str, list[dict]]) -> list[str]:
    def numbers(job: Job, outcomes: list[dict]) -> list[str] | None:
        seconds, floor, paired = (median(outcomes, f) for f in ("step_s", "floor_step_s", "vs_floor"))
        if paired is None:
            return None
        flops = [median(results.get(flop_job(side).key, []), "flops") for side in (job, own_floor(job))]
        per_flop = f"{paired * flops[1] / flops[0]:.3f}x" if all(flops) else "n/a"
        over = median(outcomes, "over_floor_s")  # absent from runs before it was measured
        over_ms = "n/a" if over is None else f"{1000 * over:.0f}"
        return [f"{floor:.3f}", f"{seconds:.3f}", f"{paired:.3f}x", over_ms, ratio(*flops), per_flop]

    columns = ["model", "method", "step", "floor s", "step s", "vs own floor", "ms over own floor",
               "FLOPs vs own floor", "vs own floor per FLOP"]
    return job_table(jobs, results, columns, lambda job: [job.workload, job.method, job.step], numbers)


def versus_table(jobs: list[Job], results: dict[str, list[dict]]) -> list[str]:
    def numbers(job: Job, outcomes: list[dict]) -> list[str] | None:
        seconds, theirs, versus = (median(outcomes, f) for f in ("step_s", "peft_step_s", "vs_peft"))
        return None if versus is None else [f"{theirs:.3f}", f"{seconds:.3f}", f"{versus:.3f}x"]

    columns = ["model", "method", "peft step", "peftlab step", "peft s", "peftlab s", "vs peft"]
    return job_table(jobs, results, columns,
                     lambda job: [job.workload, job.method, job.partner_step, job.step], numbers)


def infer_table(jobs: list[Job], results: dict[str, list[dict]]) -> list[str]:
    def numbers(job: Job, outcomes: list[dict]) -> list[str] | None:
        base, unmerged, merged = (median(outcomes, f) for f in ("base_ms", "unmerged_ms", "merged_ms"))
        if base is None:
            return None
        versus = {f: median(outcomes, f) for f in ("unmerged_vs_base", "merged_vs_base")}
        return [f"{base:.1f}", f"{unmerged:.1f}", f"{versus['unmerged_vs_base']:.2f}x", f"{merged:.1f}",
                f"{versus['merged_vs_base']:.2f}x"]

    columns = ["model", "method", "library", "base ms", "unmerged ms", "vs base", "merged ms", "vs base"]
    return job_table(jobs, results, columns, lambda job: [job.workload, job.method, job.library], numbers)


def job_table(jobs: list[Job], results: dict[str, list[dict]], columns: list[str],
              names: Callable[[Job], list[str]], numbers: Callable[[Job, list[dict]], list[str] | None]) -> list[str]:
    """One row per job: ``names(job)`` fills the first, left-aligned columns, ``numbers(job, outcomes)`` the
    rest, or is None when the run failed (the error then fills the row)."""
    lines = header(columns, text=len(names(jobs[0])) if jobs else len(columns))
    for job in jobs:
        outcomes = results[job.key]
        shown = numbers(job, outcomes)
        lines.append(error_row(names(job), outcomes, len(columns)) if shown is None
                     else "| " + " | ".join([*names(job), *shown]) + " |")
    return lines + [""]


def header(columns: list[str], text: int) -> list[str]:
    """A Markdown table's header: the first ``text`` columns left-aligned, the numbers right-aligned."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * text + "---:|" * (len(columns) - text)]


def error_row(cells: list[str], outcomes: list[dict], width: int) -> str:
    """A row whose run failed: its identifying cells, the error, and empty cells to the table's width."""
    error = outcomes[0].get("error", "") if outcomes else ""
    return "| " + " | ".join(cells) + f" | error: {error[:80]} |" + " |" * (width - len(cells) - 1)

"""What ``peftlab select`` writes beside its study: the Pareto fronts (``pareto.json``), the recommended
configuration as a ``peftlab train --config`` file (``recommended.yaml``), and ``report.md`` with the search
history and the fronts plotted (``history.png``, ``pareto.png``). Written anew, whole, after each worker's
search and after the finals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial, TrialState

from peftlab.bench.plots import _png, pareto_front, plt
from peftlab.core.atomic import write_files_together
from peftlab.search.study import ERROR
from peftlab.search.trials import REJECTED
from peftlab.train.args import TrainArgs

COSTS = {"trainable": "trainable parameters", "predicted_memory_bytes": "predicted memory (MiB)"}
PLOTTED_UNIT = {"trainable": 1, "predicted_memory_bytes": 2**20}


def completed_rows(trials: list[FrozenTrial]) -> list[dict[str, Any]]:
    return [{"trial": t.number, "held_out": t.value, **t.user_attrs["candidate"],
             **{key: t.user_attrs[key] for key in ("trainable", "trainable_percent", "predicted_memory_bytes")}}
            for t in trials if t.state == TrialState.COMPLETE and t.value is not None]


def fronts(rows: list[dict[str, Any]], greater: bool) -> dict[str, list[dict[str, Any]]]:
    """Per cost, the completed trials that no cheaper (or as cheap) trial beats, cheapest first."""
    result = {}
    for cost in COSTS:
        front = set(pareto_front([(row[cost], row["held_out"]) for row in rows], greater))
        result[cost] = sorted((row for row in rows if (row[cost], row["held_out"]) in front), key=lambda r: r[cost])
    return result


def recommended_config(training: TrainArgs, candidate: dict[str, Any]) -> dict[str, Any]:
    """A ``peftlab train --config`` document: the search's shared settings and the candidate."""
    config = {"model": training.model, "task": training.task, "method": candidate["method"],
              "options": candidate["options"], "learning_rate": candidate["learning_rate"], "seed": 0,
              "epochs": training.epochs, "batch_size": training.batch_size, "max_length": training.max_length}
    for name in ("max_steps", "max_train_samples", "eval_steps", "data_dir"):
        if getattr(training, name) is not None:
            config[name] = getattr(training, name)
    return config


def compute_spent(trials: list[FrozenTrial], finals: list[dict[str, Any]], training: TrainArgs) -> dict[str, Any]:
    """Optimizer steps and seconds the search's trials (pruned, stopped early and failed ones included) and the
    finals took; steps times ``examples_per_step`` is what a grid of full runs is compared by."""
    return {"examples_per_step": training.batch_size * training.gradient_accumulation_steps,
            "search": {"runs": sum("steps_trained" in t.user_attrs for t in trials),
                       "steps": sum(t.user_attrs.get("steps_trained", 0) for t in trials),
                       "seconds": sum(t.user_attrs.get("seconds", 0.0) for t in trials)},
            "finals": {"runs": sum(len(f["dev_scores"]) for f in finals),
                       "steps": sum(f["steps"] for f in finals), "seconds": sum(f["seconds"] for f in finals)}}


def history_png(trials: list[FrozenTrial], greater: bool) -> bytes:
    figure, axes = plt.subplots(figsize=(7, 4))
    best, line = None, []  # line: (trial number, best completed score so far)
    for trial in trials:
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            axes.scatter(trial.number, trial.value, color="tab:blue", s=16)
            best = trial.value if best is None else (max if greater else min)(best, trial.value)
        elif trial.state == TrialState.PRUNED and trial.intermediate_values:
            last = trial.intermediate_values[max(trial.intermediate_values)]
            axes.scatter(trial.number, last, color="tab:gray", marker="x", s=16)
        if best is not None:
            line.append((trial.number, best))
    if line:
        axes.step(*zip(*line), where="post", color="tab:red", label="best so far")
        axes.legend(loc="best")
    axes.set_xlabel("trial (blue: completed; grey x: pruned, at its last report)")
    axes.set_ylabel("held-out score")
    return _png(figure)


def pareto_png(rows: list[dict[str, Any]], found: dict[str, list[dict[str, Any]]]) -> bytes:
    figure, panels = plt.subplots(1, len(COSTS), figsize=(11, 4))
    for axes, (cost, label) in zip(panels, COSTS.items()):
        unit = PLOTTED_UNIT[cost]
        for method in dict.fromkeys(row["method"] for row in rows):
            mine = [row for row in rows if row["method"] == method]
            axes.scatter([r[cost] / unit for r in mine], [r["held_out"] for r in mine], s=16, label=method)
        axes.plot([r[cost] / unit for r in found[cost]], [r["held_out"] for r in found[cost]], color="black", lw=1,
                  marker="o", markersize=9, markerfacecolor="none", label="Pareto front")
        costs = [row[cost] for row in rows]
        if max(costs) > 10 * min(costs):  # within one decade a log axis has no labelled tick
            axes.set_xscale("log")
        axes.set_xlabel(label)
        axes.set_ylabel("held-out score")
    panels[0].legend(fontsize=7)
    return _png(figure)


def markdown(settings: dict[str, Any], trials: list[FrozenTrial], found: dict[str, list[dict[str, Any]]],
             finals: list[dict[str, Any]], recommended: dict[str, Any] | None, spent: dict[str, Any]) -> str:
    counts = {"completed": sum(t.state == TrialState.COMPLETE for t in trials),
              "pruned": sum(t.state == TrialState.PRUNED and REJECTED not in t.user_attrs for t in trials),
              "rejected by a budget": sum(REJECTED in t.user_attrs for t in trials),
              "failed": sum(t.state == TrialState.FAIL and ERROR in t.user_attrs for t in trials),
              "killed and rerun": sum(t.state == TrialState.FAIL and ERROR not in t.user_attrs for t in trials)}
    lines = ["# peftlab select", "", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
             "Trials: " + ", ".join(f"{count} {name}" for name, count in counts.items()), "",
             "![search history](history.png)", "", "![Pareto fronts](pareto.png)", ""]
    for cost, rows in found.items():
        lines += [f"## Pareto front: held-out score against {COSTS[cost]}", "",
                  "| trial | method | options | lr | held-out | trainable | trainable % | predicted memory (MiB) |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['trial']} | {r['method']} | `{json.dumps(r['options'], sort_keys=True)}` | "
                  f"{r['learning_rate']:.2e} | {r['held_out']:.4f} | {r['trainable']:,} | "
                  f"{r['trainable_percent']:.3f} | {r['predicted_memory_bytes'] / 2**20:.1f} |" for r in rows]
        lines.append("")
    if finals:
        lines += ["## Finals: full budget, dev set", "", "| trial | method | held-out | dev mean | dev stdev | seeds |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {f['trial']} | {f['candidate']['method']} | {f['held_out']:.4f} | {f['dev_mean']:.4f} | "
                  f"{'–' if f['dev_stdev'] is None else format(f['dev_stdev'], '.4f')} | {len(f['dev_scores'])} |"
                  for f in finals]
        lines.append("")
    per_step = spent["examples_per_step"]
    lines += ["## Compute", "", f"Optimizer steps of {per_step} examples; seconds include loading and evaluations.",
              "", "| stage | runs | optimizer steps | examples trained on | seconds |", "|---|---|---|---|---|"]
    for stage in ("search", "finals"):
        part = spent[stage]
        lines.append(f"| {stage} | {part['runs']} | {part['steps']:,} | {part['steps'] * per_step:,} | "
                     f"{part['seconds']:,.0f} |")
    total_steps = spent["search"]["steps"] + spent["finals"]["steps"]
    lines += [f"| total | {spent['search']['runs'] + spent['finals']['runs']} | {total_steps:,} | "
              f"{total_steps * per_step:,} | {spent['search']['seconds'] + spent['finals']['seconds']:,.0f} |", ""]
    if recommended is not None:
        lines += ["## Recommended", "", "`peftlab train --config recommended.yaml --output DIR`:", "", "```yaml",
                  yaml.safe_dump(recommended, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)


def write_outputs(folder: Path, settings: dict[str, Any], training: TrainArgs, trials: list[FrozenTrial],
                  greater: bool, finals: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Write the fronts, the report and (when any trial completed) the recommended config; returns the latter.
    The recommendation is the best finalist on dev, else the best trial on the held-out split."""
    rows = completed_rows(trials)
    found = fronts(rows, greater)
    best: dict[str, Any] | None = None
    if finals:
        best = finals[0]["candidate"]
    elif rows:
        best = (max if greater else min)(rows, key=lambda row: row["held_out"])
    recommended = None if best is None else recommended_config(training, best)
    spent = compute_spent(trials, finals, training)
    files = {folder / "pareto.json": json.dumps({"fronts": found, "finals": finals, "compute": spent},
                                                indent=2).encode(),
             folder / "report.md": markdown(settings, trials, found, finals, recommended, spent).encode(),
             folder / "history.png": history_png(trials, greater)}
    if rows:
        files[folder / "pareto.png"] = pareto_png(rows, found)
    if recommended is not None:
        files[folder / "recommended.yaml"] = yaml.safe_dump(recommended, sort_keys=False).encode()
    write_files_together(files)
    return recommended

"""The report's figures as PNG bytes: score vs trainable % and vs peak memory (with the Pareto front), memory by
component, score vs each ablation knob.

A score axis spans at least :data:`MIN_SCORE_SPAN` points, so that matplotlib does not stretch a tiny spread (one
dev example, one seed's noise) to the full height of the plot.
"""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from peftlab.bench.aggregate import AVERAGE, MEMORY, TRAINABLE, Table, greater_is_better  # noqa: E402
from peftlab.bench.memory import COMPONENTS  # noqa: E402
from peftlab.core.registry import FAMILIES  # noqa: E402

FAMILY_COLOURS = dict(zip(FAMILIES, ("black", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:red"),
                          strict=True))
COMPONENT_COLOURS = dict(zip(COMPONENTS, ("tab:gray", "tab:orange", "tab:red", "tab:blue"), strict=True))
# Scores are x100 (accuracy, F1, correlations) or BLEU, all on a 0-100 scale. One example of a GLUE dev set moves a
# score by 0.1-0.25 points (408-1043 examples), seeds differ by about 0.5-1.5: in a 10-point window one example is
# at most 2.5% of the height, while the gaps of several points between methods stay plain.
MIN_SCORE_SPAN = 10.0
MIN_LOSS_SPAN = 0.1  # losses have no fixed scale: at least this fraction of the largest one


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return buffer.getvalue()


def pareto_front(points: list[tuple[float, float]], greater_is_better: bool = True) -> list[tuple[float, float]]:
    """The ``(cost, score)`` points that no other point beats: none cheaper (or as cheap) with a better score;
    sorted by cost."""
    front: list[tuple[float, float]] = []
    for cost, score in sorted(points, key=lambda point: (point[0], -point[1] if greater_is_better else point[1])):
        if not front or (score > front[-1][1] if greater_is_better else score < front[-1][1]):
            front.append((cost, score))
    return front


def score_axis_limits(scores: list[float], greater_is_better: bool = True) -> tuple[float, float] | None:
    """``(bottom, top)`` for a score axis whose scores spread less than the minimum span: a window of that span
    centred on them, moved (not shrunk) to stay within 0-100 where they do; None where they spread wider."""
    low, high = min(scores), max(scores)
    span = MIN_SCORE_SPAN if greater_is_better else MIN_LOSS_SPAN * max(abs(low), abs(high))
    if high - low >= span:  # also a span of 0: every loss 0
        return None
    bottom = (low + high - span) / 2
    if greater_is_better and low >= 0:
        bottom = max(bottom, 0.0)
    if greater_is_better and high <= 100:
        bottom = min(bottom, 100.0 - span)
    return bottom, bottom + span


def _hold_score_axis(axes: plt.Axes, scores: list[float], greater_is_better: bool | None) -> None:
    limits = score_axis_limits(scores, greater_is_better is not False)
    if limits is not None:
        axes.set_ylim(*limits)


def score_vs_trainable(table: Table) -> bytes | None:
    """Average score against % trainable parameters (log x), one point per method, the Pareto front drawn."""
    return score_against(table, TRAINABLE, "trainable parameters (% of base, log scale)", "trainable parameters")


def score_vs_memory(table: Table) -> bytes | None:
    """Average score against peak training memory (log x), one point per method, the Pareto front drawn."""
    return score_against(table, MEMORY, "peak training memory (MiB, log scale)", "peak memory")


def score_against(table: Table, cost: str, xlabel: str, name: str) -> bytes | None:
    """One point per method (coloured by family) of average score against a cost column, and the front of the
    methods that no cheaper one beats."""
    points = [(row, row.cells[AVERAGE].mean, row.cells[cost].mean) for row in table.rows]
    points = [(row, score, x) for row, score, x in points if score is not None and x]
    if not points:
        return None
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for family in dict.fromkeys(row.family for row, _, _ in points):
        chosen = [(s, x) for row, s, x in points if row.family == family]
        axes.scatter([x for _, x in chosen], [s for s, _ in chosen], label=family,
                     color=FAMILY_COLOURS.get(family, "gray"), s=36)
    for row, score, x in points:
        axes.annotate(row.label, (x, score), textcoords="offset points", xytext=(4, 3), fontsize=7)
    front = pareto_front([(x, score) for _, score, x in points], greater_is_better(table, AVERAGE) is not False)
    axes.step([x for x, _ in front], [s for _, s in front], where="post", color="gray", linestyle="--",
              linewidth=1, label="Pareto front", zorder=0)
    axes.set_xscale("log")
    _hold_score_axis(axes, [score for _, score, _ in points], greater_is_better(table, AVERAGE))
    axes.set_xlabel(xlabel)
    metric = "average score" if len(table.tasks) > 1 else f"{table.tasks[0]} {table.metric_names[table.tasks[0]]}"
    axes.set_ylabel(metric)
    axes.set_title(f"{table.model}: score vs {name}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return _png(figure)


def memory_by_component(table: Table, records: list[dict[str, Any]]) -> bytes | None:
    """Measured training memory per method as bars stacked by component, with the peak marked."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record["spec"]["model"] == table.model and record.get("memory", {}).get("breakdown"):
            by_label[record["spec"]["label"]].append(record)
    labels = [row.label for row in table.rows if row.label in by_label]
    if not labels:
        return None
    figure, axes = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 2), 4.5))
    bottoms = [0.0] * len(labels)
    for component in COMPONENTS:
        heights = [max(r["memory"]["breakdown"][component]["measured"] for r in by_label[label]) / 2**20
                   for label in labels]
        axes.bar(labels, heights, bottom=bottoms, label=component, color=COMPONENT_COLOURS[component])
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    peaks = [max(r["memory"].get("peak_bytes") or 0 for r in by_label[label]) / 2**20 for label in labels]
    if any(peaks):
        source = next(iter(by_label.values()))[0]["memory"].get("peak_source", "peak")
        axes.scatter(labels, peaks, marker="_", s=400, color="black", label=f"peak ({source})", zorder=3)
    axes.set_ylabel("MiB")
    axes.set_title(f"{table.model}: training memory by component (one step, measured)")
    axes.tick_params(axis="x", rotation=60, labelsize=8)
    axes.legend(fontsize=8)
    return _png(figure)


def score_vs_knob(table: Table, knob: str) -> bytes | None:
    """Average score against one ablation knob; one line per setting of the row's other knobs."""
    series: dict[str, list[tuple[Any, float]]] = defaultdict(list)
    for row in table.rows:
        score = row.cells[AVERAGE].mean
        if knob not in row.knobs or score is None:
            continue
        others = ", ".join(f"{k}={v}" for k, v in row.knobs.items() if k != knob)
        series[f"{row.method}" + (f" ({others})" if others else "")].append((row.knobs[knob], score))
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    numeric = all(isinstance(x, (int, float)) for points in series.values() for x, _ in points)
    for name, points in sorted(series.items()):
        points.sort(key=lambda point: point[0] if numeric else str(point[0]))
        xs = [x if numeric else str(x) for x, _ in points]
        axes.plot(xs, [s for _, s in points], marker="o", label=name)
    if numeric and min(x for points in series.values() for x, _ in points) > 0:
        axes.set_xscale("log", base=2)
    _hold_score_axis(axes, [s for points in series.values() for _, s in points], greater_is_better(table, AVERAGE))
    axes.set_xlabel(knob)
    axes.set_ylabel("average score")
    axes.set_title(f"{table.model}: score vs {knob}")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    return _png(figure)

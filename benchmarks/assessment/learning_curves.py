"""E1's budget check: dev score against optimizer steps for the chosen methods on one task, every seed.

    python benchmarks/assessment/learning_curves.py benchmarks/assessment/records/e1-glue --task sst2 \
        --methods full lora --out benchmarks/assessment/learning-curves-sst2.png

Reads each record's ``eval_history`` (every evaluation of the run). Prints, per method, the mean score at
each evaluation step, so the plateau can be read off as numbers too.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from peftlab.bench.records import read_records
from peftlab.bench.worker import display_score
from peftlab.tasks import get_task


def curves(folder: Path, task: str, methods: list[str]) -> dict[str, dict[int, list[float]]]:
    """method -> step -> scores over seeds (the task's main metric, x100 where it is a fraction)."""
    found: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in read_records(folder):
        spec = record["spec"]
        if record["status"] != "ok" or spec["task"] != task or spec["label"] not in methods:
            continue
        metric = record["primary_metric"]
        scored, _, _ = metric.rpartition("/")  # "mmlu/accuracy": scored on another task than the trained one
        scored_task = get_task(scored or spec.get("task_name", spec["task"]))
        for point in record.get("eval_history", []):
            found[spec["label"]][point["step"]].append(display_score(scored_task, metric, point[metric]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", type=Path)
    parser.add_argument("--task", required=True)
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    found = curves(arguments.records, arguments.task, arguments.methods)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for method in arguments.methods:
        steps = sorted(found.get(method, {}))
        means = [statistics.fmean(found[method][step]) for step in steps]
        print(method, " ".join(f"{step}:{mean:.1f}" for step, mean in zip(steps, means, strict=True)))
        axis.plot(steps, means, marker=".", label=f"{method} (mean of {len(found[method][steps[-1]]) if steps else 0} seeds)")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel(f"{arguments.task} dev score")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(arguments.out, dpi=120)


if __name__ == "__main__":
    main()

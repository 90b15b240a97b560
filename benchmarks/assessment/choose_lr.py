"""Write E1's suite from the learning-rate sweep: each method's rate is the one that scored best on the
examples held out from the training data (never the dev set that E1 reports).

    python benchmarks/assessment/choose_lr.py benchmarks/assessment/records/lr-sweep \
        benchmarks/assessment/records/lr-sweep-cola --out benchmarks/assessment/suites/e1-glue.yaml

SST-2 and CoLA choose for themselves, MRPC for the sentence pairs (MRPC, STS-B). CoLA has its own sweep
because SST-2's rates left LoRA, QLoRA and prompt tuning at the majority class there. A rate within one held-out
example's worth of the best (``TIE_POINTS``) ties with it, and ties go to the smallest rate: at CoLA's 8 epochs
the adapter's 3e-3, 0.07 MCC points above 1e-3 at 4, sat at the majority class for six epochs. Prints the table
of held-out scores it chose from.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from peftlab.bench.records import read_records

SURVEY = ("full", "adapter", "prompt_tuning", "prefix_tuning", "ia3", "bitfit", "child_tuning", "lora", "adalora",
          "qlora", "mam", "propetl")  # the survey's eleven and its baseline, in its order
ADDED = ("ln_tuning", "oft", "boft", "hra")  # issue 33's, swept by suites/lr-sweep-new.yaml
METHODS = SURVEY + ADDED
CHOOSER = {"sst2": "sst2", "cola": "cola", "mrpc": "mrpc", "stsb": "mrpc"}  # E1 task -> sweep task
# E1's budget per task: where full fine-tuning's and LoRA's dev scores plateau (see README.md, learning curves).
BUDGETS: dict[str, dict[str, Any]] = {
    "sst2": {"max_train_samples": 20000, "epochs": 2, "eval_steps": 125},
    "cola": {"epochs": 8},  # LoRA 23.2 at 4, 29.3 at 8, 28.1 at 12 (records/budget-check)
    "mrpc": {"epochs": 8},
    "stsb": {"epochs": 6},
}
# How much one held-out example moves each choosing task's score (x100): accuracy on 2,000 (SST-2); Matthews
# correlation on 1,000 (CoLA) and F1 on 400 (MRPC), computed at confusion matrices like the sweep's.
TIE_POINTS = {"sst2": 0.05, "cola": 0.3, "mrpc": 0.15}
TRAINING = {"batch_size": 32, "eval_batch_size": 256, "max_length": 128, "warmup_ratio": 0.06, "progress": False}


def sweep_scores(sweeps: list[Path]) -> tuple[dict[tuple[str, str], dict[float, float]], dict[str, dict[str, Any]]]:
    """(task, method) -> {learning rate: held-out score} from the sweeps' ok records, and each method's
    options as the sweep ran it (E1 runs it the same way). A later folder's (task, method) pairs replace the
    earlier folders' whole: its runs are a recheck at another budget, not more points on the same curve."""
    scores: dict[tuple[str, str], dict[float, float]] = {}
    options: dict[str, dict[str, Any]] = {}
    for sweep in sweeps:
        found: dict[tuple[str, str], dict[float, float]] = defaultdict(dict)
        for record in read_records(sweep):
            if record["status"] == "ok" and record.get("score") is not None:
                spec = record["spec"]
                found[(spec["task"], spec["method"])][float(spec["training"]["learning_rate"])] = record["score"]
                options[spec["method"]] = spec["options"]
        scores.update(found)
    return scores, options


def best_rate(by_rate: dict[float, float], task: str) -> float:
    """The smallest rate that scores within one held-out example (``TIE_POINTS``) of the best."""
    best = max(by_rate.values())
    return min(rate for rate, score in by_rate.items() if score >= best - TIE_POINTS[task])


def e1_suite(scores: dict[tuple[str, str], dict[float, float]], options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """E1's suite: each task with the methods its choosing sweep has scored. A method joins once swept; the other
    rows' specs do not change, so their finished runs stay finished."""
    experiments = []
    for task, chooser in CHOOSER.items():
        methods = [m for m in METHODS if (chooser, m) in scores]
        if not methods:
            continue
        experiments.append({
            "tasks": [{"task": task, "training": BUDGETS[task]}],
            "methods": [{m: {**({"options": options[m]} if options[m] else {}),
                             "training": {"learning_rate": best_rate(scores[(chooser, m)], chooser)}}} for m in methods],
        })
    return {"name": "e1-glue",
            "description": "E1: the survey's eleven methods and full fine-tuning on the offline MiniLM, four GLUE "
                           "tasks, three seeds, at the converged budget; learning rates from the sweeps "
                           "(held-out split), written by benchmarks/assessment/choose_lr.py.",
            "seeds": [0, 1, 2], "models": ["minilm-l6"], "training": TRAINING, "experiments": experiments}


def plain_table(scores: dict[tuple[str, str], dict[float, float]]) -> str:
    lines = []
    for (task, method), by_rate in sorted(scores.items()):
        cells = "  ".join(f"{rate:g}: {score:6.2f}" for rate, score in sorted(by_rate.items()))
        lines.append(f"{task:5} {method:14} {cells}  -> {best_rate(by_rate, task):g}")
    return "\n".join(lines)


def markdown_table(scores: dict[tuple[str, str], dict[float, float]]) -> str:
    """Held-out score by rate, one row per method, one column per choosing task, the chosen rate in bold."""
    tasks = sorted(set(CHOOSER.values()), key=lambda task: list(CHOOSER.values()).index(task))
    lines = ["| method | " + " | ".join(task.upper().replace("SST2", "SST-2") for task in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for method in METHODS:
        cells = []
        for task in tasks:
            by_rate = scores.get((task, method), {})
            chosen = best_rate(by_rate, task) if by_rate else None
            cells.append(", ".join(f"**{rate:g}: {score:.1f}**" if rate == chosen else f"{rate:g}: {score:.1f}"
                                   for rate, score in sorted(by_rate.items())) or "not swept")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", type=Path, nargs="+", help="the sweeps' output folders (their runs/ records)")
    parser.add_argument("--out", type=Path, required=True, help="the E1 suite to write")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (README.md's)")
    arguments = parser.parse_args()
    scores, options = sweep_scores(arguments.sweeps)
    print(markdown_table(scores) if arguments.markdown else plain_table(scores))
    header = "# Written by benchmarks/assessment/choose_lr.py from the lr-sweep records; do not edit by hand.\n"
    missing = [f"{task}: {m}" for task, chooser in CHOOSER.items() for m in METHODS if (chooser, m) not in scores]
    if len(missing) == len(CHOOSER) * len(METHODS):
        raise SystemExit(f"{', '.join(map(str, arguments.sweeps))}: no ok sweep run to choose from")
    if missing:  # a later call, with the rest swept, writes the whole suite (finished runs stay finished)
        print(f"not swept yet, left out of E1 for now: {', '.join(missing)}")
    arguments.out.write_text(header + yaml.safe_dump(e1_suite(scores, options), sort_keys=False))


if __name__ == "__main__":
    main()

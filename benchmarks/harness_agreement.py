"""peftlab's own MMLU scoring against lm-evaluation-harness's, on the same questions (issue 34).

Runs, each in its own process, on peftlab's fixed ``mmlu-subset`` (25 questions per subject, 1,425 in all):

    peftlab eval --model M --task mmlu-subset --output OUT/peftlab.json
    peftlab eval --model M --harness mmlu_local_subset --harness-output OUT/harness.json

and writes a Markdown section: both accuracies, their difference, and the subjects on which they differ.
Usage: ``OMP_NUM_THREADS=2 python benchmarks/harness_agreement.py --model smollm2-135m --data-dir DATA
--workdir W --out benchmarks/RESULTS-harness.md`` (SmolLM2-135M on this 2-core CPU: tens of minutes a side;
the results file states the threads, niceness, load and commit it ran with).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, required=True, help="the Markdown results file to write")
    parser.add_argument("--workdir", type=Path, help="keep peftlab.json / harness.json here; a side whose file is "
                                                     "there already is not run again (default: a temporary folder)")
    args = parser.parse_args()
    common = ["--model", args.model, "--data-dir", args.data_dir, "--eval-batch-size", str(args.batch_size)]
    with tempfile.TemporaryDirectory() as temporary:
        folder = str(args.workdir or temporary)
        ours, ours_s = run([*common, "--task", "mmlu-subset", "--output", f"{folder}/peftlab.json"], folder, "peftlab.json")
        theirs, theirs_s = run([*common, "--harness", "mmlu_local_subset", "--harness-output", f"{folder}/harness.json"],
                               folder, "harness.json")
    ours_subjects = {k.removeprefix("subject/"): v for k, v in ours["scores"].items() if k.startswith("subject/")}
    ours_accuracy = ours["scores"]["accuracy"]
    theirs_accuracy = theirs["groups"]["mmlu_local_subset"]["acc,none"]
    theirs_subjects = {name.removeprefix("mmlu_local_subset_"): result["acc,none"]
                       for name, result in theirs["results"].items() if name.startswith("mmlu_local_subset_")}
    questions = sum(theirs["n-samples"][f"mmlu_local_subset_{s}"]["effective"] for s in theirs_subjects)
    differing = sorted(s for s in ours_subjects if abs(ours_subjects[s] - theirs_subjects.get(s, -1)) > 1e-9)
    flips = round(sum(abs(ours_subjects[s] - theirs_subjects[s]) * theirs["n-samples"][f"mmlu_local_subset_{s}"]
                      ["effective"] for s in differing))
    lines = [
        "# peftlab's MMLU scoring against lm-evaluation-harness's",
        "",
        f"Model `{args.model}`, 0-shot, peftlab's fixed `mmlu-subset` ({questions} questions, 25 per subject); "
        f"run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on CPU ({settings()}) at commit {commit()}; lm_eval "
        f"{version('lm_eval')}, transformers {version('transformers')}, torch {version('torch')}.",
        "",
        "Commands (`benchmarks/harness_agreement.py` runs both):",
        "",
        f"    peftlab eval --model {args.model} --task mmlu-subset --data-dir DATA --output peftlab.json",
        f"    peftlab eval --model {args.model} --harness mmlu_local_subset --data-dir DATA --harness-output harness.json",
        "",
        "| scorer | accuracy | time s (1-minute load average before and after) |",
        "|---|---:|---:|",
        f"| peftlab (`--task mmlu-subset`) | {100 * ours_accuracy:.2f} | {ours_s} |",
        f"| lm-eval 0-shot (`--harness mmlu_local_subset`, acc) | {100 * theirs_accuracy:.2f} | {theirs_s} |",
        "",
        f"Difference: {100 * (theirs_accuracy - ours_accuracy):+.2f} points; {len(differing)} of "
        f"{len(ours_subjects)} subjects score differently (at least {flips} question(s) answered differently"
        f"{': ' + ', '.join(differing) if differing else ''}).",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def run(flags: list[str], folder: str, name: str) -> tuple[dict, str]:
    """The side's result, and its time with the machine's load around it (a side read back from ``--workdir``
    has no time: "-")."""
    if Path(folder, name).is_file():
        return json.loads(Path(folder, name).read_text()), "-"
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    subprocess.run([sys.executable, "-m", "peftlab.cli", "eval", *flags], check=True, stdout=subprocess.DEVNULL)
    timing = f"{time.perf_counter() - start:.0f} (load {load_before:.1f} to {os.getloadavg()[0]:.1f})"
    return json.loads(Path(folder, name).read_text()), timing


def settings() -> str:
    """The threads, niceness and load this ran under, as they were (times depend on all three)."""
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`, nice {os.nice(0)}, "
            f"{os.cpu_count()} cores, load average at the end {load}")


def commit() -> str:
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           cwd=Path(__file__).parent)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).parent).stdout.strip()
    return f"`{found.stdout.strip() or 'unknown'}`" + (" (with uncommitted changes)" if dirty else "")


def version(package: str) -> str:
    from importlib.metadata import version as installed

    return installed(package)


if __name__ == "__main__":
    main()

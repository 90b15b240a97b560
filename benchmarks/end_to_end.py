"""Time to a score, end to end: ``peftlab train`` against HF peft + ``transformers.Trainer`` (classification)
and HF peft + TRL ``SFTTrainer`` (instruction tuning), issue 29.

    python benchmarks/end_to_end.py --quick                      # a tiny slice of one workload, a minute or two
    python benchmarks/end_to_end.py --seeds 3 --out benchmarks/RESULTS-end-to-end.md   # every workload

Each side of each run is its own process, started from here: the same model files, data, method,
hyperparameters, epochs, seed and thread count. The peer is configured as its documentation recommends
for speed: ``train_sampling_strategy="group_by_length"`` for ``Trainer``; packing (best-fit, padding-free
position ids) for ``SFTTrainer``. Reported per side: wall time from process start to the final score (measured
here, from spawn to exit), time per phase (load, tokenise, train, evaluate: each side's own clock), real
(non-pad) training tokens per second, peak RSS (the child's ``ru_maxrss``), and the final dev score. The
instruction workloads are scored by 0-shot MMLU with peftlab's own scorer on both sides (the same prompts
and letters; its time counts as the peer's evaluation phase).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEER = HERE / "end_to_end_peer.py"
COLUMNS = ("wall_s", "load_s", "tokenize_s", "train_s", "eval_s", "tokens_per_s", "peak_rss_mb", "score")


@dataclass(frozen=True)
class Workload:
    """One comparison: what both sides train and how they are scored."""

    name: str
    model: str  # a peftlab alias (resolved to the same files for the peer)
    task: str
    method: str  # lora, qlora or full
    options: dict[str, Any] = field(default_factory=dict)  # peftlab --set options (the peer maps them)
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 5e-4
    max_length: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    eval_task: str | None = None  # scored instead of the task's dev split (alpaca -> mmlu)
    peer: str = "trainer"  # trainer or sft


LORA_BERT = {"rank": 8, "alpha": 16, "target_modules": "attention_qv"}
LORA_ALL = {"rank": 16, "alpha": 32, "target_modules": "all_linear"}
WORKLOADS = [
    Workload("sst2-lora", "minilm-l6", "sst2", "lora", LORA_BERT, learning_rate=5e-4, max_train_samples=4000),
    Workload("sst2-full", "minilm-l6", "sst2", "full", learning_rate=5e-5, max_train_samples=4000),
    Workload("mrpc-lora", "minilm-l6", "mrpc", "lora", LORA_BERT, learning_rate=5e-4, epochs=3),
    Workload("mrpc-full", "minilm-l6", "mrpc", "full", learning_rate=5e-5, epochs=3),
    Workload("alpaca-lora", "smollm2-135m", "alpaca", "lora", LORA_ALL, batch_size=8, learning_rate=2e-4,
             max_length=512, max_train_samples=2000, eval_task="mmlu", peer="sft"),
    Workload("alpaca-qlora", "smollm2-135m", "alpaca", "qlora", LORA_ALL, batch_size=8, learning_rate=2e-4,
             max_length=512, max_train_samples=2000, eval_task="mmlu", peer="sft"),
]
QUICK = replace(WORKLOADS[0], name="sst2-lora-quick", max_train_samples=64, max_eval_samples=64, batch_size=16)


def peftlab_command(work: Workload, seed: int, data_dir: str | None, output: Path) -> list[str]:
    command = [sys.executable, "-m", "peftlab.cli", "train", "--model", work.model, "--task", work.task,
               "--method", work.method, "--seed", str(seed), "--epochs", str(work.epochs),
               "--batch-size", str(work.batch_size), "--lr", str(work.learning_rate),
               "--max-length", str(work.max_length), "--output", str(output), "--no-progress", "--overwrite"]
    for key, value in work.options.items():
        command += ["--set", f"{key}={value}"]
    for flag, value in (("--max-train-samples", work.max_train_samples), ("--max-eval-samples", work.max_eval_samples),
                        ("--eval-task", work.eval_task), ("--data-dir", data_dir)):
        if value is not None:
            command += [flag, str(value)]
    return command


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """Run ``command``; (wall seconds from spawn to exit, peak RSS in MB, exit status, its output's tail)."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read().decode("utf-8", "replace")[-3000:]
    return wall, usage.ru_maxrss / 1024, process.returncode, tail


def run_side(side: str, work: Workload, seed: int, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    output = folder / f"{work.name}-{side}-{seed}"
    if side == "peftlab":
        command = peftlab_command(work, seed, args.data_dir, output)
    else:
        spec = {**asdict(work), "seed": seed, "data_dir": args.data_dir, "threads": args.threads,
                "output": str(output)}
        command = [sys.executable, str(PEER), json.dumps(spec)]
    wall, rss, code, tail = timed(command, env)
    if code != 0:
        return {"side": side, "workload": work.name, "seed": seed, "status": f"failed ({code})", "log": tail}
    result = read_result(side, output, work)
    return {"side": side, "workload": work.name, "seed": seed, "status": "ok", "wall_s": wall,
            "peak_rss_mb": rss, **result}


def read_result(side: str, output: Path, work: Workload) -> dict[str, Any]:
    if side != "peftlab":
        return json.loads((output / "result.json").read_text())
    metrics = json.loads((output / "metrics.json").read_text())
    metric = f"{work.eval_task}/accuracy" if work.eval_task else metrics["main_metric"]
    return {"load_s": metrics["load_time_s"], "tokenize_s": metrics["tokenize_s"], "train_s": metrics["train_time_s"],
            "eval_s": metrics["eval_time_s"], "tokens_per_s": metrics["train_tokens_per_s"],
            "score": metrics["scores"][metric], "metric": metric}


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per workload and side (medians over seeds; score: mean and std), then peftlab/peer."""
    lines = ["| workload | side | runs | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 3) + "|"]
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    for name in workloads:
        medians = {}
        for side in ("peftlab", "peer"):
            done = [r for r in rows if r["workload"] == name and r["side"] == side and r["status"] == "ok"]
            failed = [r["status"] for r in rows if r["workload"] == name and r["side"] == side and r["status"] != "ok"]
            if not done:
                lines.append(f"| {name} | {side} | 0 | " + " | ".join(["-"] * len(COLUMNS)) + f" |  {'; '.join(failed)}")
                continue
            medians[side] = {c: statistics.median(r[c] for r in done) for c in COLUMNS if c != "score"}
            scores = [r["score"] for r in done]
            spread = f" ± {statistics.stdev(scores):.3f}" if len(scores) > 1 else ""
            cells = [f"{medians[side][c]:.1f}" for c in COLUMNS if c != "score"]
            lines.append(f"| {name} | {side} | {len(done)} | " + " | ".join(cells)
                         + f" | {statistics.mean(scores):.4f}{spread} |")
        if len(medians) == 2:
            ratio = {c: medians["peftlab"][c] / medians["peer"][c] if medians["peer"][c] else float("nan")
                     for c in ("wall_s", "peak_rss_mb")}
            lines.append(f"| {name} | peftlab / peer | | {ratio['wall_s']:.2f}x | | | | | | {ratio['peak_rss_mb']:.2f}x | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny slice of the first workload, one seed")
    parser.add_argument("--workloads", help="comma-separated names (default: all)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per workload (the issue asks 3 on the MiniLM)")
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--data-dir", default=os.environ.get("PEFTLAB_DATA"))
    parser.add_argument("--out", default=str(HERE / "RESULTS-end-to-end.md"), help="the Markdown table")
    parser.add_argument("--work-dir", help="where the runs write (default: a temporary folder)")
    args = parser.parse_args(argv)
    chosen = [QUICK] if args.quick else [w for w in WORKLOADS if not args.workloads or w.name in args.workloads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(args.work_dir or temporary)
        for work in chosen:
            for seed in range(1, (1 if args.quick else args.seeds) + 1):
                for side in ("peftlab", "peer") if seed % 2 else ("peer", "peftlab"):  # alternate who goes first
                    rows.append(run_side(side, work, seed, args, folder))
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "log"}), flush=True)
    command = "python benchmarks/end_to_end.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = (f"# End to end: time to a score\n\n`{command}` ({args.threads} threads; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
            + table(rows) + "\nSeconds, MB, tokens/s; medians over seeds, score mean ± std.\n")
    Path(args.out).write_text(text)
    for row in rows:
        if row["status"] != "ok":
            print(f"{row['workload']} {row['side']} seed {row['seed']}: {row['status']}\n{row['log']}", file=sys.stderr)
    print(text)
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

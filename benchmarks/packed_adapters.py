"""K LoRA runs of the MiniLM on SST-2 trained at once on one frozen base (``peftlab.train.several``), against the
same K runs as separate processes, one after another and two at a time (issue 32).

    PEFTLAB_DATA=../shared/data python benchmarks/packed_adapters.py --runs 4 --out benchmarks/RESULTS-packed-adapters.md

Every run: LoRA r 8 on q, v with the new head trained beside it (``modules_to_save``), its own seed (initial
weights and data order), the same SST-2 training sentences, batch 32 in length-grouped batches, AdamW with
linear warm-up (6%) and decay, one epoch; scored on all of SST-2 dev. Each setting's processes are started
from here and timed from spawn to exit. The separate runs go through the same worker with one lane, so what
differs is only how many adapters share a process and a forward. Threads: 2 for a process that has the
machine to itself, 1 each for two side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def worker(seeds: list[int], train_samples: int, out: Path) -> None:
    import torch

    import peftlab
    from peftlab.core.state import adapter_states, named_adapter_parameters
    from peftlab.tasks import get_task, subsample
    from peftlab.train.batching import accumulation_groups
    from peftlab.train.encoding import collate, encode, sequence_length
    from peftlab.train.evaluation import evaluate
    from peftlab.train.models import load_model
    from peftlab.train.schedule import linear_schedule
    from peftlab.train.several import Lane, train_packed

    clock = {"start": time.perf_counter()}
    task = get_task("sst2")
    data_dir = os.environ.get("PEFTLAB_DATA")
    train = subsample(task.load(task.train_split, data_dir), train_samples, 0)
    dev = task.load(task.eval_splits[0], data_dir)
    loaded = load_model("minilm-l6", task)
    model, tokenizer = loaded.model, loaded.tokenizer
    features = encode(task, train, tokenizer, loaded.kind, 128)
    lengths = [sequence_length(feature, loaded.kind) for feature in features]
    for seed in seeds:
        torch.manual_seed(seed)
        peftlab.apply(model, "lora", adapter_name=f"s{seed}", rank=8, alpha=16, target_modules=["attention_qv"],
                      modules_to_save=list(loaded.head))
    clock["loaded"] = time.perf_counter()
    lanes = []
    for seed in seeds:
        groups = accumulation_groups(lengths, 32, 1, 1, seed, 0, group_by_length=True)
        batches = iter([collate([features[i] for i in group[0]], tokenizer.pad_token_id) for group in groups])
        parameters = [p for _, p in named_adapter_parameters(model, adapter_states(model)[f"s{seed}"])]
        optimizer = torch.optim.AdamW(parameters, lr=5e-4, weight_decay=0.0)
        lanes.append(Lane(f"s{seed}", batches, optimizer, linear_schedule(optimizer, round(0.06 * len(groups)),
                                                                          len(groups)), max_grad_norm=1.0))
    model.train()
    train_packed(model, lanes, len(groups), tokenizer.pad_token_id)
    clock["trained"] = time.perf_counter()
    scores = {}
    for lane in lanes:
        peftlab.set_adapter(model, lane.adapter)
        scores[lane.adapter] = evaluate(model, tokenizer, loaded.kind, task, dev, batch_size=256)["accuracy"]
    clock["scored"] = time.perf_counter()
    out.write_text(json.dumps({
        "scores": scores, "steps": len(groups), "load_s": clock["loaded"] - clock["start"],
        "train_s": clock["trained"] - clock["loaded"], "eval_s": clock["scored"] - clock["trained"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_losses": {lane.adapter: lane.losses[-1] for lane in lanes},
    }))


def spawn(seeds: list[int], threads: int, train_samples: int, folder: Path) -> tuple[subprocess.Popen, Path]:
    out = folder / f"worker-{'-'.join(map(str, seeds))}.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, str(Path(__file__)), "--worker", "--seeds", ",".join(map(str, seeds)),
               "--train-samples", str(train_samples), "--worker-out", str(out)]
    return subprocess.Popen(command, env=env), out


def run_setting(name: str, rounds: list[list[list[int]]], threads: int, train_samples: int) -> dict[str, Any]:
    """``rounds``: the processes started together, one round after another (each a list of seeds)."""
    by_round, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for processes in rounds:
            children = [spawn(seeds, threads, train_samples, Path(folder)) for seeds in processes]
            for child, _ in children:
                if child.wait() != 0:
                    raise SystemExit(f"{name}: a worker failed (exit {child.returncode})")
            by_round.append([json.loads(out.read_text()) for _, out in children])
    wall = time.perf_counter() - started
    results = [result for round_results in by_round for result in round_results]
    return {"setting": name, "wall_s": wall, "processes": len(results),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "rss_at_once_mb": max(sum(r["peak_rss_mb"] for r in round_results) for round_results in by_round),
            "train_s": sum(r["train_s"] for r in results),
            "scores": {lane: score for result in results for lane, score in result["scores"].items()},
            "workers": results}


def table(rows: list[dict[str, Any]], runs: int, train_samples: int, command: str) -> str:
    lines = [f"# {runs} LoRA runs of the MiniLM on SST-2: packed in one process against separate processes", "",
             f"Command: `{command}`", "",
             f"{train_samples} SST-2 sentences, one epoch (batch 32), LoRA r 8 on q, v plus the head; dev accuracy "
             f"on all 872 dev sentences. Wall: spawn to exit of every process of the setting.", "",
             "| setting | processes | wall (s) | vs one after another | peak RSS of a process (MB) | RSS at once (MB) "
             "| dev accuracy per run | mean |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]
    sequential = next(r["wall_s"] for r in rows if r["setting"].startswith("one after"))
    for row in rows:
        scores = [row["scores"][f"s{seed}"] for seed in range(runs)]
        lines.append(f"| {row['setting']} | {row['processes']} | {row['wall_s']:.1f} | "
                     f"{row['wall_s'] / sequential:.2f}x | {row['peak_rss_mb']:.0f} | {row['rss_at_once_mb']:.0f} | "
                     f"{' / '.join(f'{s:.3f}' for s in scores)} | {sum(scores) / len(scores):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--train-samples", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker([int(s) for s in args.seeds.split(",")], args.train_samples, args.worker_out)
        return
    seeds = list(range(args.runs))
    rows = [
        run_setting("packed in one process", [[seeds]], 2, args.train_samples),
        run_setting("one after another", [[[seed]] for seed in seeds], 2, args.train_samples),
        run_setting("two at a time", [[[a], [b]] for a, b in zip(seeds[::2], seeds[1::2])], 1, args.train_samples),
    ]
    command = "PEFTLAB_DATA=../shared/data python benchmarks/packed_adapters.py " + " ".join(sys.argv[1:])
    text = table(rows, args.runs, args.train_samples, command)
    print(text)
    if args.out:
        args.out.write_text(text + "\n```json\n" + json.dumps(rows, indent=1) + "\n```\n")


if __name__ == "__main__":
    main()

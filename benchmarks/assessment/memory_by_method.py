"""E4, per method: the training memory of every E1 and E3 row by component, measured beside the prediction.

    python benchmarks/assessment/memory_by_method.py --out benchmarks/assessment/memory

The rows and their options are read from the suites (``suites/e1-glue.yaml``: the MiniLM, every method
with its defaults; ``suites/e3-alpaca.yaml``: SmolLM2-135M's rows with their options), so this table
measures what the assessment trains. One training step per row on the suite's largest batch (E1: 32
sequences of 128 tokens, its batch and max length; E3: 8 of 256), split by
``peftlab.bench.memory.measure_step`` into weights, gradients, AdamW state and activations saved for
backward (float32 compute), beside the parameter-count prediction (weights + trainable x 12 bytes). E3's
model is a random-initialised LLaMA of SmolLM2-135M's shape: the same tensors, byte for byte, as the real
one. These are byte counts of tensors, so the machine's load does not move them.
Writes ``memory-by-method.md`` and ``memory-by-method.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

import torch
import transformers
from memory_scaling import SHAPES, VOCAB, llama, minilm, mib, step

from peftlab.bench.memory import COMPONENTS
from peftlab.bench.suite_file import load_suite

HERE = Path(__file__).resolve().parent
E1_BATCH, E1_LENGTH = 32, 128
E3_BATCH, E3_LENGTH = 8, 256


def rows_of(suite_file: Path) -> list[tuple[str, str, dict]]:
    """(label, method, options) of each distinct trained row of a suite, in the suite's order."""
    seen: dict[str, tuple[str, str, dict]] = {}
    for run in load_suite(str(suite_file)).runs():
        if run.method != "untuned":
            seen.setdefault(run.label, (run.label, run.method, dict(run.options)))
    return list(seen.values())


def measure(model_name: str, label: str, method: str, options: dict) -> dict:
    if model_name == "minilm-l6":
        model, vocab, batch, length = minilm(), 30_522, E1_BATCH, E1_LENGTH
        if method != "full":
            options = {"modules_to_save": ["classifier", "bert.pooler"], **options}
    else:
        model, vocab, batch, length = llama(*SHAPES["smollm2-135M shape"]), VOCAB, E3_BATCH, E3_LENGTH
    if method == "adalora":
        options = {"total_steps": 100, **options}
    result = step(model, method, options, vocab, batch=batch, length=length)
    del model
    gc.collect()
    return {"model": model_name, "method": label, "batch": [batch, length], **result}


def write_markdown(rows: list[dict], path: Path) -> None:
    lines = ["# E4 per method: training memory by component, one step, MiB", "",
             "Command: `python benchmarks/assessment/memory_by_method.py --out benchmarks/assessment/memory`. "
             f"MiniLM (E1): batch {E1_BATCH} x {E1_LENGTH} tokens; SmolLM2-135M shape (E3): batch "
             f"{E3_BATCH} x {E3_LENGTH}. Float32 compute.", "",
             "| model | method | trainable | " + " | ".join(COMPONENTS) + " | total | predicted w+g+o | total / full |",
             "|---|---|---:|" + "---:|" * (len(COMPONENTS) + 3)]
    full_total = {r["model"]: sum(r["measured"].values()) for r in rows if r["method"] == "full"}
    for row in rows:
        measured, prediction = row["measured"], row["predicted"]
        total = sum(measured.values())
        predicted_total = sum(prediction[c] for c in ("weights", "gradients", "optimizer"))
        share = f"{total / full_total[row['model']]:.2f}" if row["model"] in full_total else ""
        lines.append(f"| {row['model']} | {row['method']} | {row['trainable'] / 1e6:,.2f}M | "
                     + " | ".join(mib(measured[c]) for c in COMPONENTS)
                     + f" | {mib(total)} | {mib(predicted_total)} | {share} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="*", default=["minilm-l6", "smollm2-135m"])
    arguments = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    arguments.out.mkdir(parents=True, exist_ok=True)
    suites = {"minilm-l6": HERE / "suites" / "e1-glue.yaml", "smollm2-135m": HERE / "suites" / "e3-alpaca.yaml"}
    rows = []
    for model_name in arguments.models:
        for label, method, options in rows_of(suites[model_name]):
            torch.manual_seed(0)
            rows.append(measure(model_name, label, method, options))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "predicted"}), flush=True)
    (arguments.out / "memory-by-method.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    write_markdown(rows, arguments.out / "memory-by-method.md")


if __name__ == "__main__":
    main()

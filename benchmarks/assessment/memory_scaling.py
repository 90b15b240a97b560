"""E4: where 4-bit QLoRA starts to need less training memory than full fine-tuning and LoRA.

    python benchmarks/assessment/memory_scaling.py --out benchmarks/assessment/memory

On random-initialised LLaMA shapes of growing size (SmolLM2's vocabulary of 49,152 tokens; the 135M and
360M rows are SmolLM2's own shapes), and on the MiniLM of E1, one training step per method is measured
by component with ``peftlab.bench.memory.measure_step`` (weights, gradients, AdamW state, activations
saved for backward; float32 compute), beside the parameter-count prediction. These are byte counts of
the tensors, not of the process, so they do not move with what else the machine runs. Separately, the
resident memory that importing bitsandbytes adds to a process (measured in a fresh process each).
Writes ``memory-scaling.md`` and ``memory-scaling.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

import torch

import peftlab
from peftlab.bench.memory import COMPONENTS, measure_step, predicted

VOCAB = 49_152
SHAPES = {  # name: (hidden, layers, heads, key-value heads, intermediate)
    "llama-17M": (256, 4, 4, 2, 768),
    "llama-45M": (384, 8, 6, 2, 1024),
    "smollm2-135M shape": (576, 30, 9, 3, 1536),
    "smollm2-360M shape": (960, 32, 15, 5, 2560),
    "llama-600M": (1280, 28, 20, 5, 3584),
}
METHODS = {
    "full": ("full", {}),
    "lora (r 8, q v)": ("lora", {"rank": 8, "target_modules": ["attention_qv"]}),
    "qlora (r 64, all linear)": ("qlora", {"rank": 64, "target_modules": ["all_linear"], "compute_dtype": "float32"}),
    "qlora (r 8, q v)": ("qlora", {"rank": 8, "target_modules": ["attention_qv"], "compute_dtype": "float32"}),
}
BATCH, LENGTH = 2, 256


def llama(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=intermediate,
                         max_position_embeddings=LENGTH, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def minilm() -> torch.nn.Module:
    from peftlab.tasks import get_task
    from peftlab.train.models import load_model

    return load_model("minilm-l6", get_task("sst2")).model


def step(model: torch.nn.Module, method: str, options: dict, vocab: int, batch: int = BATCH,
         length: int = LENGTH) -> dict:
    parameters = sum(p.numel() for p in model.parameters())  # before 4-bit packing halves the element count
    peftlab.apply(model, method, **options)
    ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    inputs["labels"] = ids if hasattr(model, "lm_head") else torch.zeros(batch, dtype=torch.long)
    prediction = predicted(model)
    measured = measure_step(model, inputs, lambda m: peftlab.make_optimizer(m, 1e-4))
    return {"parameters": parameters, "measured": measured, "predicted": prediction,
            "trainable": peftlab.parameter_report(model).trainable}


def import_cost() -> dict[str, int]:
    """Resident bytes of a fresh process after importing torch + transformers, and after bitsandbytes too."""
    probe = ("import psutil, torch, transformers; base = psutil.Process().memory_info().rss; {extra}"
             "print(base, psutil.Process().memory_info().rss)")
    plain = subprocess.run([sys.executable, "-c", probe.format(extra="")], capture_output=True, text=True, check=True)
    quant = subprocess.run([sys.executable, "-c", probe.format(extra="import bitsandbytes; ")], capture_output=True,
                           text=True, check=True)
    base, _ = map(int, plain.stdout.split()[-2:])
    _, with_bnb = map(int, quant.stdout.split()[-2:])
    return {"torch_transformers": base, "plus_bitsandbytes": with_bnb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), help="which LLaMA shapes (default: all)")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for shape in ["minilm-l6 (E1)", *arguments.shapes]:
        for label, (method, options) in METHODS.items():
            if shape.startswith("minilm"):
                model, vocab, options = minilm(), 30_522, {**options, "modules_to_save": ["classifier", "bert.pooler"]}
            else:
                model, vocab = llama(*SHAPES[shape]), VOCAB
            result = step(model, method, options, vocab)
            rows.append({"shape": shape, "method": label, **result})
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "predicted"}), flush=True)
            del model
            gc.collect()
    cost = import_cost()
    (arguments.out / "memory-scaling.json").write_text(json.dumps({"rows": rows, "import_rss": cost}, indent=1))
    write_markdown(rows, cost, arguments.out / "memory-scaling.md")
    plot(rows, arguments.out / "memory-scaling.png")


def mib(value: int | None) -> str:
    return "" if value is None else f"{value / 2**20:,.0f}"


def write_markdown(rows: list[dict], cost: dict[str, int], path: Path) -> None:
    lines = ["# E4: training memory by component, one step (batch 2 x 256 tokens; MiniLM: 2 x 256 too), MiB",
             "", "Command: `python benchmarks/assessment/memory_scaling.py --out benchmarks/assessment/memory`", "",
             "| shape | parameters | method | trainable | " + " | ".join(COMPONENTS) + " | total | predicted w+g+o |",
             "|---|---:|---|---:|" + "---:|" * (len(COMPONENTS) + 2)]
    for row in rows:
        measured, prediction = row["measured"], row["predicted"]
        total = sum(measured.values())
        predicted_total = sum(prediction[c] for c in ("weights", "gradients", "optimizer"))
        lines.append(f"| {row['shape']} | {row['parameters'] / 1e6:,.1f}M | {row['method']} | "
                     f"{row['trainable'] / 1e6:,.2f}M | " + " | ".join(mib(measured[c]) for c in COMPONENTS)
                     + f" | {mib(total)} | {mib(predicted_total)} |")
    lines += ["", f"Resident memory of a fresh process after `import torch, transformers`: "
                  f"{mib(cost['torch_transformers'])} MiB; after also `import bitsandbytes`: "
                  f"{mib(cost['plus_bitsandbytes'])} MiB."]
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for label in METHODS:
        points = sorted((r["parameters"], sum(r["measured"].values())) for r in rows
                        if r["method"] == label and not r["shape"].startswith("minilm"))
        axis.plot([p / 1e6 for p, _ in points], [t / 2**20 for _, t in points], marker="o", label=label)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("parameters (millions, random-init LLaMA shapes)")
    axis.set_ylabel("one training step: weights + grads + AdamW + activations (MiB)")
    axis.legend()
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

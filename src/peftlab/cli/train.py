"""``peftlab train``: fine-tune a model on a task with a method; every flag is a :class:`TrainArgs` field.

    peftlab train --model minilm-l6 --task sst2 --method lora --set rank=8 --output runs/sst2-lora
    peftlab train --config exp.yaml --seed 1        # flags override the file's values

An experiment file is YAML with the same names (``learning_rate`` or ``lr``, ...) and the method's
options under ``options:``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from peftlab.cli import CommandError
from peftlab.train.args import FLAGS

HELP = {
    "model": "an alias (minilm-l6, smollm2-135m), a local model folder, or a hub name",
    "task": "a task name (see peftlab.tasks.task_names(): cola sst2 mrpc stsb rte qnli mnli qqp wmt16-en-ro mmlu mmlu-5shot mmlu-subset mmlu-subset-5shot alpaca english-lm)",
    "method": "a registered method (see `peftlab methods`), or untuned: score the base model as it is",
    "options": "a method option, KEY=VALUE (repeatable; see `peftlab methods --options NAME`)",
    "output_dir": "the run folder: adapter files, metrics.json, log.jsonl, checkpoint-<step>/",
    "data_dir": "the data root (glue/, mmlu/, wmt16_en_ro/, alpaca/); default $PEFTLAB_DATA; a task whose files "
                "are not there is read from the HF hub when `datasets` is installed",
    "train_split": "train on this split instead of the task's own (WMT16 without train files: newsdev2016)",
    "eval_tasks": "also score this task at the end (repeatable; e.g. --task alpaca --eval-task mmlu)",
    "max_steps": "optimizer steps (overrides --epochs)",
    "batch_size": "examples per process per micro-step",
    "holdout": "hold out N training examples (the same draw for every run) and score on them instead of the "
               "dev set: choose hyperparameters without the dev set that the tables report",
    "eval_steps": "evaluate every N steps (default: at each epoch end)",
    "save_steps": "write checkpoint-<step>/ every N steps (also at each epoch end)",
    "save_minutes": "also write a checkpoint when this many minutes have passed since the last one (long epochs)",
    "save_total_limit": "how many checkpoints to keep",
    "mixed_precision": "auto: bf16 (or fp16) on a GPU, off on CPU",
    "fsdp": "shard the model with FSDP2 across the launched processes",
    "resume": "continue from the newest complete checkpoint in --output",
    "overwrite": "replace a previous run in --output",
    "progress": "hide the progress bar",
    "loss": "auto: the chunked LM loss (no full-vocabulary logits) for text tasks where it applies; plain: model(**batch).loss",
    "fused_ops": "run RMSNorm and SwiGLU layers as the model's own eager ops (same values; slower, more memory)",
    "keep_freed_memory": "on CPU, let malloc return freed blocks to the system between steps (slower steps; "
                         "the process's memory can fall after its peak)",
    "fast_dropout": "on CPU, draw dropout masks with PyTorch's own dropout (one random float per element; slower) "
                    "instead of four masks per 64-bit draw",
    "group_by_length": "draw batches at random, not grouped by length (every batch pads to its longest example)",
    "pack": "pad each decoder example to the batch's longest instead of packing several into one row (packing "
            "is on where it trains the same: decoder-only models on text tasks, methods that keep examples apart)",
    "compile": "torch.compile each transformer block (regional): the first steps compile, seconds per graph, "
               "then every step is faster (same function; needs a C++ compiler on CPU)",
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a model on a task with a PEFT method",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="an experiment YAML file (flags override it)")
    from peftlab.train.args import TrainArgs

    hints = typing.get_type_hints(TrainArgs)
    for field in dataclasses.fields(TrainArgs):
        flag = "--" + FLAGS.get(field.name, field.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": HELP.get(field.name)}
        hint = hints[field.name]
        if hint is bool and field.default is True:  # on by default: the flag turns it off
            parser.add_argument(flag, action="store_const", const=False, **kwargs)
        elif hint is bool:
            parser.add_argument(flag, action="store_const", const=True, **kwargs)
        elif field.name in ("options", "eval_tasks"):
            parser.add_argument(flag, action="append", metavar="KEY=VALUE" if field.name == "options" else "TASK", **kwargs)
        else:
            scalar = _scalar_type(hint)
            choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
            parser.add_argument(flag, type=scalar, choices=choices, **kwargs)
    parser.set_defaults(handler=run)


def _scalar_type(hint: Any) -> type:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint if hint in (int, float) else str


def train_args(arguments: argparse.Namespace):
    """Defaults, then the experiment file, then the flags."""
    from peftlab.train.args import TrainArgs

    values: dict[str, Any] = _read_config(arguments.config) if arguments.config else {}
    options = dict(values.pop("options", {}) or {})
    for key, value in vars(arguments).items():
        if key in TrainArgs.field_names() and value is not None and key != "options":
            values[key] = value
    for item in arguments.options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"--set takes KEY=VALUE (got {item!r})")
        options[key.strip()] = value.strip()
    values["options"] = options
    missing = [name for name in ("model", "task") if name not in values]
    if missing:
        raise CommandError(f"missing --{' and --'.join(missing)} (on the command line or in --config)")
    return TrainArgs(**values)


def _read_config(path: str) -> dict[str, Any]:
    import yaml

    from peftlab.train.args import TrainArgs

    file = Path(path)
    if not file.is_file():
        raise CommandError(f"--config {path}: no such file")
    try:
        document = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as error:
        raise CommandError(f"--config {path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise CommandError(f"--config {path} must hold a mapping of settings")
    aliases = {flag.replace("-", "_"): name for name, flag in FLAGS.items()}
    values = {aliases.get(key.replace("-", "_"), key.replace("-", "_")): value for key, value in document.items()}
    unknown = sorted(set(values) - set(TrainArgs.field_names()))
    if unknown:
        raise CommandError(f"--config {path}: unknown settings {', '.join(unknown)}; "
                           f"known: {', '.join(TrainArgs.field_names())}")
    if "options" in values and not isinstance(values["options"], dict):
        raise CommandError(f"--config {path}: 'options' must be a mapping of the method's options")
    return values


def run(arguments: argparse.Namespace) -> int:
    from peftlab.train import run_training

    args = train_args(arguments)
    if args.output_dir is None:
        print("peftlab train: no --output, so nothing is written (no adapter, metrics or checkpoints); the scores "
              "are printed at the end. Add --output DIR to keep the run", file=sys.stderr)
    metrics = run_training(args)
    summary = {k: metrics[k] for k in ("task", "method", "scores", "parameters", "train_time_s",
                                       "train_tokens_per_s", "peak_memory_bytes")}
    print(json.dumps(summary, indent=2))
    return 0

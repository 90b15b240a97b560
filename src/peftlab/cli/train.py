"""``peftlab train``: every flag is a :class:`~peftlab.train.args.TrainArgs` field; the help shown is
``DESCRIPTION``, plain text (no markup), with each flag's default."""

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
from peftlab.tasks import task_names
from peftlab.train.args import FLAGS, TRACKERS

DESCRIPTION = """Fine-tune a model on a task with a PEFT method, then score it.

  peftlab train --model minilm-l6 --task sst2 --method lora --set rank=8 --output runs/sst2-lora
  peftlab train --config exp.yaml --seed 1        # flags override the file's values

Your own data (--task classify, chat or seq2seq; CSV, TSV, JSON, JSONL, Parquet, a datasets
save_to_disk folder, or a hub dataset name):

  peftlab train --model minilm-l6 --task classify --train reviews.csv --text-column review --label-column stars
  peftlab train --model smollm2-135m --task chat --train chats.jsonl --eval chats-dev.jsonl
  peftlab train --model t5-small --task seq2seq --train pairs.parquet --source-column en --target-column de

chat reads a "messages" column (lists of {role, content}) in the tokenizer's chat template (a tokenizer
without one is refused; there is no fallback template), loss on the assistant turns only; or
instruction/input/output columns in the Alpaca prompt. Without --eval a fixed tenth of the --train rows
is held out and scored.

An experiment file is YAML with the same names as the flags (learning_rate or lr, ...) and the
method's options under "options:". A classification task's new head trains beside the method."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a model on a task with a PEFT method",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", help="an experiment YAML file (flags override it)")
    from peftlab.train.args import TrainArgs

    hints = typing.get_type_hints(TrainArgs)
    for field in dataclasses.fields(TrainArgs):
        flag = "--" + FLAGS.get(field.name, field.name.replace("_", "-"))
        hint = hints[field.name]
        kwargs: dict[str, Any] = {"dest": field.name, "default": None, "help": flag_help(field, hint)}
        if hint is bool and field.default is True:  # on by default: the flag turns it off
            parser.add_argument(flag, action="store_const", const=False, **kwargs)
        elif hint is bool:
            parser.add_argument(flag, action="store_const", const=True, **kwargs)
        elif field.name in ("options", "eval_tasks"):
            parser.add_argument(flag, action="append", metavar="KEY=VALUE" if field.name == "options" else "TASK", **kwargs)
        elif field.name == "report_to":
            parser.add_argument(flag, action="append", choices=(*TRACKERS, "none"), metavar="TRACKER", **kwargs)
        else:
            scalar = _scalar_type(hint)
            choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
            parser.add_argument(flag, type=scalar, choices=choices, **kwargs)
    parser.set_defaults(handler=run)


def flag_help(field: dataclasses.Field, hint: Any) -> str | None:
    """The flag's help: the field's own (``TrainArgs``), the registered names after ``--task``'s, the
    default or that it is required, and said to turn the setting off where the flag does."""
    text = field.metadata.get("help", "")
    if field.name == "task":
        text = f"{text}: {', '.join(task_names())}"
    if hint is bool:
        return f"turn off (on by default): {text}" if field.default is True else text or None
    if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
        return f"{text} (required, here or in --config)"
    if field.default not in (None, (), dataclasses.MISSING):
        return f"{text} (default: {field.default})" if text else f"default: {field.default}"
    return text or None


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

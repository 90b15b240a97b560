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
method's options under "options:". A classification task's new head trains beside the method.

Several adapters at once, on one frozen base in one process (each its own seed, data order, optimizer,
schedule, checkpoints and run folder OUTPUT/<method>-seed<seed>/; one forward per step for all of them):

  peftlab train --model minilm-l6 --task sst2 --method lora --seeds 0 1 2 --output runs/sst2
  peftlab train --config lora.yaml --config ia3.yaml --output runs/sst2   # one adapter per file
  peftlab train ... --lanes '[{"method": "lora", "seed": 1}, {"method": "ia3", "seed": 1}]'

Only the method, its options, seed, lr, weight decay, warm-up and gradient clipping may differ between
them. Without dropout each trains as it would alone (to float rounding)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="fine-tune a model on a task with a PEFT method",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE", action="append",
                        help="an experiment YAML file (flags override it); repeated: one adapter per file, "
                             "trained at once")
    parser.add_argument("--seeds", metavar="SEED", type=int, nargs="+",
                        help="train one adapter per seed at once on one base (OUTPUT/<method>-seed<seed>/ each)")
    parser.add_argument("--lanes", metavar="JSON",
                        help="train one adapter per JSON object at once, each object the settings that differ "
                             "(method, options, seed, learning_rate, ...); what `peftlab bench --pack` reproduces")
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


def lane_args(arguments: argparse.Namespace) -> list:
    """The runs asked for: one, or one per ``--config`` file x ``--seeds`` seed, or one per ``--lanes`` object."""
    configs, seeds = arguments.config or [None], arguments.seeds or [None]
    if arguments.seeds and arguments.seed is not None:
        raise CommandError("give --seed or --seeds, not both")
    lanes = [{}]
    if arguments.lanes:
        if arguments.seeds or len(configs) > 1:
            raise CommandError("--lanes lists every run: give it without --seeds and with one --config at most")
        try:
            lanes = json.loads(arguments.lanes)
        except json.JSONDecodeError as error:
            raise CommandError(f"--lanes is not valid JSON: {error}") from None
        if not isinstance(lanes, list) or not lanes or not all(isinstance(lane, dict) for lane in lanes):
            raise CommandError("--lanes takes a JSON list of objects, one per run")
    return [train_args(arguments, config, {**lane, **({} if seed is None else {"seed": seed})})
            for config in configs for seed in seeds for lane in lanes]


def train_args(arguments: argparse.Namespace, config: str | None = None, lane: dict[str, Any] | None = None):
    """Defaults, then the experiment file, then the flags, then the run's own settings (``lane``)."""
    from peftlab.train.args import TrainArgs

    config = config if config is not None else (arguments.config or [None])[0]
    values: dict[str, Any] = _read_config(config) if config else {}
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
    unknown = sorted(set(lane or {}) - set(TrainArgs.field_names()))
    if unknown:
        raise CommandError(f"--lanes: unknown settings {', '.join(unknown)}")
    values.update(lane or {})
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

    lanes = lane_args(arguments)
    if lanes[0].output_dir is None:
        print("peftlab train: no --output, so nothing is written (no adapter, metrics or checkpoints); the scores "
              "are printed at the end. Add --output DIR to keep the run", file=sys.stderr)
    keys = ("task", "method", "scores", "parameters", "train_time_s", "train_tokens_per_s", "peak_memory_bytes")
    if len(lanes) == 1:
        metrics = run_training(lanes[0])
        print(json.dumps({k: metrics[k] for k in keys}, indent=2))
        return 0
    import dataclasses

    from peftlab.train.packed_run import lane_names, run_packed

    names = lane_names(lanes)
    if lanes[0].output_dir is not None:
        lanes = [dataclasses.replace(args, output_dir=str(Path(args.output_dir) / name))
                 for args, name in zip(lanes, names)]
    records = run_packed(lanes, names)
    print(json.dumps([{"lane": r["lane"], "seed": r["seed"], **{k: r[k] for k in keys}} for r in records], indent=2))
    return 0

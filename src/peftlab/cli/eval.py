"""``peftlab eval``: score a saved adapter (or the base model alone) on a task."""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="score an adapter on a task")
    parser.add_argument("--model", required=True, help="the base model: alias, local folder or hub name")
    parser.add_argument("--adapter", help="an adapter folder (e.g. a train --output); omit to score the base model")
    parser.add_argument("--task", required=True, help="the task to score; for classify, chat and seq2seq the data "
                                                      "settings not given are the adapter's (its task.json)")
    parser.add_argument("--data-dir", help="the data root; default $PEFTLAB_DATA; missing files are read from the HF hub "
                                           "when `datasets` is installed")
    parser.add_argument("--train", dest="train_file", metavar="FILE",
                        help="classify, chat, seq2seq: score the rows held out of this file (as train did)")
    parser.add_argument("--eval", dest="eval_file", metavar="FILE", help="classify, chat, seq2seq: score this file")
    for column in ("text", "text-pair", "label", "source", "target"):
        parser.add_argument(f"--{column}-column", metavar="NAME", help="as for peftlab train")
    parser.add_argument("--split", help="score this split instead of the task's test/dev split(s)")
    parser.add_argument("--max-eval-samples", type=int, help="score a random subset of this size")
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", help="also write the scores to this JSON file (a new one)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from peftlab.train import EvalArgs
    from peftlab.train.evaluate_adapter import evaluate_adapter

    from peftlab.tasks.files import DataFiles

    values = {k: v for k, v in vars(arguments).items() if k not in ("command", "handler")}
    data = DataFiles(**{name: values.pop(name) for name in DataFiles.__dataclass_fields__})
    record = evaluate_adapter(EvalArgs(**values, data=data))
    print(json.dumps(record, indent=2))
    return 0

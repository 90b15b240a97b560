"""``peftlab eval``: score a saved adapter (or the base model alone) on a task, with peftlab's own scoring
(``--task``) or with EleutherAI's lm-evaluation-harness (``--harness``)."""

from __future__ import annotations

import argparse
import json

from peftlab.cli import CommandError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="score an adapter on a task")
    parser.add_argument("--model", required=True, help="the base model: alias, local folder or hub name")
    parser.add_argument("--adapter", help="an adapter folder (e.g. a train --output); omit to score the base model")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--task", help="the task to score with peftlab's own scoring; for classify, chat and seq2seq "
                                      "the data settings not given are the adapter's (its task.json)")
    which.add_argument("--harness", metavar="TASK[,TASK]",
                       help="score with lm-evaluation-harness (pip install 'peftlab[harness]'): its task names, or "
                            "mmlu_local / mmlu_local_subset (MMLU / peftlab's mmlu-subset questions read from the "
                            "data root, offline)")
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output/--harness-output file")
    harness = parser.add_argument_group("with --harness")
    harness.add_argument("--merge", action="store_true", help="fold the adapter into the weights before scoring")
    harness.add_argument("--num-fewshot", type=int, help="few-shot examples per question (default: each task's own)")
    harness.add_argument("--limit", type=int, help="at most this many questions per lm-eval task (mmlu_local: per subject)")
    harness.add_argument("--harness-output", metavar="FILE", help="also write lm-eval's results to this JSON file")
    parser.set_defaults(handler=run)


HARNESS_ONLY = ("merge", "num_fewshot", "limit", "harness_output")


def run(arguments: argparse.Namespace) -> int:
    if arguments.harness:
        return run_harness(arguments)
    given = [name for name in HARNESS_ONLY if getattr(arguments, name) not in (None, False)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CommandError(f"{flags} go(es) with --harness; with --task use --max-eval-samples and --output")
    from peftlab.train import EvalArgs
    from peftlab.train.evaluate_adapter import evaluate_adapter

    from peftlab.tasks.files import DataFiles

    values = {k: v for k, v in vars(arguments).items() if k not in ("command", "handler", "harness", *HARNESS_ONLY)}
    data = DataFiles(**{name: values.pop(name) for name in DataFiles.__dataclass_fields__})
    record = evaluate_adapter(EvalArgs(**values, data=data))
    print(json.dumps(record, indent=2))
    return 0


def run_harness(arguments: argparse.Namespace) -> int:
    if arguments.output:
        raise CommandError("with --harness, the results file is --harness-output FILE")
    if arguments.split or arguments.max_eval_samples:
        raise CommandError("with --harness, lm-eval picks each task's split; --limit N scores at most N questions a task")
    from peftlab.train.harness import HarnessArgs, results_table, run_harness

    tasks = tuple(name.strip() for name in arguments.harness.split(",") if name.strip())
    if not tasks:
        raise CommandError("--harness needs at least one task name (e.g. mmlu_local)")
    results = run_harness(HarnessArgs(
        model=arguments.model, tasks=tasks, adapter=arguments.adapter, merge=arguments.merge,
        num_fewshot=arguments.num_fewshot, limit=arguments.limit, data_dir=arguments.data_dir,
        batch_size=arguments.eval_batch_size, seed=arguments.seed, output=arguments.harness_output,
        overwrite=arguments.overwrite))
    print(results_table(results))
    if arguments.harness_output:
        print(f"wrote {arguments.harness_output}")
    return 0

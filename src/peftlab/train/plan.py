"""Everything a run needs, loaded and checked before anything is written: the task's data, the model
with its head, the method applied. Any bad input fails here, with the output folder untouched."""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peftlab
from peftlab.core.architectures import architecture_of
from peftlab.core.outputs import OutputKind, claim_output, remove_owned
from peftlab.core.registry import get_method
from peftlab.tasks import Example, Task, get_task, subsample
from peftlab.tasks.files import TASK_FILE, task_for
from peftlab.train.args import UNTUNED, ArgumentError, TrainArgs
from peftlab.train.encoding import check_chat_template
from peftlab.train.models import LoadedModel, ModelError, load_model
from peftlab.train.trackers import OWNED as TRACKER_FILES

HEAD_TASK_KINDS = ("classification", "regression")
HOLDOUT_SEED = 20231219  # one held-out draw for every run of a task (the survey's arXiv date)
TRAIN_OUTPUT = OutputKind(command="peftlab train", flag="--output", resumable=True, owns=(
    "log.jsonl", "metrics.json", "adapter_config.json", "adapter_model.safetensors", TASK_FILE, "best",
    "checkpoint-*", ".final-adapter", *TRACKER_FILES))


@dataclass
class EvalSet:
    task: Task
    split: str
    examples: list[Example]
    prefix: str  # "" for the trained task, "<task>/" for the extra ones


@dataclass
class Plan:
    args: TrainArgs
    task: Task
    train_examples: list[Example]
    eval_sets: list[EvalSet]
    loaded: LoadedModel
    output_dir: Path | None


def check_output_dir(args: TrainArgs) -> Path | None:
    """The run folder, checked by the output policy (:mod:`peftlab.core.outputs`) before anything loads."""
    if args.output_dir is None:
        return None
    model = args.model if Path(args.model).exists() else None  # an alias or hub name is no local input
    claim_output(args.output_dir, TRAIN_OUTPUT, overwrite=args.overwrite, resume=args.resume,
                 inputs={"--model": model})
    return Path(args.output_dir)


def clear_output_dir(path: Path) -> None:
    """For --overwrite: remove the previous run's own files (once the new run has loaded fine); anything
    else in the folder was refused before (:func:`check_output_dir`)."""
    remove_owned(path, TRAIN_OUTPUT)


def eval_sets_for(task: Task, args: TrainArgs, prefix: str = "") -> list[EvalSet]:
    return [EvalSet(task, split, subsample(task.load(split, args.data_dir), args.max_eval_samples, args.seed), prefix)
            for split in task.eval_splits]


def split_holdout(examples: list[Example], args: TrainArgs) -> tuple[list[Example], list[Example] | None]:
    """``(training examples, held-out examples)``: with ``--holdout N``, N examples of the training split
    set aside to score on instead of the dev set, so hyperparameters are chosen without seeing the dev set
    that the tables report. The draw is the same for every seed and method (``HOLDOUT_SEED``), and the
    held-out examples are scored under the dev set's metric names."""
    if args.holdout is None:
        return examples, None
    if args.holdout >= len(examples):
        raise ArgumentError(f"--holdout {args.holdout} leaves nothing to train on: the training split has "
                            f"{len(examples)} examples; hold out fewer")
    held = set(random.Random(HOLDOUT_SEED).sample(range(len(examples)), args.holdout))
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def optimizer_steps(args: TrainArgs, examples: int, world: int) -> int:
    """The run's optimizer steps (the loop's accumulation groups, summed over its epochs)."""
    micro, rest = divmod(examples, args.batch_size * world)
    micro += 1 if rest >= world else 0  # a last partial batch runs when every process gets an example
    return args.max_steps or args.epochs * math.ceil(micro / args.gradient_accumulation_steps)


def method_options(args: TrainArgs, head: tuple[str, ...], total_steps: int) -> dict[str, Any]:
    """The user's options, with the new classification head trained and saved beside the method, and
    the run's length for methods that schedule over it (AdaLoRA's ``total_steps``) unless given."""
    options = dict(args.options)
    fields = {f.name for f in dataclasses.fields(get_method(args.method).config_class)}
    if "total_steps" in fields and "total_steps" not in options:
        options["total_steps"] = total_steps
    if head:
        given = options.get("modules_to_save", ())
        given = given.split(",") if isinstance(given, str) else list(given)
        options["modules_to_save"] = tuple(dict.fromkeys([*[g for g in given if g], *head]))
    return options


def make_plan(args: TrainArgs, world: int = 1) -> Plan:
    output_dir = check_output_dir(args)
    task = task_for(args.task, dataclasses.asdict(args))
    spec = None if args.method == UNTUNED else get_method(args.method)
    extra = [get_task(name) for name in args.eval_tasks]
    for other in extra:
        if (other.kind in HEAD_TASK_KINDS) != (task.kind in HEAD_TASK_KINDS):
            raise ArgumentError(f"--eval-task {other.name} needs a {'classification head' if other.kind in HEAD_TASK_KINDS else 'language-model head'}, "
                                f"but {task.name} trains the other kind")
    train_examples, heldout = split_holdout(task.load(args.train_split or task.train_split, args.data_dir), args)
    train_examples = subsample(train_examples, args.max_train_samples, args.seed)
    if not train_examples:
        raise ArgumentError(f"task {task.name}: the training split is empty")
    eval_sets = eval_sets_for(task, args) if heldout is None else [
        EvalSet(task, task.eval_splits[0], subsample(heldout, args.max_eval_samples, args.seed), "")]
    for other in extra:
        eval_sets += eval_sets_for(other, args, prefix=f"{other.name}/")

    peftlab_seed(args.seed)
    loaded = load_model(args.model, task)
    if any(example.messages for example in train_examples):
        check_chat_template(loaded.tokenizer, loaded.kind)
    if spec is None:  # untuned: the base model as loaded, with nothing to train
        if task.kind in HEAD_TASK_KINDS:
            raise ArgumentError(f"--method {UNTUNED} scores the base model as it is, but {task.name} needs a new, "
                                "untrained classification head: score an untuned model on a text task")
        loaded.model.requires_grad_(False)
        return Plan(args, task, train_examples, eval_sets, loaded, output_dir)
    architecture = architecture_of(loaded.model)
    if architecture is not None and architecture.name not in spec.architectures:
        raise ModelError(f"method {spec.name!r} supports {', '.join(spec.architectures)} models; "
                         f"{args.model!r} is a {architecture.name} model (see `peftlab methods`)")
    total_steps = optimizer_steps(args, len(train_examples), world)
    if loaded.load_note and os.environ.get("RANK", "0") == "0":  # once under torchrun
        print(loaded.load_note, file=sys.stderr)
    peftlab.apply(loaded.model, args.method, **method_options(args, loaded.head, total_steps))
    return Plan(args, task, train_examples, eval_sets, loaded, output_dir)


def peftlab_seed(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)

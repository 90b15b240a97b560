"""Score a saved adapter (or a plain base model) on a task: ``peftlab eval``."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

import peftlab
from peftlab.core.atomic import write_text_atomic
from peftlab.core.outputs import OutputKind, claim_output
from peftlab.tasks import subsample
from peftlab.tasks.files import saved_record, task_for
from peftlab.train.args import EvalArgs
from peftlab.train.evaluation import evaluate
from peftlab.train.models import load_model

EVAL_OUTPUT = OutputKind(command="peftlab eval", flag="--output", folder=False)


def evaluate_adapter(args: EvalArgs) -> dict[str, Any]:
    """The task's scores for ``args.model`` with ``args.adapter`` loaded (or none)."""
    if args.output:  # before any work: an existing file is replaced only with overwrite
        claim_output(args.output, EVAL_OUTPUT, overwrite=args.overwrite, inputs={"--adapter": args.adapter})
    task = task_for(args.task, dataclasses.asdict(args.data), saved_record(args.adapter))
    splits = (args.split,) if args.split else task.eval_splits
    sets = {split: subsample(task.load(split, args.data_dir), args.max_eval_samples, args.seed) for split in splits}
    torch.manual_seed(args.seed)
    loaded = load_model(args.model, task)
    if args.adapter is not None:
        peftlab.load_adapter(loaded.model, args.adapter)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded.model.to(device)
    scores: dict[str, float] = {}
    for split, examples in sets.items():
        result = evaluate(loaded.model, loaded.tokenizer, loaded.kind, task, examples,
                          batch_size=args.eval_batch_size, max_length=loaded.max_length(args.max_length), num_beams=args.num_beams,
                          max_new_tokens=args.max_new_tokens, device=device)
        scores.update({task.score_name(split, k) if args.split is None else k: v for k, v in result.items()})
    record = {"model": args.model, "adapter": args.adapter, "task": task.name, "splits": list(splits),
              "examples": {s: len(e) for s, e in sets.items()}, "scores": scores}
    if args.output:
        write_text_atomic(args.output, json.dumps(record, indent=2) + "\n")
    return record

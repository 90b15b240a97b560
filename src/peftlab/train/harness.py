"""``peftlab eval --harness TASKS``: an adapted model scored by EleutherAI's lm-evaluation-harness.

The model is loaded as ``peftlab eval`` loads it (aliases resolve to local files), the adapter applied with
peftlab (and merged into the weights with ``merge``), and the model object handed to lm-eval's ``HFLM``;
``lm_eval.simple_evaluate`` then scores it. ``mmlu_local`` and ``mmlu_local_subset`` read ``<data>/mmlu``
(:mod:`peftlab.train.harness_tasks`); any other lm-eval task reads its own data, which must be reachable.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import peftlab
from peftlab.core.atomic import write_text_atomic
from peftlab.core.errors import UserError
from peftlab.core.outputs import OutputKind, claim_output
from peftlab.tasks import DATA_ENV, get_task
from peftlab.train.harness_tasks import LOCAL_TASKS, write_local_tasks
from peftlab.train.models import load_model

HARNESS_OUTPUT = OutputKind(command="peftlab eval", flag="--harness-output", folder=False)
EXTRA = "pip install 'peftlab[harness]'"


class HarnessError(UserError, ValueError):
    """A harness run that cannot start: a task unknown or out of reach, lm-eval missing, no data."""


@dataclass(frozen=True, kw_only=True)
class HarnessArgs:
    model: str
    tasks: tuple[str, ...]
    adapter: str | None = None
    merge: bool = False  # fold the adapter into the weights before scoring
    num_fewshot: int | None = None  # None: each task's own default
    limit: int | None = None  # at most this many questions per lm-eval task (mmlu_local: per subject)
    data_dir: str | None = None  # default $PEFTLAB_DATA
    batch_size: int = 32
    seed: int = 42
    output: str | None = None  # the results as JSON
    overwrite: bool = False


def run_harness(args: HarnessArgs) -> dict[str, Any]:
    """lm-eval's results dict (``results``, ``groups``, ``configs``, ... without per-sample logs)."""
    if args.merge and args.adapter is None:
        raise HarnessError("--merge folds an adapter into the model: give --adapter DIR too")
    if args.output:  # before any work: an existing file is replaced only with overwrite
        claim_output(args.output, HARNESS_OUTPUT, overwrite=args.overwrite, inputs={"--adapter": args.adapter})
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise HarnessError(f"--harness needs EleutherAI's lm-evaluation-harness: {EXTRA}") from None
    local = [name for name in args.tasks if name in LOCAL_TASKS]
    with tempfile.TemporaryDirectory(prefix="peftlab-harness-") as folder:
        if local:
            write_local_tasks(local, _data_root(args.data_dir, local), Path(folder))
        others = [name for name in args.tasks if name not in LOCAL_TASKS]
        manager = TaskManager(include_path=folder, include_defaults=bool(others))
        unknown = [name for name in others if name not in manager.all_tasks]
        if unknown:
            raise HarnessError(f"unknown lm-eval task(s): {', '.join(unknown)}; peftlab's offline tasks are "
                               f"{', '.join(LOCAL_TASKS)} (read from $PEFTLAB_DATA); `lm_eval ls tasks` lists lm-eval's")
        try:  # before the model loads: a task whose data is out of reach fails at once
            loaded = manager.load(list(args.tasks))
        except (ConnectionError, OSError) as error:
            raise HarnessError(_unreachable(args.tasks, error)) from None
        manager.load = lambda tasks: loaded  # simple_evaluate loads its tasks through the manager: these ones
        torch.manual_seed(args.seed)
        model, tokenizer, kind = _adapted_model(args)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="seq2seq" if kind == "encoder-decoder" else "causal",
                  batch_size=args.batch_size, device=device)
        results = lm_eval.simple_evaluate(model=lm, tasks=list(args.tasks), num_fewshot=args.num_fewshot,
                                          limit=args.limit, log_samples=False, task_manager=manager,
                                          random_seed=args.seed, numpy_random_seed=args.seed,
                                          torch_random_seed=args.seed, fewshot_random_seed=args.seed)
    results["peftlab"] = {"model": args.model, "adapter": args.adapter, "merged": args.merge,
                          "tasks": list(args.tasks), "num_fewshot": args.num_fewshot, "limit": args.limit}
    if args.output:
        write_text_atomic(args.output, json.dumps(results, indent=2, default=_plain) + "\n")
    return results


def results_table(results: dict[str, Any]) -> str:
    """lm-eval's own tables: each task's scores, then each group's."""
    from lm_eval.utils import make_table

    return make_table(results) + ("\n" + make_table(results, "groups") if results.get("groups") else "")


def _adapted_model(args: HarnessArgs) -> tuple[Any, Any, str]:
    loaded = load_model(args.model, get_task("mmlu"))  # a multiple-choice task: the model's own LM head
    if args.adapter is not None:
        peftlab.load_adapter(loaded.model, args.adapter)
        if args.merge:
            peftlab.merge(loaded.model)
    loaded.model.eval()
    return loaded.model, loaded.tokenizer, loaded.kind


def _data_root(data_dir: str | None, local: list[str]) -> Path:
    root = data_dir or os.environ.get(DATA_ENV)
    if not root:
        raise HarnessError(f"{', '.join(local)} read(s) <data>/mmlu/{{test,dev}}/<subject>_<split>.csv: give "
                           f"--data-dir or set ${DATA_ENV}")
    return Path(root)


def _unreachable(names: tuple[str, ...], error: BaseException) -> str:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    outside = [name for name in names if name not in LOCAL_TASKS]
    return (f"lm-eval task(s) {', '.join(outside)}: the data cannot be read ({reason}); without network access "
            f"use {' or '.join(LOCAL_TASKS)} (MMLU from $PEFTLAB_DATA/mmlu), or download the task's dataset into "
            f"the HF datasets cache once while online (then HF_DATASETS_OFFLINE=1 reads it from there)")


def _plain(value: Any) -> Any:
    """JSON for what lm-eval's results hold besides plain values (numpy numbers, callables in task configs)."""
    return value.item() if hasattr(value, "item") else str(value)

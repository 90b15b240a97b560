"""One run of a sweep, in its own process: ``python -m peftlab.bench.worker SPEC.json --record RECORD.json``.

Trains and scores the run through the training entry point, measures its memory (peak for the whole
process, and the split by component on one step of the run's model before it trains, undone after), and
writes the run record atomically: ``ok`` with everything, or ``failed`` with the error. Exit status 0 only for ``ok``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from peftlab.bench import memory
from peftlab.bench.models import model_for_run
from peftlab.bench.records import TRACKERS_FOLDER, checkpoints_path, provenance, write_record
from peftlab.bench.suite import UNTUNED, RunSpec
from peftlab.core.atomic import write_text_atomic
from peftlab.core.errors import Interrupted

if TYPE_CHECKING:
    from peftlab.tasks import Task


def device_name() -> str:
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {torch.get_num_threads()} threads"


def execute(spec: RunSpec, output: Path, breakdown: bool = True) -> dict[str, Any]:
    """Train and score ``spec``; returns the record's measured fields (``breakdown``: also the memory split,
    measured on one step of the run's model before it trains; the data and model are loaded once)."""
    from peftlab.train import TrainArgs, run_training

    model_name, note = model_for_run(spec, output)
    checkpoints = checkpoints_path(output, spec)
    resume = continues(checkpoints, spec)
    tracking = tracker_settings(spec, output) if spec.training.get("report_to") else {}
    args = TrainArgs(model=model_name, task=spec.task_name, method=spec.method, options=dict(spec.options),
                     seed=spec.seed, output_dir=str(checkpoints), resume=resume, overwrite=not resume,
                     **tracking, **spec.training)
    baseline_rss = memory.current_rss_bytes()
    measured_memory: dict[str, Any] = {}
    measure = breakdown and spec.method != UNTUNED
    metrics = run_training(args, on_plan=(lambda plan: measured_memory.update(memory_breakdown(plan, args)))
                           if measure else None)
    if not is_main_process():
        return {}
    args = dataclasses.replace(args, output_dir=None, resume=False, overwrite=False,  # as a user reruns it alone,
                               report_to=(), tracker_dir=None, run_name=None)  # and off the sweep's trackers
    return {**run_fields(args, spec, metrics),
            "memory": {"peak_bytes": metrics["peak_memory_bytes"], "peak_source": metrics["peak_memory_kind"],
                       "baseline_rss_bytes": baseline_rss, "breakdown": measured_memory or None},
            "continued_from_checkpoint": resume,  # then wall and train seconds count the last attempt only
            "model_note": note, "model_used": model_name, "reproduce": reproduce_command(args, spec)}


def run_fields(args: Any, spec: RunSpec, metrics: dict[str, Any]) -> dict[str, Any]:
    """The record's fields read from the run's metrics: scores, parameters, speed, steps."""
    from peftlab.tasks import get_task
    from peftlab.tasks.files import task_for

    scored = get_task(args.eval_tasks[-1]) if args.eval_tasks else task_for(spec.task_name, spec.training)
    primary = f"{scored.name}/{scored.main_metric}" if args.eval_tasks else scored.main_metric
    score = metrics["scores"].get(primary)
    return {
        "scores": metrics["scores"],
        "scores_before_training": metrics.get("scores_before_training", {}),
        "task_scores": task_scores(args, spec, metrics["scores"]),
        "eval_history": metrics["eval_history"],
        "primary_metric": primary,
        "greater_is_better": scored.greater_is_better,
        "score": None if score is None else display_score(scored, primary, float(score)),
        "parameters": metrics["parameters"],
        "train_tokens_per_second": metrics["train_tokens_per_s"],
        "train_seconds": metrics["train_time_s"],
        "adapter_bytes": metrics.get("adapter_bytes"),  # the saved adapter's files (weights + config) on disk
        "train_examples": metrics["train_examples"],
        "steps": metrics["steps"],
    }


def tracker_settings(spec: RunSpec, output: Path) -> dict[str, str]:
    """A suite's ``report_to``: every run of the sweep in one project named after the suite, in the sweep's
    ``trackers/`` folder, as a run named by its id (model, task, method label, seed)."""
    return {"tracker_dir": str(output / TRACKERS_FOLDER), "run_name": spec.run_id, "tracker_project": spec.suite}


def continues(checkpoints: Path, spec: RunSpec) -> bool:
    """Whether the run continues from a checkpoint that an interrupted attempt saved in ``checkpoints``; a
    folder left by an attempt at another spec (the suite changed) is removed and the run starts over."""
    spec_file = _spec_file(checkpoints)
    wanted = json.dumps(spec.to_dict(), indent=2, sort_keys=True)
    same = spec_file.is_file() and spec_file.read_text(encoding="utf-8") == wanted
    if same and any(checkpoints.glob("checkpoint-*")):
        return True
    if is_main_process():
        shutil.rmtree(checkpoints, ignore_errors=True)
        write_text_atomic(spec_file, wanted)
    return False


def remove_checkpoints(checkpoints: Path) -> None:
    shutil.rmtree(checkpoints, ignore_errors=True)
    _spec_file(checkpoints).unlink(missing_ok=True)


def _spec_file(checkpoints: Path) -> Path:
    """Beside a run's checkpoints: the spec they were trained for (a changed suite starts the run over)."""
    return checkpoints.with_name(checkpoints.name + ".spec.json")


def task_scores(args: Any, spec: RunSpec, scores: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per scored task (the extra eval tasks, else the trained one): its main metric, display score and
    direction; the report gives each its own column when a run scores several."""
    from peftlab.tasks import get_task
    from peftlab.tasks.files import task_for

    found = {}
    for name in args.eval_tasks or (spec.task_name,):
        task = get_task(name) if args.eval_tasks else task_for(name, spec.training)
        metric = f"{task.name}/{task.main_metric}" if args.eval_tasks else task.main_metric
        value = scores.get(metric)
        found[task.name] = {"metric": metric, "score": None if value is None else display_score(task, metric, float(value)),
                            "greater_is_better": task.greater_is_better}
    return found


def reproduce_command(args: Any, spec: RunSpec) -> str:
    """The one command that reruns this run alone (with ``PEFTLAB_DATA`` set as for the sweep) and writes
    its scores to ``metrics.json``; on the same kind of machine it gives the same score."""
    words = [*args.command_line(), "--no-progress" if args.progress else "", "--output", f"reproduce/{spec.run_id}"]
    return " ".join(shlex.quote(word) for word in words if word)


def is_main_process() -> bool:
    """Under ``torchrun`` / ``accelerate launch`` only rank 0 measures and writes the record."""
    return os.environ.get("RANK", "0") == "0"


def display_score(task: Task, metric: str, value: float) -> float:
    """The score as the survey's tables show it: the task's fractions (accuracy, F1, correlations) x100;
    anything else (BLEU, already x100; losses; perplexity) as it is."""
    name = metric.removeprefix(f"{task.name}/")  # "mmlu/accuracy" -> "accuracy"
    return value * 100.0 if task.is_fraction(name) else value


def memory_breakdown(plan: Any, args: Any) -> dict[str, dict[str, int | None]]:
    """Weights, gradients, optimizer state and activations on one step of the run's own adapted model, before
    it trains (``train.plan.Plan``). The step's updates and random draws are undone afterwards, so the run then
    trains exactly as it would without this measurement."""
    import peftlab
    from peftlab.train.encoding import collate, encode

    model, tokenizer = plan.loaded.model, plan.loaded.tokenizer
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained = {name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad}
    random_state = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    try:
        model.to(device)
        features = encode(plan.task, plan.train_examples[: args.batch_size], tokenizer, plan.loaded.kind,
                          plan.loaded.max_length(args.max_length))
        batch = {key: value.to(device) for key, value in collate(features, tokenizer.pad_token_id).items()}
        prediction = memory.predicted(model)
        measured = memory.measure_step(model, batch, lambda m: peftlab.make_optimizer(
            m, args.learning_rate, args.weight_decay))
    finally:
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in trained:
                    parameter.copy_(trained[name])
                parameter.grad = None
        torch.set_rng_state(random_state[0])
        if random_state[1] is not None:
            torch.cuda.set_rng_state_all(random_state[1])
        model.train(was_training)
    return memory.breakdown(measured, prediction)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftlab.bench.worker", description=__doc__)
    parser.add_argument("spec", type=Path, help="the run's spec (JSON, written by the sweep)")
    parser.add_argument("--record", type=Path, required=True, help="where to write the run record")
    parser.add_argument("--no-memory-breakdown", action="store_true", help="skip the memory split's extra step")
    arguments = parser.parse_args(argv)
    spec = RunSpec.from_dict(json.loads(arguments.spec.read_text(encoding="utf-8")))
    output = arguments.record.resolve().parent.parent
    base = {"run_id": spec.run_id, "spec": spec.to_dict(), "seed": spec.seed,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    started = time.perf_counter()
    try:
        measured = execute(spec, output, breakdown=not arguments.no_memory_breakdown)
    except Interrupted as stop:  # its checkpoint is saved: no record, so the sweep's rerun continues the run
        print(f"peftlab bench worker: {stop}", file=sys.stderr)
        return stop.exit_code
    except Exception as error:  # noqa: BLE001  (any failure becomes this run's failed record)
        traceback.print_exc()
        remove_checkpoints(checkpoints_path(output, spec))  # a rerun starts over rather than meet the error again
        if not is_main_process():
            return 1
        write_record(arguments.record, {**base, "status": "failed", "error": f"{type(error).__name__}: {error}",
                                        "wall_seconds": time.perf_counter() - started,
                                        "provenance": provenance(device_name())})
        return 1
    if not is_main_process():
        return 0
    write_record(arguments.record, {**base, "status": "ok", **measured, "error": None,
                                    "wall_seconds": time.perf_counter() - started,
                                    "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                                    "provenance": provenance(device_name())})
    remove_checkpoints(checkpoints_path(output, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``peftlab select`` from start to end: check everything, then search, then the finals, then the report.

Every bad input fails before a trial trains: the budgets are parsed, the output folder claimed, the model
loaded and each method's smallest configuration counted; a budget no method can meet is refused there.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.core.outputs import OutputKind, claim_output, remove_owned
from peftlab.search.budgets import BudgetError, Budgets
from peftlab.search.counting import Footprints
from peftlab.search.space import SPACES, smallest
from peftlab.train.args import TrainArgs

SELECT_OUTPUT = OutputKind(command="peftlab select", flag="--output", owns=(  # rerunning continues: no --resume
    "study.db", "study.db-*", "pareto.json", "pareto.png", "history.png", "report.md", "recommended.yaml",
    "finals"))
STAGES = ("all", "search", "finals")


@dataclass(frozen=True, kw_only=True)
class SelectArgs:
    """One ``peftlab select`` process (one worker of a search that others may share)."""

    training: TrainArgs  # the settings every trial and final shares; method and options are the search's
    budgets: Budgets
    output: str
    storage: str | None = None
    study_name: str = "select"
    trials: int = 40
    sampler: str = "tpe"
    methods: tuple[str, ...] = tuple(SPACES)
    patience: int = 3
    finalists: int = 3
    seeds: tuple[int, ...] = (0, 1, 2)
    stage: str = "all"
    heartbeat: int = 60
    overwrite: bool = False

    def settings(self) -> dict[str, Any]:
        """What the study records: another worker or a resume must ask for the same search."""
        keep = ("model", "task", "epochs", "max_steps", "batch_size", "max_length", "max_train_samples", "holdout",
                "eval_steps", "seed")
        return {**{name: getattr(self.training, name) for name in keep}, "budgets": self.budgets.as_text(),
                "methods": list(self.methods), "sampler": self.sampler, "patience": self.patience}


def run_select(args: SelectArgs) -> dict[str, Any] | None:
    """Search (unless ``stage`` is finals), then the finals (unless it is search); returns the recommended
    config written to ``OUTPUT/recommended.yaml`` (None when no trial has completed yet)."""
    from peftlab.search.finals import run_finals
    from peftlab.search.report import completed_rows, fronts, write_outputs
    from peftlab.search.study import claim_settings, open_study, run_worker, storage_url
    from peftlab.search.trials import Objective

    unknown = sorted(set(args.methods) - set(SPACES))
    if unknown:
        raise BudgetError(f"--methods {', '.join(unknown)}: not in the search space; choose from {', '.join(SPACES)}")
    folder = claim_output(args.output, SELECT_OUTPUT, overwrite=args.overwrite, resume=continues(args),
                          inputs={"--model": args.training.model if Path(args.training.model).exists() else None})
    footprints = Footprints(args.training)
    methods = feasible_methods(footprints, args.budgets, args.methods)
    if args.overwrite and folder.exists():
        remove_owned(folder, SELECT_OUTPUT)
    folder.mkdir(parents=True, exist_ok=True)
    task = footprints.task
    study = open_study(storage_url(args.storage, str(folder)), args.study_name, task.greater_is_better, args.sampler,
                       args.heartbeat, args.training.eval_steps or 1)
    claim_settings(study, args.settings(), f"study {args.study_name!r} in {storage_url(args.storage, str(folder))}")
    if args.stage != "finals":
        run_worker(study, Objective(args.training, footprints, args.budgets, methods, args.patience), args.trials,
                   args.budgets.hours)
    trials = study.get_trials(deepcopy=False)
    finals: list[dict[str, Any]] = []
    if args.stage != "search":
        rows = {row["trial"]: row for cost in fronts(completed_rows(trials), task.greater_is_better).values()
                for row in cost}
        ranked = sorted(rows.values(), key=lambda row: row["held_out"], reverse=task.greater_is_better)
        numbered = {trial.number: trial for trial in trials}
        chosen = [numbered[row["trial"]] for row in ranked[:args.finalists]]
        finals = run_finals(chosen, args.training, folder / "finals", args.seeds, task.main_metric)
        finals.sort(key=lambda final: final["dev_mean"], reverse=task.greater_is_better)
    recommended = write_outputs(folder, args.settings(), args.training, trials, task.greater_is_better, finals)
    print(f"peftlab select: {len(trials)} trials in the study; report in {folder / 'report.md'}"
          + ("" if recommended is None else f"; train the recommendation with `peftlab train --config "
                                            f"{folder / 'recommended.yaml'} --output DIR`"), file=sys.stderr)
    return recommended


def continues(args: SelectArgs) -> bool:
    """An output folder that holds only what ``peftlab select`` writes is continued (the study in it is the
    search's state); one that holds anything else is refused by the output policy unless emptied of it."""
    folder = Path(args.output)
    return (not args.overwrite and folder.is_dir()
            and all(SELECT_OUTPUT.owned(entry.name) for entry in folder.iterdir()))


def feasible_methods(footprints: Footprints, budgets: Budgets, methods: tuple[str, ...]) -> tuple[str, ...]:
    """The methods whose smallest configuration meets the budgets; refused when there is none."""
    reasons = {}
    for method in methods:
        counted = footprints.measure(smallest(method, footprints.upper_layers))
        reasons[method] = budgets.over(counted.trainable, counted.base, counted.memory_bytes)
    fitting = tuple(method for method in methods if reasons[method] is None)
    if not fitting:
        listed = "; ".join(f"{method}: {reason}" for method, reason in reasons.items())
        raise BudgetError(f"no method in the search space meets the budgets {' '.join(budgets.as_text())} even at "
                          f"its smallest ({listed}); raise a budget")
    return fitting


def training_settings(**values: Any) -> TrainArgs:
    """The trials' shared run settings: quiet, nothing written, scored on a held-out part of training."""
    return TrainArgs(**{"progress": False, **values})


"""The finals: the search's best candidates on its Pareto fronts, each retrained at the full budget on the
whole training split (nothing held out) over three seeds and scored on the dev set.

Each final is a ``peftlab train`` run folder, ``OUTPUT/finals/trial-<n>-seed<s>/``, trained with ``--resume``:
a killed final continues from its last checkpoint, and a finished one (its ``metrics.json``) is read, not
trained again.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from peftlab.search.space import Candidate
from peftlab.search.trials import trial_args
from peftlab.train.args import TrainArgs


def candidate_of(trial: FrozenTrial) -> Candidate:
    return Candidate(**trial.user_attrs["candidate"])


def run_finals(finalists: list[FrozenTrial], training: TrainArgs, folder: Path, seeds: tuple[int, ...],
               metric: str) -> list[dict[str, Any]]:
    """One result per finalist: its candidate, dev scores per seed and their mean, and the optimizer steps and
    seconds (load, training, evaluations) its runs took."""
    from peftlab.train import run_training

    results = []
    for trial in finalists:
        scores, steps, seconds = [], 0, 0.0
        for seed in seeds:
            output = folder / f"trial-{trial.number}-seed{seed}"
            record = output / "metrics.json"
            if record.is_file():
                metrics = json.loads(record.read_text())
            else:
                metrics = run_training(trial_args(training, candidate_of(trial), seed=seed, holdout=None,
                                                  output_dir=str(output), resume=True))
            scores.append(metrics["scores"][metric])
            steps += metrics["steps"]
            seconds += metrics["load_time_s"] + metrics["train_time_s"] + metrics["eval_time_s"]
        results.append({"trial": trial.number, "candidate": dataclasses.asdict(candidate_of(trial)),
                        "trainable": trial.user_attrs["trainable"], "held_out": trial.value,
                        "dev_scores": dict(zip(map(str, seeds), scores)), "dev_mean": statistics.fmean(scores),
                        "dev_stdev": statistics.stdev(scores) if len(scores) > 1 else None,  # one seed: no spread
                        "steps": steps, "seconds": seconds})
    return results

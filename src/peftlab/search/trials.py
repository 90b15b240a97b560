"""One trial: check the candidate against the budgets, then train it on the training split less a held-out
part, reporting the held-out score at each evaluation so the study's pruner can stop it (successive halving:
few steps for every trial, more for those that keep up) and stopping it early when it stops improving."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
from typing import Any

import optuna

from peftlab.core.errors import Interrupted
from peftlab.search.budgets import Budgets
from peftlab.search.counting import Footprints
from peftlab.search.space import Candidate, suggest
from peftlab.search.study import ERROR
from peftlab.train.args import TrainArgs
from peftlab.train.faults import NonFiniteLossError, OutOfMemoryError

REJECTED = "rejected"  # a user attr: why the trial's configuration broke a budget, before it trained


class EarlyStop(Exception):
    """The held-out score has not improved for ``patience`` evaluations."""


@dataclasses.dataclass
class Objective:
    """The study's objective: the best held-out score of one candidate (higher or lower is better as the
    task's metric says). ``training`` holds the run settings every trial shares (holdout, steps, ...)."""

    training: TrainArgs
    footprints: Footprints
    budgets: Budgets
    methods: tuple[str, ...]
    patience: int

    def __call__(self, trial: optuna.Trial) -> float:
        candidate = suggest(trial, self.methods, self.footprints.upper_layers)
        footprint = self.footprints.measure(candidate)
        trial.set_user_attr("candidate", dataclasses.asdict(candidate))
        trial.set_user_attr("trainable", footprint.trainable)
        trial.set_user_attr("trainable_percent", footprint.trainable_percent)
        trial.set_user_attr("predicted_memory_bytes", footprint.memory_bytes)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        reason = self.budgets.over(footprint.trainable, footprint.base, footprint.memory_bytes)
        if reason is not None:
            trial.set_user_attr(REJECTED, reason)
            raise optuna.TrialPruned(f"over budget, not trained: {reason}")
        try:
            return self.train(trial, candidate)
        except (Interrupted, KeyboardInterrupt):  # stopped by a signal: queued again, the next worker runs it
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except (NonFiniteLossError, OutOfMemoryError) as error:
            # this configuration's own failure (a rate too high, a size too large): recorded; the search goes on
            trial.set_user_attr(ERROR, f"{type(error).__name__}: {error}")
            return math.nan  # Optuna records a NaN objective as a failed trial

    def train(self, trial: optuna.Trial, candidate: Candidate) -> float:
        from peftlab.train import run_training

        args = trial_args(self.training, candidate)
        metric, greater = self.footprints.task.main_metric, self.footprints.task.greater_is_better
        best: dict[str, Any] = {"score": None, "since": 0}
        trained = {"steps": 0}  # the compute the trial spent, pruned or stopped early too (report.compute_spent)

        def on_eval(step: int, scores: dict[str, float]) -> None:
            trained["steps"] = step
            score = scores[metric]
            if math.isnan(score):
                raise optuna.TrialPruned(f"held-out {metric} is NaN at step {step}")
            trial.report(score, step)
            improved = best["score"] is None or (score > best["score"] if greater else score < best["score"])
            if improved:
                best.update(score=score, since=0)
            else:
                best["since"] += 1
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}: held-out {metric} {score:.4f}")
            if best["since"] >= self.patience:
                raise EarlyStop

        started = time.perf_counter()
        try:
            metrics = run_training(args, on_eval=on_eval)
        except EarlyStop:
            trial.set_user_attr("stopped_early", True)
        else:
            trained["steps"] = metrics["steps"]
            trial.set_user_attr("peak_memory_bytes", metrics.get("peak_memory_bytes"))
            trial.set_user_attr("steps", metrics["steps"])
        finally:
            trial.set_user_attr("steps_trained", trained["steps"])
            trial.set_user_attr("seconds", time.perf_counter() - started)  # load, training and evaluations
        return float(best["score"])


def trial_args(training: TrainArgs, candidate: Candidate, **changes: Any) -> TrainArgs:
    """The run that trains ``candidate`` with the search's shared settings."""
    return dataclasses.replace(training, method=candidate.method, options=candidate.options,
                               learning_rate=candidate.learning_rate, **changes)

"""A trial reports its held-out score at each evaluation: the pruner stops a bad one there, and a trial
that stops improving stops early; either way it trains no further."""

from __future__ import annotations

import optuna
import pytest

from peftlab.search.budgets import Budgets
from peftlab.search.command import training_settings
from peftlab.search.counting import Footprints
from peftlab.search.trials import Objective

STEPS = 4


@pytest.fixture
def objective(tiny_workspace, monkeypatch):
    monkeypatch.setenv("PEFTLAB_DATA", str(tiny_workspace["data"]))
    training = training_settings(model=str(tiny_workspace["model"]), task="sst2", holdout=12, batch_size=8,
                                 max_length=16, max_steps=STEPS, eval_steps=1, seed=0)

    def make(patience: int = STEPS) -> Objective:
        return Objective(training, Footprints(training), Budgets(), ("bitfit",), patience)

    return make


def test_the_pruner_stops_a_bad_trial_at_its_first_report(objective):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    study.optimize(objective(), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # stopped after the first of STEPS evaluations


def test_a_trial_that_stops_improving_stops_early_with_its_best_score(objective):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.enqueue_trial({"method": "bitfit", "bitfit.lr": 1e-3})  # too small a rate to move the tiny model's score
    study.optimize(objective(patience=1), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.user_attrs["stopped_early"]
    assert list(trial.intermediate_values) == [1, 2]  # step 2 did not improve on step 1
    assert trial.value == trial.intermediate_values[1]


def test_a_trial_whose_loss_diverges_fails_on_record_and_the_search_goes_on(objective):
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"method": "bitfit", "bitfit.lr": 1e30}, skip_if_exists=False)  # outside the prior: diverges
    study.optimize(objective(), n_trials=2)
    failed, next_one = study.trials
    assert failed.state == optuna.trial.TrialState.FAIL
    assert failed.user_attrs["error"].startswith("NonFiniteLossError")
    assert next_one.state == optuna.trial.TrialState.COMPLETE

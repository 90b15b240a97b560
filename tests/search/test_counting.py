"""A candidate's footprint is counted before it trains by the rule run records use, so the budgets hold
for what ``peftlab train`` then reports; a memory budget rejects as the trainable one does."""

from __future__ import annotations

import optuna
import pytest

from peftlab.search.budgets import Budgets
from peftlab.search.command import training_settings
from peftlab.search.counting import Footprints
from peftlab.search.space import Candidate, smallest
from peftlab.search.trials import REJECTED, Objective, trial_args


@pytest.fixture
def footprints(tiny_workspace, monkeypatch):
    monkeypatch.setenv("PEFTLAB_DATA", str(tiny_workspace["data"]))
    training = training_settings(model=str(tiny_workspace["model"]), task="sst2", holdout=12, batch_size=8,
                                 max_length=16, max_steps=1, seed=0)
    return Footprints(training)


@pytest.mark.parametrize("method", ["lora", "unipelt", "prefix_tuning"])
def test_the_counted_trainable_parameters_are_the_run_records(footprints, method):
    from peftlab.train import run_training

    candidate = smallest(method, footprints.upper_layers)
    record = run_training(trial_args(footprints.args, candidate))
    assert footprints.measure(candidate).trainable == record["parameters"]["trainable"]


def test_upper_layers_narrows_targets_to_the_upper_half(footprints):
    patterns = footprints.upper_layers(["attention_qv"])  # the tiny BERT has layers 0 and 1
    assert patterns == [r"bert\.encoder\.layer\.(?:1)\.attention\.self\.query",
                        r"bert\.encoder\.layer\.(?:1)\.attention\.self\.value"]
    everywhere = footprints.measure(Candidate("lora", {"rank": 2, "target_modules": ["attention_qv"]}))
    upper = footprints.measure(Candidate("lora", {"rank": 2, "target_modules": patterns}))
    assert everywhere.trainable - upper.trainable == 2 * 2 * (32 + 32)  # layer 0's two rank-2 updates of 32 x 32


def test_a_candidate_over_the_memory_budget_is_rejected_before_it_trains(footprints):
    bitfit = footprints.measure(smallest("bitfit", footprints.upper_layers))
    budgets = Budgets(memory_bytes=bitfit.memory_bytes - 1)
    study = optuna.create_study(direction="maximize")
    study.optimize(Objective(footprints.args, footprints, budgets, ("bitfit",), patience=3), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and not trial.intermediate_values
    assert trial.user_attrs[REJECTED].startswith("predicted memory")

"""The study is the search's state: two workers share one SQLite study without losing or repeating a trial,
and a worker killed mid-trial leaves that trial to be run again by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from peftlab.cli import main
from peftlab.search.study import open_study

SOURCE = str(Path(__file__).resolve().parents[2] / "src")
QUEUED = [
    {"method": "bitfit", "bitfit.lr": 3e-3},
    {"method": "ia3", "ia3.lr": 1e-2},
    {"method": "lora", "lora.lr": 3e-3, "lora.rank": 1, "lora.target_modules": "attention_qv", "lora.layers": "upper"},
    {"method": "adapter", "adapter.lr": 3e-3, "adapter.bottleneck_size": 4, "adapter.placement": "pfeiffer",
     "adapter.layers": "upper"},
]


def worker(arguments: list[str]) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "peftlab.cli", *arguments], env=environment,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def study_in(folder: Path) -> optuna.Study:
    """The study the workers made (the test makes no tables: it would race the workers to it)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder}/study.db", skip_table_creation=True)
    return optuna.load_study(study_name="select", storage=storage)


def test_two_workers_started_together_on_a_new_folder_make_one_study(select_command, tmp_path):
    arguments = select_command("--budget", "trainable=10%", "--trials", "4", "--methods", "bitfit", "ia3",
                               "--stage", "search")
    workers = [worker(arguments) for _ in range(2)]
    for process in workers:
        assert process.wait(timeout=600) == 0, process.stderr.read()
    trials = study_in(tmp_path / "select").trials
    assert len(trials) >= 4 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}


def running_trials(folder: Path) -> list[optuna.trial.FrozenTrial]:
    """Trials that have reported an evaluation and are still running (none while the study is being made)."""
    try:
        trials = study_in(folder).trials
    except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # the file exists, the tables or the study not yet
        return []
    return [t for t in trials if t.state == TrialState.RUNNING and t.intermediate_values]


def test_two_workers_share_one_study_and_run_each_trial_once(select_command, tmp_path):
    output = tmp_path / "select"
    output.mkdir()
    queued = open_study(f"sqlite:///{output}/study.db", "select", True, "tpe", 1)
    for params in QUEUED:
        queued.enqueue_trial(params)
    arguments = select_command("--budget", "trainable=10%", "--trials", "8", "--stage", "search")
    workers = [worker(arguments) for _ in range(2)]
    for process in workers:
        assert process.wait(timeout=600) == 0, process.stderr.read()
    trials = study_in(output).trials
    assert [t.number for t in trials] == list(range(len(trials)))
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}  # none lost, none left running
    assert len(trials) >= 8
    for params in QUEUED:  # each queued trial was taken by exactly one worker
        assert sum(t.system_attrs.get("fixed_params") == params for t in trials) == 1
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def a_running_trial(process: subprocess.Popen, output: Path) -> optuna.trial.FrozenTrial:
    """Wait for the worker to be inside a trial that has reported an evaluation."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.2)
        assert process.poll() is None, f"the worker ended before it could be stopped: {process.stderr.read()}"
        running = running_trials(output) if (output / "study.db").exists() else []
        if running:
            return running[0]
    process.kill()
    states = [(t.number, t.state.name, len(t.intermediate_values)) for t in study_in(output).trials]
    raise AssertionError(f"the worker never reached a running trial; the study: {states}; the worker said: "
                         f"{process.stderr.read()[-3000:]}")


def long_trials(select_command) -> list[str]:
    return select_command("--budget", "trainable=10%", "--trials", "2", "--methods", "bitfit", "--stage", "search",
                          "--max-steps", "120", "--patience", "1000")


def test_a_search_killed_mid_trial_reruns_that_trial_when_continued(select_command, tmp_path):
    output, arguments = tmp_path / "select", long_trials(select_command)
    process = worker(arguments)
    killed = a_running_trial(process, output)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    time.sleep(3.5)  # past the heartbeat's grace period (3 x 1 s)
    assert main(arguments) == 0
    trials = study_in(output).trials
    assert trials[killed.number].state == TrialState.FAIL
    reruns = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(reruns) == 1 and reruns[0].params == killed.params and reruns[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_a_search_stopped_by_sigterm_queues_its_trial_again(select_command, tmp_path):
    output = tmp_path / "select"
    process = worker(long_trials(select_command))
    stopped = a_running_trial(process, output)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 128 + signal.SIGTERM
    trials = study_in(output).trials
    assert trials[stopped.number].state == TrialState.FAIL
    queued = [t for t in trials if t.state == TrialState.WAITING]
    assert len(queued) == 1 and queued[0].user_attrs["retry_of"] == stopped.number
    assert queued[0].system_attrs["fixed_params"] == stopped.params

"""The search's state: one Optuna study in a database that any number of ``peftlab select`` processes share.

Each worker runs trials until the study holds ``trials`` finished ones (completed, pruned, rejected by a
budget, or failed with an error) or the ``hours`` budget, counted from the study's first start, runs out.
A worker killed outright stops beating its heartbeat: after ``3 x heartbeat`` seconds another worker (or the
next run) marks its trial failed and runs it again with the same parameters. A worker stopped by a signal
queues its trial again itself on the way out.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from peftlab.search.counting import SearchError

SAMPLERS = ("tpe", "random")
ERROR = "error"  # a user attr: why a trial failed (a trial killed mid-run has none and is run again)
STALE_RETRIES = 3
SCHEMA_ATTEMPTS = 5


def storage_url(storage: str | None, output: str) -> str:
    return storage or f"sqlite:///{output}/study.db"


def open_study(url: str, name: str, greater_is_better: bool, sampler: str, heartbeat: int,
               eval_steps: int = 1) -> optuna.Study:
    """The study at ``url`` (made on first use). Its Hyperband pruner's smallest rung is one evaluation
    (``eval_steps`` optimizer steps), its largest the full run, learnt from the first trial to finish."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else {}
    storage = _storage(url, engine, heartbeat)
    chosen = (optuna.samplers.RandomSampler() if sampler == "random"
              else optuna.samplers.TPESampler(constant_liar=True))  # workers in parallel avoid each other's trials
    pruner = optuna.pruners.HyperbandPruner(min_resource=eval_steps, max_resource="auto", reduction_factor=3)
    return optuna.create_study(storage=storage, study_name=name, load_if_exists=True, sampler=chosen, pruner=pruner,
                               direction="maximize" if greater_is_better else "minimize")


def _storage(url: str, engine: dict[str, Any], heartbeat: int) -> optuna.storages.RDBStorage:
    """The database, its tables made on first use. Workers that start together on a new database race to make
    them (a table or the schema's version row already exists): the losers connect again, to what the winner made."""
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental since Optuna 2.8
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                                  grace_period=3 * heartbeat, **_stale_retry())
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            if attempt == SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def _stale_retry() -> dict[str, Any]:
    """Run a killed worker's trial again (the callback's name changed in Optuna 4.9)."""
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        return {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(STALE_RETRIES)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(STALE_RETRIES)}


def claim_settings(study: optuna.Study, settings: dict[str, Any], where: str) -> None:
    """Record what this study searches; a study that searches something else is refused, not mixed."""
    recorded = study.user_attrs.get("settings")
    if recorded is None:
        study.set_user_attr("settings", settings)
        study.set_user_attr("started_at", time.time())
        return
    differ = sorted(key for key in {*recorded, *settings} if recorded.get(key) != settings.get(key))
    if differ:
        shown = "; ".join(f"{key}: study has {recorded.get(key)!r}, asked {settings.get(key)!r}" for key in differ)
        raise SearchError(f"{where} holds a search with other settings ({shown}); repeat its settings to continue "
                          f"it, or give another --output / --study-name (--overwrite starts it afresh)")


def finished(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that count towards ``--trials``: completed, pruned (or rejected), or failed with an error."""
    return [trial for trial in study.get_trials(deepcopy=False)
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (trial.state == TrialState.FAIL and ERROR in trial.user_attrs)]


def seconds_left(study: optuna.Study, hours: float | None) -> float | None:
    if hours is None:
        return None
    return hours * 3600 - (time.time() - study.user_attrs.get("started_at", time.time()))


def run_worker(study: optuna.Study, objective: Any, trials: int, hours: float | None) -> None:
    """Run trials until the study has ``trials`` finished ones or the time budget is spent."""

    def done() -> bool:
        left = seconds_left(study, hours)
        return len(finished(study)) >= trials or (left is not None and left <= 0)

    def stop_when_done(study: optuna.Study, trial: FrozenTrial) -> None:
        if done():
            study.stop()

    if done():
        return
    study.optimize(objective, timeout=seconds_left(study, hours), callbacks=[stop_when_done], gc_after_trial=True)

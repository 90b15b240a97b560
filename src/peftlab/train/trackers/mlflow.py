"""``--report-to mlflow``: one MLflow run through ``mlflow.tracking.MlflowClient``.

The store is ``$MLFLOW_TRACKING_URI`` when set, else a local file store in ``--output/mlruns`` (or
``--tracker-dir``/mlruns); MLflow 3 keeps its file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``,
which peftlab sets for the store it picks itself. The experiment is ``--tracker-project``; the run is named
``--run-name`` and tagged with the method, task, model and seed. Parameters: the run's config; ``--resume``
continues the run id kept in ``trackers.json`` (parameters are logged once, at the first start).
"""

from __future__ import annotations

import os
import time
from typing import Any

from peftlab.train.trackers.base import FOLDERS, TrackerMissing, TrackerRun

STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
BATCH = 100  # MLflow's limit on parameters per log_batch call
VALUE_LENGTH = 6000  # and on a parameter value's length


class MlflowTracker:
    def __init__(self, run: TrackerRun) -> None:
        try:
            from mlflow.entities import Metric, Param
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise TrackerMissing("mlflow", error) from None
        self.metric, self.param, self.not_found = Metric, Param, MlflowException
        self.make_client, self.run, self.step = MlflowClient, run, 0

    def start(self, config: dict[str, Any], step: int) -> None:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (self.run.root / FOLDERS["mlflow"]).resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client, self.step = self.make_client(tracking_uri=uri), step
        stored = self.run.stored.get("mlflow", {}).get("run_id") if self.run.continues else None
        if stored is not None and self._exists(stored):
            self.run_id = stored
            self.client.update_run(stored, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(self.run.project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(self.run.project)
        self.run_id = self.client.create_run(experiment_id, run_name=self.run.name, tags=self.run.tags).info.run_id
        params = [self.param(key, str(value)[:VALUE_LENGTH]) for key, value in config.items()]
        for first in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[first:first + BATCH])

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except self.not_found:
            return False
        return True

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.metric(key, value, now, step) for key, value in metrics.items()])
        self.step = step

    def finish(self, summary: dict[str, float], status: str) -> None:
        if summary:
            self.log(summary, self.step)
        self.client.set_terminated(self.run_id, STATUS[status])

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

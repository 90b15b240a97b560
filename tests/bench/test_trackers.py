"""A suite's ``report_to``: every run of the sweep logged into OUTPUT/trackers, one project named after the
suite, a run per suite run named by its id and tagged with its method, task, model and seed."""

from __future__ import annotations

import pytest
import yaml

from peftlab.bench import check_training, load_suite_checked
from peftlab.bench.runner import BENCH_OUTPUT
from peftlab.bench.suite import SuiteError
from train.tracker_readers import mlflow_runs, tensorboard_scalars


def test_a_sweep_is_one_project_with_a_run_per_suite_run(tiny_suite, tmp_path, monkeypatch):
    from peftlab.bench import worker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    path = tiny_suite(["lora", "ia3"])
    suite = yaml.safe_load(open(path))
    suite["training"]["report_to"] = ["tensorboard", "mlflow"]
    open(path, "w").write(yaml.safe_dump(suite))
    runs = load_suite_checked(path).runs()
    output = tmp_path / "out"
    records = [worker.execute(spec, output, breakdown=False) for spec in runs]

    for spec in runs:
        scalars = tensorboard_scalars(output / "trackers" / "tensorboard" / spec.run_id)
        assert scalars["train/loss"] and scalars["eval/accuracy"], spec.run_id
    found = {run.info.run_name: run for run in mlflow_runs(output / "trackers" / "mlruns", "tiny")}
    assert set(found) == {spec.run_id for spec in runs}
    for spec in runs:
        tags = found[spec.run_id].data.tags
        assert (tags["method"], tags["task"], tags["seed"], tags["model"]) == (spec.method, "sst2", "0", "tiny-bert")
        assert found[spec.run_id].info.status == "FINISHED"
    assert all("--report-to" not in record["reproduce"] and "--tracker-dir" not in record["reproduce"]
               for record in records)  # reproducing a score logs nowhere
    assert BENCH_OUTPUT.owned("trackers")


def test_a_suite_may_not_choose_where_the_trackers_write():
    check_training({"report_to": ["tensorboard"]}, "suite")
    for key in ("tracker_dir", "run_name", "tracker_project"):
        with pytest.raises(SuiteError, match=f"unknown training setting\\(s\\) {key}"):
            check_training({key: "x"}, "suite")
    with pytest.raises(SuiteError, match="not a tracker"):
        check_training({"report_to": "comet"}, "suite")

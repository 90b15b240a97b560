"""``peftlab train --report-to``: a tiny BERT trained four steps through the CLI, then read back with each
tracker's own local reader (W&B offline, never the network)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import peftlab
from peftlab.cli import build_parser, main
from peftlab.cli.train import train_args
from peftlab.core.errors import Interrupted
from peftlab.core.outputs import claim_output, remove_owned
from peftlab.train.args import ArgumentError, TrainArgs
from peftlab.train.plan import TRAIN_OUTPUT
from peftlab.train.trackers import TrackerMissing, Trackers, open_trackers
from train.tracker_readers import mlflow_history, mlflow_runs, tensorboard_scalars, trackio_run, wandb_offline_run

SMALL = ["--max-train-samples", "16", "--max-eval-samples", "8", "--batch-size", "4", "--no-progress", "--seed", "3",
         "--max-steps", "4", "--logging-steps", "2", "--eval-steps", "2", "--save-steps", "2", "--method", "lora",
         "--set", "rank=4"]
SRC = str(Path(peftlab.__file__).resolve().parent.parent)


@pytest.fixture(autouse=True)
def local_only(monkeypatch):
    """W&B offline, MLflow and trackio on their local stores, whatever the machine's environment says."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_API_KEY", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "TRACKIO_DIR", "TRACKIO_SPACE_ID",
                 "TRACKIO_SERVER_URL"):
        monkeypatch.delenv(name, raising=False)


def train(capsys, model, data_root, output, *extra) -> dict:
    code = main(["train", "--model", str(model), "--task", "sst2", "--output", str(output), "--data-dir",
                 str(data_root), *SMALL, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    json.loads(captured.out)  # standard output is still the run's summary alone
    return json.loads((output / "metrics.json").read_text())


def logged(output: Path, kind: str, key: str) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines()]
    return [(line["step"], line[key]) for line in lines if line["type"] == kind]


def test_tensorboard_mlflow_and_wandb_each_hold_the_run(tiny_models, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = train(capsys, tiny_models["bert"], data_root, out, "--report-to", "tensorboard", "--report-to", "mlflow",
                    "--report-to", "wandb")
    losses, accuracy = logged(out, "train", "loss"), logged(out, "eval", "accuracy")
    assert [step for step, _ in losses] == [2, 4] and [step for step, _ in accuracy] == [2, 4]
    trainable = metrics["parameters"]["trainable"]

    scalars = tensorboard_scalars(out / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [2, 4]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([v for _, v in losses], rel=1e-6)
    for key in ("train/lr", "train/grad_norm", "train/tokens_per_s", "train/peak_memory_bytes"):
        assert [step for step, _ in scalars[key]] == [2, 4], key
    assert all(value > 0 for _, value in scalars["train/grad_norm"] + scalars["train/tokens_per_s"])
    assert scalars["eval/accuracy"] == [(step, pytest.approx(v)) for step, v in accuracy]
    assert scalars["final/accuracy"] == [(4, pytest.approx(metrics["scores"]["accuracy"]))]

    [run] = mlflow_runs(out / "mlruns", "peftlab")
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert {k: run.data.tags[k] for k in ("method", "task", "seed", "model")} == {
        "method": "lora", "task": "sst2", "seed": "3", "model": "bert"}
    params = run.data.params
    assert params["method"] == "lora" and params["method.rank"] == "4" and params["learning_rate"] == "0.0005"
    assert params["method.alpha"]  # the method's whole config, defaults included
    assert params["parameters.trainable"] == str(trainable) and int(params["parameters.total"]) > trainable
    assert [step for step, _ in mlflow_history(out / "mlruns", run.info.run_id, "train/loss")] == [2, 4]
    assert mlflow_history(out / "mlruns", run.info.run_id, "eval/accuracy") == accuracy
    assert run.data.metrics["final/accuracy"] == pytest.approx(metrics["scores"]["accuracy"])

    wandb = wandb_offline_run(out)
    stored = json.loads((out / "trackers.json").read_text())
    assert wandb["ids"] == {stored["wandb"]["run_id"]} and stored["mlflow"]["run_id"] == run.info.run_id
    assert wandb["project"] == "peftlab" and wandb["name"] == "run"
    assert {"method:lora", "task:sst2", "seed:3", "model:bert"} <= set(wandb["tags"])
    assert wandb["config"]["method.rank"] == 4 and wandb["config"]["parameters.trainable"] == trainable
    assert [step for step, _ in wandb["history"]["train/loss"]] == [2, 4]
    assert wandb["history"]["eval/accuracy"] == accuracy
    assert wandb["summary"]["final/accuracy"] == pytest.approx(metrics["scores"]["accuracy"])


def test_resume_continues_the_same_tracker_runs(tiny_models, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    trackers = ["--report-to", "tensorboard", "--report-to", "mlflow", "--report-to", "wandb"]
    train(capsys, tiny_models["bert"], data_root, out, *trackers)
    first = json.loads((out / "trackers.json").read_text())
    for entry in out.glob("checkpoint-4"):  # as if killed after checkpoint-2: steps 3 and 4 run again
        import shutil

        shutil.rmtree(entry)
    (out / "metrics.json").unlink()
    train(capsys, tiny_models["bert"], data_root, out, *trackers, "--resume")
    assert json.loads((out / "trackers.json").read_text()) == first

    scalars = tensorboard_scalars(out / "tensorboard")  # the events after step 2 replaced, not repeated
    assert [step for step, _ in scalars["train/loss"]] == [2, 4]
    assert [step for step, _ in scalars["eval/accuracy"]] == [2, 4]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2

    [run] = mlflow_runs(out / "mlruns", "peftlab")  # the same run, continued
    assert run.info.run_id == first["mlflow"]["run_id"] and run.info.status == "FINISHED"
    assert {step for step, _ in mlflow_history(out / "mlruns", run.info.run_id, "train/loss")} == {2, 4}

    wandb = wandb_offline_run(out)
    assert wandb["files"] == 2 and wandb["ids"] == {first["wandb"]["run_id"]}


def test_trackio_writes_its_local_database(tiny_models, data_root, tmp_path):
    """In a process of its own: trackio reads its folder once, when first imported."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "peftlab.cli", "train", "--model", str(tiny_models["bert"]), "--task", "sst2",
               "--output", str(out), "--data-dir", str(data_root), *SMALL, "--report-to", "trackio",
               "--run-name", "tiny-lora", "--tracker-project", "trackers-test"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # trackio's own lines went to standard error
    run = trackio_run(out / "trackio" / "trackers-test.db", "tiny-lora")
    assert [step for step, _ in run["points"]["train/loss"]] == [2, 4]
    assert [step for step, _ in run["points"]["train/grad_norm"]] == [2, 4]
    assert run["points"]["eval/accuracy"] == logged(out, "eval", "accuracy")
    assert run["points"]["final/accuracy"] == [(4, pytest.approx(summary["scores"]["accuracy"]))]
    assert run["config"]["method.rank"] == 4 and run["config"]["tags.method"] == "lora"
    assert run["config"]["parameters.trainable"] == summary["parameters"]["trainable"]


def test_a_tracker_folder_without_output_holds_a_run_per_name(tiny_models, data_root, tmp_path, capsys):
    shared = tmp_path / "trackers"
    for seed in ("3", "4"):
        code = main(["train", "--model", str(tiny_models["bert"]), "--task", "sst2", "--data-dir", str(data_root),
                     *SMALL, "--seed", seed, "--report-to", "tensorboard", "--tracker-dir", str(shared)])
        assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    folders = sorted(p.name for p in (shared / "tensorboard").iterdir())
    assert folders == ["lora-sst2-s3", "lora-sst2-s4"]
    assert all([s for s, _ in tensorboard_scalars(shared / "tensorboard" / name)["train/loss"]] == [2, 4]
               for name in folders)


def test_the_tracker_folders_are_the_train_commands_own(tmp_path):
    """--overwrite replaces them with the rest of the run, and nothing else."""
    for name in ("tensorboard", "mlruns", "wandb", "trackio"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    (tmp_path / "trackers.json").write_text("{}")
    (tmp_path / "log.jsonl").write_text("")
    claim_output(tmp_path, TRAIN_OUTPUT, overwrite=True)
    assert sorted(remove_owned(tmp_path, TRAIN_OUTPUT)) == sorted(
        ["tensorboard", "mlruns", "wandb", "trackio", "trackers.json", "log.jsonl"])
    assert list(tmp_path.iterdir()) == []


def test_report_to_on_the_command_line_and_in_a_config_file(tmp_path):
    def parsed(*words):
        return train_args(build_parser().parse_args(["train", "--model", "m", "--task", "sst2", *words]))

    assert parsed("--output", "o").report_to == ()
    assert parsed("--output", "o", "--report-to", "none").report_to == ()
    assert parsed("--output", "o", "--report-to", "mlflow", "--report-to", "tensorboard").report_to == (
        "mlflow", "tensorboard")
    config = tmp_path / "exp.yaml"
    config.write_text("report_to: wandb\noutput: o\n")
    assert parsed("--config", str(config)).report_to == ("wandb",)
    assert parsed("--config", str(config), "--report-to", "none").report_to == ()  # the flag overrides the file
    with pytest.raises(ArgumentError, match="writes files: give --output DIR .* or --tracker-dir DIR"):
        parsed("--report-to", "tensorboard")
    assert parsed("--report-to", "tensorboard", "--tracker-dir", "t").tracker_dir == "t"
    with pytest.raises(ArgumentError, match="not a tracker; choose from tensorboard, mlflow, wandb, trackio, none"):
        TrainArgs(model="m", task="sst2", output_dir="o", report_to=["comet"])
    with pytest.raises(ArgumentError, match="--report-to none with mlflow"):
        TrainArgs(model="m", task="sst2", output_dir="o", report_to=["none", "mlflow"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--model", "m", "--task", "sst2", "--report-to", "comet"])


@pytest.mark.parametrize("library, module", [("mlflow", "mlflow"), ("wandb", "wandb"), ("trackio", "trackio"),
                                              ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_tracker_library_names_its_extra(library, module, tmp_path, monkeypatch):
    for name in [module, *(name for name in sys.modules if name.startswith(f"{module}."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    args = TrainArgs(model="m", task="sst2", output_dir=str(tmp_path / "run"), report_to=(library,))
    with pytest.raises(TrackerMissing, match=rf"--report-to {library} needs {library}: pip install 'peftlab\[{library}\]'"):
        open_trackers(args, tmp_path / "run", is_main=True)
    assert not (tmp_path / "run").exists()  # refused before anything is written
    assert open_trackers(args, tmp_path / "run", is_main=False).trackers == {}  # other processes log nothing


class Recording:
    """A tracker that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, config, step):
        self.calls.append(("start", step))

    def log(self, metrics, step):
        self.calls.append(("log", step, metrics))

    def finish(self, summary, status):
        self.calls.append(("finish", status))

    def state(self):
        return {"run_id": "r"}


@pytest.mark.parametrize("error, status", [(None, "finished"), (ValueError("boom"), "failed"),
                                           (Interrupted("stopped", exit_code=130), "killed")])
def test_a_run_that_raises_closes_its_tracker_runs(error, status, tmp_path):
    tracker = Recording()
    trackers = Trackers({"recording": tracker}, tmp_path / "trackers.json")
    with pytest.raises(type(error)) if error else contextlib.nullcontext(), trackers:
        trackers.start({}, 0)
        trackers.log({"type": "train", "step": 2, "epoch": 0, "loss": 0.5, "packed": True, "note": "x"})
        trackers.log({"type": "eval", "step": 2, "epoch": 0, "accuracy": 0.75})
        if error:
            raise error
        trackers.finish({"final/accuracy": 0.75})
    assert tracker.calls == [("start", 0), ("log", 2, {"train/epoch": 0.0, "train/loss": 0.5}),
                             ("log", 2, {"eval/accuracy": 0.75}), ("finish", status)]
    assert json.loads((tmp_path / "trackers.json").read_text()) == {"recording": {"run_id": "r"}}


def test_a_run_that_fails_before_it_starts_leaves_no_tracker_run():
    tracker = Recording()
    with pytest.raises(ValueError), Trackers({"recording": tracker}, None):
        raise ValueError("the model did not load")
    assert tracker.calls == []

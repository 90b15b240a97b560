"""``--method untuned``: the base model scored as it is, beside the tuned rows; a real method that leaves
nothing to train stays an error."""

import json

import pytest

from peftlab.train import TrainArgs, run_training
from peftlab.train import plan as plan_module
from peftlab.train.args import UNTUNED, ArgumentError


def args_for(tiny_models, data_root, tmp_path, method, **extra):
    return TrainArgs(model=str(tiny_models["llama"]), task="alpaca", method=method, data_dir=str(data_root),
                     max_train_samples=16, max_eval_samples=8, batch_size=4, max_steps=2, progress=False, seed=3,
                     eval_tasks=("english-lm",), output_dir=str(tmp_path / method), **extra)


def test_untuned_scores_the_base_model_with_nothing_trained(tiny_models, data_root, tmp_path):
    untuned = run_training(args_for(tiny_models, data_root, tmp_path, UNTUNED))
    assert untuned["parameters"]["trainable"] == 0 and untuned["parameters"]["total"] > 0
    assert untuned["steps"] == 0 and untuned["train_tokens"] == 0 and untuned["method"] == UNTUNED
    assert untuned["scores_before_training"] == {}  # nothing happens between before and after
    # LoRA starts as the base model: its loss before training is the untuned model's.
    lora = run_training(args_for(tiny_models, data_root, tmp_path, "lora", learning_rate=5e-2))
    assert untuned["scores"]["english-lm/loss"] == pytest.approx(lora["scores_before_training"]["english-lm/loss"])
    assert lora["scores"]["english-lm/loss"] != untuned["scores"]["english-lm/loss"]
    folder = tmp_path / UNTUNED
    assert {p.name for p in folder.iterdir()} <= {"metrics.json", "log.jsonl"}  # no adapter to save
    assert json.loads((folder / "metrics.json").read_text())["parameters"]["trainable"] == 0


def test_untuned_takes_no_options_and_no_classification_task(tiny_models, data_root, tmp_path):
    with pytest.raises(ArgumentError, match="applies no method, so it takes no --set options"):
        TrainArgs(model="m", task="alpaca", method=UNTUNED, options={"rank": 4})
    bert = TrainArgs(model=str(tiny_models["bert"]), task="sst2", method=UNTUNED, data_dir=str(data_root),
                     max_train_samples=8, max_eval_samples=8, progress=False)
    with pytest.raises(ArgumentError, match="needs a new, untrained classification head"):
        run_training(bert)


def test_a_real_method_that_leaves_nothing_to_train_is_an_error(tiny_models, data_root, tmp_path, monkeypatch):
    def frozen(model, method, **options):
        return model.requires_grad_(False)

    monkeypatch.setattr(plan_module.peftlab, "apply", frozen)
    with pytest.raises(ArgumentError, match="method 'lora' left no parameter of .* to train"):
        run_training(args_for(tiny_models, data_root, tmp_path, "lora"))


def test_the_cli_scores_an_untuned_model(tiny_models, data_root, tmp_path, capsys):
    from peftlab.cli import main

    code = main(["train", "--model", str(tiny_models["gpt2"]), "--task", "alpaca", "--method", UNTUNED,
                 "--eval-task", "english-lm", "--max-train-samples", "4", "--max-eval-samples", "4", "--no-progress",
                 "--data-dir", str(data_root), "--output", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["parameters"]["trainable"] == 0 and metrics["scores"]["english-lm/loss"] > 0

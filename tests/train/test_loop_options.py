"""Gradient checkpointing over a frozen base trains exactly as without it; training without an output
folder writes nothing and still reports its measurements; ``eval_steps`` scores every N steps and keeps
the best-scoring adapter in ``best/``."""

import json
import platform
from pathlib import Path

import pytest
import torch

import peftlab
from peftlab.train.args import ArgumentError
from safetensors.torch import load_file
from conftest import count_fast_dropouts

from peftlab.train import TrainArgs, run_training


def assert_same_adapter(run: Path, reference: Path, *, atol: float, rtol: float) -> None:
    """``run`` trained (a LoRA B moved off zero) and saved the adapter ``reference`` saved, tensor by tensor."""
    trained, expected = (load_file(folder / "adapter_model.safetensors") for folder in (run, reference))
    assert any(name.endswith("lora_B") and t.abs().sum() > 0 for name, t in trained.items())  # it trained
    assert trained.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(trained[name], expected[name], atol=atol, rtol=rtol, msg=f"{run.name}: {name}")


def test_gradient_checkpointing_gives_the_same_adapter(tiny_models, data_root, tmp_path):
    common = dict(model=str(tiny_models["llama"]), task="alpaca", method="lora", data_dir=str(data_root),
                  max_train_samples=8, max_eval_samples=4, batch_size=4, max_steps=2, progress=False,
                  learning_rate=1e-2)
    run_training(TrainArgs(**common, output_dir=str(tmp_path / "plain")))
    run_training(TrainArgs(**common, output_dir=str(tmp_path / "checkpointed"), gradient_checkpointing=True))
    assert_same_adapter(tmp_path / "plain", tmp_path / "checkpointed", atol=1e-6, rtol=0)


def test_run_without_output_folder_reports_measurements(tiny_models, data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = run_training(TrainArgs(model=str(tiny_models["gpt2"]), task="mmlu", method="ia3",
                                     data_dir=str(data_root), max_train_samples=8, max_eval_samples=8,
                                     batch_size=4, max_steps=2, progress=False, gradient_accumulation_steps=2))
    assert list(tmp_path.iterdir()) == []
    assert metrics["steps"] == 2 and metrics["train_tokens"] > 0 and metrics["peak_memory_kind"] == "cpu_peak_rss"
    assert 0 < metrics["parameters"]["trainable_percent"] < 100


def test_eval_steps_evaluate_every_n_steps_and_best_holds_the_best_scoring_adapter(still_bert, data_root, tmp_path):
    from peftlab.train import EvalArgs
    from peftlab.train.evaluate_adapter import evaluate_adapter

    out = tmp_path / "run"
    metrics = run_training(TrainArgs(model=str(still_bert), task="stsb", method="lora", data_dir=str(data_root),
                                     output_dir=str(out), max_train_samples=32, max_eval_samples=16, batch_size=4,
                                     max_steps=8, eval_steps=2, learning_rate=3e-2, seed=7, progress=False))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    scores = {r["step"]: r["pearson"] for r in log if r["type"] == "eval"}
    assert list(scores) == [2, 4, 6, 8]
    best_step = max(scores, key=scores.get)
    assert best_step != 8, "the last evaluation scored best: best/ and the final adapter coincide, nothing is tested"
    assert (metrics["best_step"], metrics["best_score"]) == (best_step, scores[best_step])

    def pearson(adapter):
        return evaluate_adapter(EvalArgs(model=str(still_bert), adapter=str(adapter), task="stsb",
                                         data_dir=str(data_root), max_eval_samples=16, seed=7))["scores"]["pearson"]

    assert pearson(out / "best") == pytest.approx(scores[best_step], abs=1e-5)
    assert pearson(out) == pytest.approx(scores[8], abs=1e-5)


@pytest.mark.parametrize("family,task,split", [("llama", "alpaca", None), ("t5", "wmt16-en-ro", "newsdev2016")])
def test_default_step_chunked_loss_and_fused_ops_trains_as_the_plain_step(tiny_models, data_root, tmp_path, family,
                                                                          task, split):
    """The default step (chunked loss, fused RMSNorm/SwiGLU) gives the adapter the plain step gives."""
    common = dict(model=str(tiny_models[family]), task=task, train_split=split, method="lora", data_dir=str(data_root),
                  max_train_samples=8, max_eval_samples=2, batch_size=4, max_steps=2, progress=False,
                  learning_rate=1e-2, max_new_tokens=4, options={"target_modules": "all_linear"})
    # fast dropout off on both sides: it draws other masks (test_fast_dropout_is_the_default_on_cpu)
    fast = run_training(TrainArgs(**common, output_dir=str(tmp_path / "default"), fast_dropout=False))
    plain = run_training(TrainArgs(**common, output_dir=str(tmp_path / "plain"), loss="plain", fused_ops=False,
                                   fast_dropout=False))
    assert fast["loss"] == "chunked" and plain["loss"] == "plain"
    assert fast["kept_freed_memory"] is (platform.libc_ver()[0] == "glibc")  # train.speedups.host_memory, on CPU
    assert plain["fused_modules"] == 0 and fast["fused_modules"] > 0  # RMS norms (and LLaMA's SwiGLU MLPs)
    assert_same_adapter(tmp_path / "default", tmp_path / "plain", atol=1e-5, rtol=1e-4)


def test_compile_trains_the_adapter_the_eager_step_trains(tiny_models, data_root, tmp_path):
    common = dict(model=str(tiny_models["llama"]), task="alpaca", method="lora", data_dir=str(data_root),
                  max_train_samples=8, max_eval_samples=2, batch_size=4, max_steps=2, progress=False,
                  learning_rate=1e-2, options={"target_modules": "all_linear"})
    compiled = run_training(TrainArgs(**common, output_dir=str(tmp_path / "compiled"), compile=True))
    checkpointed = run_training(TrainArgs(**common, output_dir=str(tmp_path / "checkpointed"), compile=True,
                                          gradient_checkpointing=True))
    eager = run_training(TrainArgs(**common, output_dir=str(tmp_path / "eager")))
    assert compiled["compiled_modules"] == checkpointed["compiled_modules"] == 2 and eager["compiled_modules"] == 0
    assert compiled["fused_modules"] == 1  # the final norm; inside the compiled blocks the compiler fuses
    for run in ("compiled", "checkpointed"):
        assert_same_adapter(tmp_path / run, tmp_path / "eager", atol=1e-5, rtol=1e-4)
    assert compiled["scores"]["loss"] == pytest.approx(eager["scores"]["loss"], rel=1e-5)


def test_compile_on_a_model_without_declared_blocks_is_refused_before_the_output_folder(
        tiny_models, data_root, tmp_path, monkeypatch):
    from peftlab.train import loop
    from peftlab.train.args import ArgumentError

    monkeypatch.setattr(loop, "block_classes", lambda model: set())  # as a model without _no_split_modules
    with pytest.raises(ArgumentError, match="declares no transformer blocks.*train without --compile"):
        run_training(TrainArgs(model=str(tiny_models["llama"]), task="alpaca", method="lora", data_dir=str(data_root),
                               output_dir=str(tmp_path / "refused"), compile=True, max_steps=1, progress=False))
    assert not (tmp_path / "refused").exists()


def test_compile_with_fsdp_is_refused_with_the_fix():
    from peftlab.train.args import ArgumentError

    with pytest.raises(ArgumentError, match="--compile with --fsdp is not supported yet: drop one of them"):
        TrainArgs(model="m", task="alpaca", compile=True, fsdp=True)


def test_chunked_loss_where_it_cannot_apply_is_an_error_and_auto_takes_the_plain_loss(tiny_models, data_root, tmp_path):
    from peftlab.train.args import ArgumentError

    common = dict(model=str(tiny_models["bert"]), task="sst2", method="lora", data_dir=str(data_root),
                  max_train_samples=8, max_eval_samples=4, batch_size=4, max_steps=1, progress=False)
    with pytest.raises(ArgumentError, match="classification head.*--loss plain"):
        run_training(TrainArgs(**common, loss="chunked", output_dir=str(tmp_path / "refused")))
    assert not (tmp_path / "refused").exists()  # refused before the output folder is made
    assert run_training(TrainArgs(**common))["loss"] == "plain"


def test_fast_dropout_is_the_default_on_cpu(tiny_models, data_root, monkeypatch):
    calls = count_fast_dropouts(monkeypatch)
    common = dict(model=str(tiny_models["bert"]), task="sst2", method="lora", data_dir=str(data_root),
                  max_train_samples=8, max_eval_samples=4, batch_size=4, max_steps=1, progress=False)
    metrics = run_training(TrainArgs(**common))
    assert metrics["fast_dropout"] is True and calls  # peftlab.train.speedups.fast_dropout drew the step's masks
    calls.clear()
    assert run_training(TrainArgs(**common, fast_dropout=False))["fast_dropout"] is False and not calls
    llama = dict(common, model=str(tiny_models["llama"]), task="alpaca")  # no dropout layer: nothing to draw
    assert run_training(TrainArgs(**llama))["fast_dropout"] is False


def test_gradient_checkpointing_redraws_the_fast_dropout_masks(tiny_models, data_root, tmp_path, monkeypatch):
    """With dropout drawn by train.speedups.fast_dropout, a checkpointed run trains the adapter the plain one does."""
    from peftlab.train.speedups import fast_dropout

    monkeypatch.setattr(fast_dropout, "MIN_ELEMENTS", 0)  # the tiny model's tensors take the fast masks
    common = dict(model=str(tiny_models["bert"]), task="sst2", method="lora", data_dir=str(data_root),
                  max_train_samples=8, max_eval_samples=4, batch_size=4, max_steps=2, progress=False,
                  learning_rate=1e-2, options={"dropout": 0.2})
    plain = run_training(TrainArgs(**common, output_dir=str(tmp_path / "plain")))
    run_training(TrainArgs(**common, output_dir=str(tmp_path / "checkpointed"), gradient_checkpointing=True))
    assert plain["fast_dropout"] is True
    assert_same_adapter(tmp_path / "plain", tmp_path / "checkpointed", atol=1e-6, rtol=1e-5)


def test_steps_run_in_training_mode(tiny_models, data_root, monkeypatch):
    """from_pretrained gives a model in eval mode; the trainer's steps run it in training mode (dropout on)."""
    from peftlab.train.trainer import Trainer

    modes: list[bool] = []
    step = Trainer.optimizer_step
    monkeypatch.setattr(Trainer, "optimizer_step", lambda self, *a: modes.append(self.base.training) or step(self, *a))
    run_training(TrainArgs(model=str(tiny_models["bert"]), task="sst2", method="lora", data_dir=str(data_root),
                           max_train_samples=8, max_eval_samples=4, batch_size=4, max_steps=2, eval_steps=1,
                           progress=False))
    assert modes == [True, True]  # the evaluation after step 1 puts training mode back


def test_cli_turns_the_default_step_off(tiny_models):
    import argparse

    from peftlab.cli.train import add_parser, train_args

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    parsed = parser.parse_args(["train", "--model", "m", "--task", "sst2", "--no-fused-ops", "--loss", "plain",
                                "--no-keep-freed-memory", "--no-fast-dropout"])
    args = train_args(parsed)
    assert args.fused_ops is False and args.loss == "plain" and args.compile is False
    assert args.keep_freed_memory is False and args.fast_dropout is False
    assert train_args(parser.parse_args(["train", "--model", "m", "--task", "sst2", "--compile"])).compile is True
    defaults = train_args(parser.parse_args(["train", "--model", "m", "--task", "sst2"]))
    assert defaults.fused_ops is True and defaults.keep_freed_memory is True and defaults.fast_dropout is True


def test_prompt_tuning_leaves_its_virtual_tokens_room_in_the_models_positions(still_bert, data_root, tmp_path):
    """Inputs are cut to the positions left after the virtual tokens: the 64-position BERT, given 20 of them,
    reads at most 44 input tokens (uncut, SST-2's longest pushed BERT's position table past its end)."""
    from peftlab.tasks import get_task
    from peftlab.train.models import input_positions, load_model

    loaded = load_model(str(still_bert), get_task("sst2"))
    assert input_positions(loaded.model) == loaded.model.config.max_position_embeddings == 64
    peftlab.apply(loaded.model, "prompt_tuning", num_virtual_tokens=20)
    assert loaded.max_length(128) == 44 and loaded.max_length(30) == 30
    metrics = run_training(TrainArgs(model=str(still_bert), task="sst2", method="prompt_tuning",
                                     data_dir=str(data_root), output_dir=str(tmp_path / "run"), max_train_samples=48,
                                     max_eval_samples=16, max_steps=2, batch_size=8, progress=False))
    assert 0 <= metrics["scores"]["accuracy"] <= 1



def test_gradient_accumulation_trains_what_one_batch_of_the_same_examples_trains(tiny_models, data_root, tmp_path):
    """Each micro-batch's token mean is weighted by its share of the step's response tokens, so 2 x 4 examples
    accumulated give the gradient of the 8 together (a mean of the two means would not)."""
    common = {"model": str(tiny_models["llama"]), "task": "alpaca", "method": "lora", "data_dir": str(data_root),
              "max_train_samples": 32, "max_eval_samples": 8, "max_steps": 3, "max_length": 48, "lr": 1e-2,
              "progress": False, "seed": 3}
    common = {("learning_rate" if k == "lr" else k): v for k, v in common.items()}
    run_training(TrainArgs(**common, batch_size=8, output_dir=str(tmp_path / "one")))
    run_training(TrainArgs(**common, batch_size=4, gradient_accumulation_steps=2, output_dir=str(tmp_path / "two")))
    one, two = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(one[name], two[name], atol=1e-5, rtol=0, msg=name)

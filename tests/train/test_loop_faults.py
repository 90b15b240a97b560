"""A NaN loss stops training with a message and keeps the last good checkpoint; running out of
memory becomes a message listing the settings that reduce memory."""

import pytest
from transformers import AutoModelForCausalLM

import peftlab
from peftlab.core.hooks import TrainingHooks
from peftlab.train import TrainArgs, run_training, trainer
from peftlab.train.checkpoint import latest_checkpoint as real_latest_checkpoint
from peftlab.train.faults import NonFiniteLossError, OutOfMemoryError


def load_model(path):
    return AutoModelForCausalLM.from_pretrained(str(path))


def args_for(tiny_models, data_root, output):
    return TrainArgs(model=str(tiny_models["llama"]), task="alpaca", method="lora", data_dir=str(data_root),
                     max_train_samples=16, max_eval_samples=4, batch_size=2, max_steps=5, save_steps=1,
                     progress=False, output_dir=str(output))


def test_nan_loss_stops_and_names_the_last_good_checkpoint(tiny_models, data_root, tmp_path, monkeypatch):
    calls = []

    def poisoned(self, model):
        calls.append(1)
        return float("nan") if len(calls) == 3 else 0.0

    searches = []

    def latest_checkpoint(output):
        searches.append(output)
        return real_latest_checkpoint(output)

    monkeypatch.setattr(TrainingHooks, "regularization", poisoned)
    monkeypatch.setattr(trainer, "latest_checkpoint", latest_checkpoint)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3.*checkpoint-2; resume from it"):
        run_training(args_for(tiny_models, data_root, tmp_path / "run"))
    assert len(searches) == 1  # the checkpoint folder is searched only for the message, not on every step
    last_good = tmp_path / "run" / "checkpoint-2" / "adapter"
    peftlab.load_adapter(load_model(tiny_models["llama"]), last_good)  # still loads
    assert not (tmp_path / "run" / "checkpoint-3").exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_out_of_memory_names_the_settings_that_reduce_memory(tiny_models, data_root, tmp_path, monkeypatch):
    def exhausted(self, model, step):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(TrainingHooks, "before_optimizer_step", exhausted)
    with pytest.raises(OutOfMemoryError, match="batch_size=2, max_length=.*Try: a smaller batch_size"):
        run_training(args_for(tiny_models, data_root, tmp_path / "run"))

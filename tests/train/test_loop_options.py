"""Gradient checkpointing over a frozen base trains exactly as without it; training without an output
folder writes nothing and still reports its measurements."""

import torch
from safetensors.torch import load_file

from peftlab.train import TrainArgs, run_training


def test_gradient_checkpointing_gives_the_same_adapter(tiny_models, data_root, tmp_path):
    common = dict(model=str(tiny_models["llama"]), task="alpaca", method="lora", data_dir=str(data_root),
                  max_train_samples=8, max_eval_samples=4, batch_size=4, max_steps=2, progress=False,
                  learning_rate=1e-2)
    run_training(TrainArgs(**common, output_dir=str(tmp_path / "plain")))
    run_training(TrainArgs(**common, output_dir=str(tmp_path / "checkpointed"), gradient_checkpointing=True))
    plain = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    checkpointed = load_file(tmp_path / "checkpointed" / "adapter_model.safetensors")
    assert any(name.endswith("lora_B") and t.abs().sum() > 0 for name, t in plain.items())  # it trained
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-6, rtol=0, msg=name)


def test_run_without_output_folder_reports_measurements(tiny_models, data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = run_training(TrainArgs(model=str(tiny_models["gpt2"]), task="mmlu", method="ia3",
                                     data_dir=str(data_root), max_train_samples=8, max_eval_samples=8,
                                     batch_size=4, max_steps=2, progress=False, gradient_accumulation_steps=2))
    assert list(tmp_path.iterdir()) == []
    assert metrics["steps"] == 2 and metrics["train_tokens"] > 0 and metrics["peak_memory_kind"] == "cpu_peak_rss"
    assert 0 < metrics["parameters"]["trainable_percent"] < 100

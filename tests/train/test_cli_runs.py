"""A tiny model of each family trained end to end through ``peftlab train``, then scored by ``peftlab eval``."""

import json

import pytest
from safetensors.torch import load_file

from peftlab.cli import main

SMALL = ["--max-train-samples", "16", "--max-eval-samples", "8", "--batch-size", "4", "--no-progress", "--seed", "3"]


def train(capsys, model, task, output, *extra):
    code = main(["train", "--model", str(model), "--task", task, "--output", str(output), *SMALL, *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["task"] == task  # the summary printed
    return json.loads((output / "metrics.json").read_text())


def test_bert_sst2_lora_writes_the_run_folder_and_eval_reproduces_it(tiny_models, data_root, tmp_path, capsys):
    out = tmp_path / "run"
    metrics = train(capsys, tiny_models["bert"], "sst2", out, "--method", "lora", "--set", "rank=4",
                    "--epochs", "2", "--lr", "1e-2", "--data-dir", str(data_root))
    assert {"adapter_config.json", "adapter_model.safetensors", "metrics.json", "log.jsonl", "best"} <= {
        p.name for p in out.iterdir()}
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]  # 4 steps an epoch
    assert metrics["steps"] == 8 and metrics["epochs"] == 2 and set(metrics["scores"]) == {"accuracy"}
    # q,v LoRA x 2 layers + the head: classifier and BERT's pooler
    assert metrics["parameters"]["trainable"] == 2 * 2 * (4 * 32 + 32 * 4) + (2 * 32 + 2) + (32 * 32 + 32)
    assert metrics["train_tokens_per_s"] > 0 and metrics["peak_memory_bytes"] > 0 and metrics["train_time_s"] > 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["method"] == "lora" and config["rank"] == 4 and config["modules_to_save"] == ["classifier", "bert.pooler"]
    assert any(name.startswith("classifier.") for name in load_file(out / "adapter_model.safetensors"))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["type"] == "eval"] == [4, 8]
    assert all(r["loss"] > 0 for r in log if r["type"] == "train")

    code = main(["eval", "--model", str(tiny_models["bert"]), "--adapter", str(out), "--task", "sst2",
                 "--max-eval-samples", "8", "--seed", "3", "--data-dir", str(data_root)])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["scores"] == pytest.approx(metrics["scores"])


def test_the_classification_head_trains(tiny_models, data_root, tmp_path, capsys, caplog):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    code = main(["train", "--model", str(tiny_models["bert"]), "--task", "rte", "--output", str(out), *SMALL,
                 "--method", "bitfit", "--max-steps", "2", "--data-dir", str(data_root)])
    err = capsys.readouterr().err
    assert code == 0, err
    # peftlab's own line in place of transformers' "MISSING ... newly initialized" table
    # (the tiny checkpoint was saved with a 2-label head: tests/train/test_load_report.py has the new-head line)
    assert "checkpoint has its rte head (2 output(s)); classifier, bert.pooler train beside the method" in err
    assert "LOAD REPORT" not in err + caplog.text and "MISSING" not in err + caplog.text
    saved = load_file(out / "adapter_model.safetensors")
    # The head is new: check it moved away from its seeded initialisation.
    import torch

    torch.manual_seed(3)
    fresh = AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)
    assert not torch.equal(saved["classifier.weight"], fresh.classifier.weight.detach())
    # BERT's pooler feeds the head and trains with it (bitfit alone would move only its bias)
    assert not torch.equal(saved["bert.pooler.dense.weight"], fresh.bert.pooler.dense.weight.detach())


def test_t5_translates_wmt16_trained_on_newsdev(tiny_models, data_root, tmp_path, capsys):
    metrics = train(capsys, tiny_models["t5"], "wmt16-en-ro", tmp_path / "run", "--method", "ia3",
                    "--train-split", "newsdev2016", "--max-steps", "2", "--max-new-tokens", "8",
                    "--data-dir", str(data_root))
    assert set(metrics["scores"]) == {"bleu"} and metrics["scores"]["bleu"] >= 0


def test_llama_instruction_tuned_on_alpaca_and_scored_on_mmlu(tiny_models, data_root, tmp_path, capsys):
    metrics = train(capsys, tiny_models["llama"], "alpaca", tmp_path / "run", "--method", "lora",
                    "--eval-task", "mmlu", "--max-steps", "2", "--data-dir", str(data_root))
    scores = metrics["scores"]
    assert scores["loss"] > 0 and scores["perplexity"] == pytest.approx(2.718281828 ** scores["loss"])
    assert 0 <= scores["mmlu/accuracy"] <= 1 and any(k.startswith("mmlu/subject/") for k in scores)


def test_gpt2_mmlu_five_shot(tiny_models, data_root, tmp_path, capsys):
    metrics = train(capsys, tiny_models["gpt2"], "mmlu-5shot", tmp_path / "run", "--method", "adapter",
                    "--max-steps", "2", "--data-dir", str(data_root))
    assert 0 <= metrics["scores"]["accuracy"] <= 1


def test_config_file_and_flags(tiny_models, data_root, tmp_path, capsys):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(f"model: {tiny_models['bert']}\ntask: stsb\nmethod: lora\nlr: 0.01\nmax_steps: 2\n"
                          f"data_dir: {data_root}\noptions:\n  rank: 2\n  alpha: 4\n")
    out = tmp_path / "run"
    code = main(["train", "--config", str(experiment), "--set", "rank=3", "--output", str(out), *SMALL])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["rank"], config["alpha"]) == (3, 4.0)  # the flag overrides the file
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["scores"]) == {"pearson", "spearman"} and metrics["steps"] == 2


@pytest.mark.cuda
@pytest.mark.parametrize("family,task,method,extra", [
    ("llama", "alpaca", "lora", []),
    ("llama", "alpaca", "qlora", []),
    ("t5", "wmt16-en-ro", "lora", ["--train-split", "newsdev2016", "--max-new-tokens", "8"]),
    ("bert", "sst2", "prefix_tuning", []),
])
def test_on_cuda_a_run_trains_in_bf16_reports_gpu_memory_and_its_adapter_loads_on_cpu(
        family, task, method, extra, tiny_models, data_root, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    import peftlab
    from peftlab.core.probe import probe_output

    out = tmp_path / "run"
    metrics = train(capsys, tiny_models[family], task, out, "--method", method, "--max-steps", "3", "--lr", "1e-2",
                    "--data-dir", str(data_root), *extra)
    assert metrics["device"].startswith("cuda") and metrics["mixed_precision"] == "bf16"
    assert metrics["peak_memory_kind"] == "cuda_max_allocated" and metrics["peak_memory_bytes"] > 0
    if family != "bert":
        assert metrics["loss"] == "chunked"
    if family == "llama":
        assert metrics["fused_modules"] > 0
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all(torch.isfinite(tensor).all() for tensor in saved.values())

    auto = {"llama": AutoModelForCausalLM, "t5": AutoModelForSeq2SeqLM, "bert": AutoModelForSequenceClassification}
    torch.manual_seed(3)
    base = auto[family].from_pretrained(tiny_models[family]).eval()
    before = probe_output(base)
    loaded = peftlab.load_adapter(base, out).eval()
    assert next(loaded.parameters()).device.type == "cpu"
    assert not torch.allclose(probe_output(loaded), before)  # trained on the GPU, changes the model here


def test_without_output_it_says_nothing_is_written(tiny_models, data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--model", str(tiny_models["bert"]), "--task", "rte", "--max-steps", "1",
                 "--data-dir", str(data_root), *SMALL])
    captured = capsys.readouterr()
    assert code == 0 and "no --output, so nothing is written" in captured.err and "--output DIR" in captured.err
    assert json.loads(captured.out)["task"] == "rte" and not list(tmp_path.iterdir())


def test_resume_says_where_it_starts(tiny_models, data_root, tmp_path, capsys):
    argv = ["--max-steps", "2", "--save-steps", "1", "--data-dir", str(data_root)]
    out = tmp_path / "run"
    out.mkdir()
    train(capsys, tiny_models["bert"], "rte", out, "--resume", *argv)  # an empty folder: nothing to resume yet
    code = main(["train", "--model", str(tiny_models["bert"]), "--task", "rte", "--output", str(tmp_path / "fresh"),
                 "--resume", *SMALL, *argv])
    assert code == 0 and "--resume: no checkpoint in" in capsys.readouterr().err
    (out / "metrics.json").unlink()
    code = main(["train", "--model", str(tiny_models["bert"]), "--task", "rte", "--output", str(out), "--resume",
                 *SMALL, *argv])
    assert code == 0 and f"resuming from {out / 'checkpoint-2'} (step 2 of 2)" in capsys.readouterr().err


def test_resume_refuses_changed_settings_and_lists_each(tiny_models, data_root, tmp_path, capsys):
    base = ["train", "--model", str(tiny_models["bert"]), "--task", "rte", "--output", str(tmp_path / "run"),
            "--max-steps", "2", "--save-steps", "1", "--data-dir", str(data_root), *SMALL]
    assert main([*base, "--set", "rank=4", "--lr", "5e-3"]) == 0
    capsys.readouterr()
    assert main([*base, "--resume", "--set", "rank=8", "--lr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint-2 was written by a run with other settings" in err, err
    assert "options: {'rank': '4'} -> {'rank': '8'}" in err and "learning_rate: 0.005 -> 0.001" in err
    assert "another shape" not in err
    assert main([*base, "--resume", "--set", "rank=4", "--lr", "5e-3", "--eval-steps", "1"]) == 0  # evaluation may change


def test_the_forgetting_metric_is_scored_before_and_after_tuning(tiny_models, data_root, tmp_path, capsys):
    metrics = train(capsys, tiny_models["llama"], "alpaca", tmp_path / "run", "--method", "lora", "--lr", "5e-2",
                    "--eval-task", "mmlu-subset", "--eval-task", "english-lm", "--max-steps", "3",
                    "--data-dir", str(data_root))
    before, after = metrics["scores_before_training"], metrics["scores"]
    assert set(before) == {"english-lm/loss", "english-lm/perplexity"}  # only the forgetting task, not MMLU
    assert before["english-lm/loss"] > 0 and after["english-lm/loss"] != before["english-lm/loss"]
    assert 0 <= after["mmlu-subset/accuracy"] <= 1

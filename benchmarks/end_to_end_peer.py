"""The peer side of ``end_to_end.py``, in its own process: HF peft + ``transformers.Trainer`` for
classification, HF peft + TRL ``SFTTrainer`` for instruction tuning. Writes ``<output>/result.json``.

    python benchmarks/end_to_end_peer.py '<workload JSON from end_to_end.py>'

Only the data (``peftlab.tasks``: the same examples, subsampled the same way), the model files (the
alias's folder) and the scoring (the task's metric; MMLU through peftlab's scorer) come from peftlab.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

PEFT_TARGETS = {"attention_qv": ["query", "value"], "all_linear": "all-linear"}


def lora_config(spec: dict[str, Any], task_type: str, modules_to_save: list[str] | None) -> Any:
    from peft import LoraConfig

    options = spec["options"]
    return LoraConfig(task_type=task_type, r=int(options["rank"]), lora_alpha=float(options["alpha"]),
                      lora_dropout=0.0, target_modules=PEFT_TARGETS[options["target_modules"]],
                      modules_to_save=modules_to_save)


def data(spec: dict[str, Any]) -> tuple[Any, list, Any, list]:
    from peftlab.tasks import get_task, subsample

    task = get_task(spec["task"])
    train = subsample(task.load(task.train_split, spec["data_dir"]), spec["max_train_samples"], spec["seed"])
    scored = get_task(spec["eval_task"]) if spec["eval_task"] else task
    dev = subsample(scored.load(scored.eval_splits[0], spec["data_dir"]), spec["max_eval_samples"], spec["seed"])
    return task, train, scored, dev


def training_arguments(spec: dict[str, Any], config_class: Any, **extra: Any) -> Any:
    return config_class(output_dir=spec["output"], per_device_train_batch_size=spec["batch_size"],
                        num_train_epochs=spec["epochs"], learning_rate=spec["learning_rate"], warmup_steps=0.06,  # a float: a ratio
                        lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0, seed=spec["seed"],
                        save_strategy="no", report_to=[], logging_steps=50, disable_tqdm=True,
                        dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(), **extra)


def classification(spec: dict[str, Any], clock: dict[str, float]) -> dict[str, Any]:
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer
    from transformers import TrainingArguments

    from peftlab.train.models import resolve_model

    task, train, _, dev = data(spec)
    source = resolve_model(spec["model"])
    tokenizer = AutoTokenizer.from_pretrained(source.path)
    model = AutoModelForSequenceClassification.from_pretrained(source.path, num_labels=task.num_labels)
    if spec["method"] == "lora":  # the new head and BERT's pooler train beside LoRA, as in peftlab
        model = get_peft_model(model, lora_config(spec, "SEQ_CLS", ["classifier", "pooler"]))
    clock["load_s"] = time.perf_counter() - clock["start"]

    def encode(examples: list) -> list[dict[str, Any]]:
        return [{**tokenizer(e.text, e.text_pair, truncation=True, max_length=spec["max_length"]), "labels": e.label}
                for e in examples]

    started = time.perf_counter()
    train_features, dev_features = encode(train), encode(dev)
    clock["tokenize_s"] = time.perf_counter() - started
    arguments = training_arguments(spec, TrainingArguments, train_sampling_strategy="group_by_length",
                                   per_device_eval_batch_size=32)
    trainer = Trainer(model=model, args=arguments, train_dataset=train_features,
                      data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
    clock["train_s"] = time.perf_counter() - started
    started = time.perf_counter()
    scores = task.metrics(predicted_classes(trainer, dev_features), dev)
    clock["eval_s"] = time.perf_counter() - started
    tokens = spec["epochs"] * sum(len(f["input_ids"]) for f in train_features)
    return {"score": scores[task.main_metric], "metric": task.main_metric, "tokens": tokens}


def predicted_classes(trainer: Any, features: list[dict[str, Any]]) -> list[int]:
    """The argmax class of each feature, in the features' order.

    transformers 5 groups evaluation batches by length as well when training does, so ``predict`` returns
    predictions in its sampler's order; that sampler is seeded, and its order puts them back.
    """
    logits = trainer.predict(features).predictions
    order = list(trainer._get_eval_sampler(features) or range(len(features)))
    classes = [0] * len(features)
    for position, index in enumerate(order):
        classes[index] = int(logits[position].argmax(-1))
    return classes


def instruction(spec: dict[str, Any], clock: dict[str, float]) -> dict[str, Any]:
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from peftlab.train.evaluation import evaluate
    from peftlab.train.models import resolve_model

    task, train, scored, dev = data(spec)
    source = resolve_model(spec["model"])
    tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs())
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    options: dict[str, Any] = {**source.kwargs()}
    if spec["method"] == "qlora":
        from transformers import BitsAndBytesConfig

        options["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                            bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(source.path, **options)
    model = get_peft_model(model, lora_config(spec, "CAUSAL_LM", None))
    clock["load_s"] = time.perf_counter() - clock["start"]
    rows = [{"prompt": e.text, "completion": task.separator + e.target} for e in train]
    arguments = training_arguments(spec, SFTConfig, max_length=spec["max_length"], packing=True,
                                   completion_only_loss=True)
    started = time.perf_counter()
    trainer = SFTTrainer(model=model, args=arguments, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)  # tokenises (and packs) here
    clock["tokenize_s"] = time.perf_counter() - started
    tokens = spec["epochs"] * sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    started = time.perf_counter()
    trainer.train()
    clock["train_s"] = time.perf_counter() - started
    started = time.perf_counter()
    scores = evaluate(model, tokenizer, "decoder", scored, dev, batch_size=32, max_length=spec["max_length"])
    clock["eval_s"] = time.perf_counter() - started
    return {"score": scores[scored.main_metric], "metric": f"{scored.name}/{scored.main_metric}", "tokens": tokens}


def main() -> None:
    clock = {"start": time.perf_counter()}
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec["threads"])
    result = (instruction if spec["peer"] == "sft" else classification)(spec, clock)
    result["tokens_per_s"] = result.pop("tokens") / clock["train_s"]
    result.update({name: clock[name] for name in ("load_s", "tokenize_s", "train_s", "eval_s")})
    folder = Path(spec["output"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

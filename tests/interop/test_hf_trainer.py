"""The training hooks run inside a tiny HF Trainer through PeftlabCallback."""

from __future__ import annotations

import torch
from transformers import Trainer, TrainingArguments

import peftlab
from conftest import batch_for, tiny_llama
from peftlab.interop.hf_trainer import PeftlabCallback
from peftlab.methods.reparameterized.adalora import total_rank
from peftlab.methods.reparameterized._adalora_layers import svd_layers


def rows(model, count=8):
    batch = batch_for(model, batch=count, seed=5)
    return [{key: value[i] for key, value in batch.items()} for i in range(count)]


def run_trainer(model, tmp_path, steps):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2,
                             learning_rate=1e-2, use_cpu=True, report_to=[], save_strategy="no",
                             disable_tqdm=True, logging_strategy="no", seed=0)
    callback = PeftlabCallback()
    trainer = Trainer(model=model, args=args, train_dataset=rows(model), callbacks=[callback])
    trainer.train()
    return callback


def test_adalora_rank_budget_moves_under_trainer(tmp_path):
    model = peftlab.apply(tiny_llama(), "adalora", total_steps=5, init_rank=4, target_rank=2, t_init=1, t_final=1)
    layers = len(svd_layers(model))
    assert total_rank(model) == 4 * layers
    seen = []
    hooks = peftlab.training_hooks(model)
    original = hooks.after_optimizer_step

    def recording(model_, step):
        original(model_, step)
        seen.append((step, total_rank(model_)))

    hooks.after_optimizer_step = recording
    callback = run_trainer(model, tmp_path, steps=5)
    config = peftlab.peft_state(model).config
    assert seen == [(step, config.budget(layers, step + 1)) for step in range(5)]
    assert total_rank(model) == 2 * layers
    assert callback._handle is None, "the regularisation hook is removed after training"


def test_regularization_reaches_the_trainer_loss(tmp_path):
    model = peftlab.apply(tiny_llama(), "adalora", total_steps=5, init_rank=4, target_rank=2, orth_reg_weight=1.0)
    callback = PeftlabCallback()
    batch = batch_for(model)
    callback.on_train_begin(None, None, None, model=model, train_dataloader=[batch])
    model.train()
    with_penalty = model(**batch).loss
    penalty = peftlab.training_hooks(model).regularization(model)
    callback.on_train_end(None, None, None)
    torch.testing.assert_close(with_penalty, model(**batch).loss + penalty)


def test_child_tuning_d_is_prepared_and_masked_under_trainer(tmp_path):
    model = peftlab.apply(tiny_llama(), "child_tuning", variant="D", reserve_p=0.1)
    hooks = peftlab.training_hooks(model)
    before = {name: p.detach().clone() for name, p in hooks.parameters.items()}
    run_trainer(model, tmp_path, steps=2)
    assert hooks.masks is not None, "on_train_begin ran the Fisher estimate"
    moved = 0
    for name, parameter in hooks.parameters.items():
        changed = parameter.detach() != before[name]
        assert not (changed & ~hooks.masks[name]).any(), f"{name} changed outside the child network"
        moved += int(changed.sum())
    assert moved > 0.9 * peftlab.parameter_counts(model)[0], "the child network trains"


def test_lora_plus_learning_rates_reach_the_trainer_through_make_optimizer(tmp_path):
    """The Trainer builds a plain AdamW unless given one: peftlab.make_optimizer carries the method's rule."""
    model = peftlab.apply(tiny_llama(), "lora_plus", rank=4, lr_ratio=16.0)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-3, use_cpu=True, report_to=[], save_strategy="no",
                             disable_tqdm=True, logging_strategy="no", seed=0, warmup_steps=0,
                             lr_scheduler_type="constant")
    optimizer = peftlab.make_optimizer(model, lr=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=rows(model), callbacks=[PeftlabCallback()],
                      optimizers=(optimizer, None))
    trainer.train()
    names = {id(p): n for n, p in model.named_parameters()}
    rates = {names[id(p)].rsplit(".", 1)[-1]: group["lr"] for group in trainer.optimizer.param_groups
             for p in group["params"]}
    assert rates == {"lora_A": 1e-3, "lora_B": 16e-3}

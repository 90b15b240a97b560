"""Methods that act during training run through the loop's hooks: AdaLoRA's budget schedule over the
run's length (filled in by the loop), Child-Tuning D's Fisher estimate and gradient masks."""

import json

import pytest
from safetensors.torch import load_file

from peftlab.train import TrainArgs, run_training
from peftlab.train.plan import optimizer_steps
from peftlab.train.trainer import Trainer


def test_adalora_gets_the_run_length(tiny_models, data_root, tmp_path):
    out = tmp_path / "run"
    metrics = run_training(TrainArgs(model=str(tiny_models["bert"]), task="rte", method="adalora",
                                     options={"init_rank": 4, "target_rank": 2}, data_dir=str(data_root),
                                     output_dir=str(out), max_train_samples=24, max_eval_samples=8, batch_size=4,
                                     epochs=2, progress=False))
    assert metrics["steps"] == 12
    assert json.loads((out / "adapter_config.json").read_text())["total_steps"] == 12
    # The final ranks: the budget ends at target_rank x layers, shared unevenly among the 2 x 6 linear layers.
    ranks = json.loads((out / "metrics.json").read_text())["rank_pattern"]
    assert ranks == metrics["rank_pattern"] and len(ranks) == 2 * 6
    assert "bert.encoder.layer.1.attention.self.query" in ranks
    assert all(0 <= rank <= 4 for rank in ranks.values()) and metrics["total_rank"] == sum(ranks.values()) == 2 * 12
    assert len(set(ranks.values())) > 1  # the allocated pattern, not a uniform rank


def test_child_tuning_d_trains_only_its_child_network(tiny_models, data_root, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    run_training(TrainArgs(model=str(tiny_models["bert"]), task="rte", method="child_tuning",
                           options={"variant": "D", "reserve_p": 0.2}, data_dir=str(data_root), output_dir=str(out),
                           max_train_samples=16, max_eval_samples=8, batch_size=4, max_steps=3, progress=False,
                           learning_rate=1e-2))
    saved = load_file(out / "adapter_model.safetensors")
    base = dict(AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"]).named_parameters())
    name = "bert.encoder.layer.0.attention.self.query.weight"
    mask, values = saved[name + ".child_mask"].bool(), saved[name + ".child_values"]
    assert 0 < mask.float().mean() < 0.5  # a child network, chosen by prepare's Fisher estimate
    assert not values.allclose(base[name].detach()[mask])  # and it trained


@pytest.mark.parametrize("examples,batch,world,accumulate", [(16, 4, 1, 1), (17, 4, 1, 2), (17, 4, 2, 1), (9, 4, 2, 3)])
def test_planned_steps_match_the_loop(examples, batch, world, accumulate):
    args = TrainArgs(model="m", task="sst2", batch_size=batch, gradient_accumulation_steps=accumulate, epochs=2)
    trainer = Trainer.__new__(Trainer)
    trainer.args, trainer.world, trainer.features, trainer.lengths = args, world, [{}] * examples, [1] * examples
    assert optimizer_steps(args, examples, world) == 2 * len(trainer.epoch_groups(0))

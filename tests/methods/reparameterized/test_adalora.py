"""AdaLoRA: the budget schedule, masked singular values, importance scores and orthogonality."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

import peftlab
from conftest import batch_for, tiny_gpt2, tiny_llama
from peftlab.core.probe import probe_output
from peftlab.methods.reparameterized.adalora import rank_pattern, total_rank
from peftlab.methods.reparameterized._adalora_layers import StackedOrthogonality, svd_layers

OPTIONS = {"total_steps": 12, "init_rank": 4, "target_rank": 2, "t_init": 2, "t_final": 3}


def hand_budget(steps_done, layers, T=12, t_init=2, t_final=3, b0=4, bT=2):
    """Eq. 11 of the paper, written out for the test."""
    if steps_done <= t_init:
        return b0 * layers
    if steps_done >= T - t_final:
        return bT * layers
    return int(bT * layers + (b0 - bT) * layers * (1 - (steps_done - t_init) / (T - t_init - t_final)) ** 3)


def train(model, steps, on_step=lambda step: None, lr=1e-2):
    hooks = peftlab.training_hooks(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    for step in range(steps):
        loss = model(**batch_for(model, seed=step % 3)).loss + hooks.regularization(model)
        loss.backward()
        hooks.before_optimizer_step(model, step)
        optimizer.step()
        hooks.after_optimizer_step(model, step)
        optimizer.zero_grad()
        on_step(step)


@pytest.fixture(scope="module")
def trained():
    """A tiny LLaMA trained 4 steps past T, with the total rank and rank pattern after every step."""
    base = tiny_llama()
    model = peftlab.apply(copy.deepcopy(base), "adalora", **OPTIONS)
    ranks, patterns = [], []

    def record(step):
        ranks.append(total_rank(model))
        patterns.append(rank_pattern(model))
        for _, layer in svd_layers(model):
            assert torch.all(layer.svd_lambda[~layer.rank_mask] == 0), "a masked singular value moved"

    train(model, 16, record)
    return base, model, ranks, patterns


def test_total_rank_follows_the_schedule_to_the_target_and_masked_values_stay_zero(trained):
    _, model, ranks, patterns = trained
    layers = len(svd_layers(model))
    assert layers == 14  # q k v o gate up down, two layers
    assert ranks == [hand_budget(s + 1, layers) for s in range(16)]
    assert ranks[-1] == 2 * layers
    assert patterns[8:] == [patterns[8]] * 8, "final fine-tuning (from T - t_final = 9 steps) keeps the masks fixed"
    assert len(set(patterns[-1].values())) > 1, "the budget was reallocated unevenly across layers"
    assert peftlab.parameter_counts(model)[0] == sum(
        int(layer.rank_mask.sum()) * (layer.in_features + layer.out_features + 1) for _, layer in svd_layers(model))


def test_masked_triplets_do_not_reach_the_output_or_the_merge(trained):
    model = copy.deepcopy(trained[1])
    layer = svd_layers(model)[0][1]
    assert not layer.rank_mask.all()
    with torch.no_grad():
        layer.svd_lambda.add_(1.0)  # even if an outside loop moved the masked values, they stay masked
    expected = probe_output(model)
    x = torch.randn(3, layer.in_features)
    kept = layer.rank_mask
    reference = layer.base_layer(x) + layer.scaling * (
        (x @ layer.svd_Q[kept].T) * layer.svd_lambda[kept]) @ layer.svd_P[:, kept].T
    torch.testing.assert_close(layer(x), reference)
    peftlab.merge(model)
    torch.testing.assert_close(probe_output(model), expected, atol=1e-5, rtol=1e-5)


def test_importance_is_the_smoothed_sensitivity_times_its_uncertainty():
    model = peftlab.apply(tiny_gpt2(), "adalora", total_steps=10, init_rank=3, target_rank=2, beta1=0.8, beta2=0.7)
    hooks = peftlab.training_hooks(model)
    factors = {f"{name}.{factor}": getattr(layer, factor)
               for name, layer in svd_layers(model) for factor in ("svd_P", "svd_lambda", "svd_Q")}
    assert len({p.shape for p in factors.values()}) > 3  # several shape groups, each updated as one stack
    history = []
    for step in range(2):
        model(**batch_for(model, seed=step)).loss.backward()
        history.append({name: (p.detach().clone(), p.grad.clone()) for name, p in factors.items()})
        hooks.update_importance()
        model.zero_grad()
        with torch.no_grad():
            for p in factors.values():
                p.add_(0.1)
    for name in factors:
        average, uncertainty = torch.zeros(()), torch.zeros(())
        for step in history:
            weight, grad = step[name]
            sensitivity = (weight * grad).abs()
            average = 0.8 * average + 0.2 * sensitivity
            uncertainty = 0.7 * uncertainty + 0.3 * (sensitivity - average).abs()
        torch.testing.assert_close(hooks.average[name], average)
        torch.testing.assert_close(hooks.uncertainty[name], uncertainty)
    name, layer = svd_layers(model)[0]
    score = {f: hooks.average[f"{name}.{f}"] * hooks.uncertainty[f"{name}.{f}"] for f in ("svd_P", "svd_lambda", "svd_Q")}
    torch.testing.assert_close(hooks.triplet_importance()[0],
                               score["svd_lambda"] + score["svd_P"].mean(0) + score["svd_Q"].mean(1))


def test_the_orthogonality_term_decreases_in_training():
    model = peftlab.apply(tiny_llama(), "adalora", total_steps=40, init_rank=4, target_rank=4, orth_reg_weight=0.5)
    hooks = peftlab.training_hooks(model)
    first = hooks.regularization(model).item()
    eye = torch.eye(4)
    name, layer = svd_layers(model)[0]
    by_hand = 0.5 * torch.stack([
        (l.svd_P.T @ l.svd_P - eye).square().sum() + (l.svd_Q @ l.svd_Q.T - eye).square().sum()
        for _, l in svd_layers(model)]).mean()
    assert first == pytest.approx(by_hand.item())
    train(model, 6, lr=5e-2)
    assert hooks.regularization(model).item() < 0.8 * first


def test_the_batched_orthogonality_term_has_the_per_layer_value_and_gradients():
    model = peftlab.apply(tiny_llama(), "adalora", total_steps=10, init_rank=4, target_rank=2, orth_reg_weight=0.3)
    layers = [layer for _, layer in svd_layers(model)]
    assert len({layer.svd_P.shape for layer in layers}) > 1  # several shapes, so several stacks
    factors = [p for layer in layers for p in (layer.svd_P, layer.svd_Q)]
    batched = peftlab.training_hooks(model).regularization(model)
    batched_grads = torch.autograd.grad(batched, factors)
    per_layer = 0.3 * torch.stack([layer.orthogonality() for layer in layers]).mean()
    torch.testing.assert_close(batched, per_layer)
    for got, expected in zip(batched_grads, torch.autograd.grad(per_layer, factors)):
        torch.testing.assert_close(got, expected)


def test_the_written_out_orthogonality_gradient_passes_gradcheck():
    generator = torch.Generator().manual_seed(0)
    P = [torch.randn(5, 3, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2)]
    Q = [torch.randn(3, 7, dtype=torch.float64, generator=generator, requires_grad=True) for _ in range(2)]
    assert torch.autograd.gradcheck(StackedOrthogonality.apply, (*P, *Q))


def test_importance_state_saved_is_a_snapshot_not_the_live_averages():
    model = peftlab.apply(tiny_gpt2(), "adalora", total_steps=10, init_rank=3, target_rank=2)
    hooks = peftlab.training_hooks(model)
    model(**batch_for(model, seed=0)).loss.backward()
    hooks.update_importance()
    saved = {name: tensor.clone() for name, tensor in hooks.state_dict().items()}
    snapshot = hooks.state_dict()
    model(**batch_for(model, seed=1)).loss.backward()
    hooks.update_importance()  # updates the averages in place
    for name, tensor in snapshot.items():
        assert torch.equal(tensor, saved[name])


def test_saved_adapter_restores_the_rank_masks(trained, tmp_path):
    base, model, _, _ = trained
    peftlab.save_adapter(model, tmp_path / "adapter")
    loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert rank_pattern(loaded) == rank_pattern(model)
    assert peftlab.parameter_counts(loaded) == peftlab.parameter_counts(model)
    torch.testing.assert_close(probe_output(loaded), probe_output(model), atol=0, rtol=0)


def test_the_final_per_layer_ranks_are_public_and_written_beside_the_adapter(trained, tmp_path):
    base, model, _, patterns = trained
    ranks = peftlab.rank_pattern(model)
    assert ranks == patterns[-1] and len(set(ranks.values())) > 1
    assert set(ranks) == {name for name, _ in svd_layers(model)} and all(name.endswith("_proj") for name in ranks)
    assert peftlab.rank_pattern(tiny_llama()) == {}
    peftlab.save_adapter(model, tmp_path / "adapter")
    document = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert document["report"] == {"rank_pattern": ranks, "total_rank": sum(ranks.values())}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the report is for readers: loading ignores it without a warning
        loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    assert peftlab.rank_pattern(loaded) == ranks


def test_importance_state_resumes_exactly(trained):
    model = trained[1]
    resumed_model = copy.deepcopy(model)
    del resumed_model.__dict__["peftlab_training_hooks"]  # a fresh process: hooks rebuilt, then loaded
    resumed = peftlab.training_hooks(resumed_model)
    resumed.load_state_dict(peftlab.training_hooks(model).state_dict())
    for name, tensor in peftlab.training_hooks(model).state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor)


def test_importance_state_from_another_model_is_refused_by_name(trained):
    state = peftlab.training_hooks(trained[1]).state_dict()
    other = peftlab.apply(tiny_llama(), "adalora", total_steps=10, init_rank=4, target_rank=2, target_modules=("q_proj",))
    hooks = peftlab.training_hooks(other)
    other(**batch_for(other, seed=0)).loss.backward()
    hooks.update_importance()
    before = hooks.state_dict()
    with pytest.raises(ValueError, match="no AdaLoRA factor"):
        hooks.load_state_dict(state)
    assert all(torch.equal(tensor, before[name]) for name, tensor in hooks.state_dict().items())  # nothing half-loaded


def test_config_needs_the_run_length():
    with pytest.raises(peftlab.ConfigError, match="total_steps"):
        peftlab.make_config("adalora")

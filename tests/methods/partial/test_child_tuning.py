"""Child-Tuning F and D against hand-written references, checked entry by entry."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

import peftlab
from conftest import FAMILY_BUILDERS, batch_for, tiny_bert, tiny_llama
from peftlab.core.probe import probe_output
from peftlab.methods.partial.child_tuning import ChildTuningError, parent_parameters


def batches(model, count=3):
    return [batch_for(model, seed=seed) for seed in range(count)]


def snapshot(parameters):
    return {name: p.detach().clone() for name, p in parameters.items()}


def train_steps(model, optimizer, steps, check):
    hooks = peftlab.training_hooks(model)
    for step, batch in enumerate(batches(model, steps)):
        before = snapshot(hooks.parameters)
        model(**batch).loss.backward()
        hooks.before_optimizer_step(model, step)
        optimizer.step()
        hooks.after_optimizer_step(model, step)
        optimizer.zero_grad()
        check(before, hooks)


def test_f_scales_kept_gradients_by_one_over_p_and_updates_only_the_mask():
    model = peftlab.apply(tiny_llama(), "child_tuning", variant="F", reserve_p=0.4, seed=3)
    hooks = peftlab.training_hooks(model)
    batch = batch_for(model)
    model(**batch).loss.backward()
    grads = {n: p.grad.clone() for n, p in hooks.parameters.items()}
    before = snapshot(hooks.parameters)
    lr = 0.1
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    hooks.before_optimizer_step(model, 0)
    optimizer.step()
    hooks.after_optimizer_step(model, 0)
    reference_generator = torch.Generator().manual_seed(3)
    for name, parameter in hooks.parameters.items():
        mask = torch.rand(parameter.shape, generator=reference_generator) < 0.4
        assert torch.equal(hooks.masks[name], mask)
        expected = before[name] - lr * torch.where(mask, grads[name] / 0.4, torch.zeros_like(grads[name]))
        torch.testing.assert_close(parameter.detach(), expected, rtol=1e-6, atol=1e-7)
        assert torch.equal(parameter.detach()[~mask], before[name][~mask])


@pytest.mark.parametrize("architecture", ["bert", "gpt2"])
def test_f_with_adamw_changes_only_each_steps_mask(architecture):
    model = peftlab.apply(FAMILY_BUILDERS[architecture](), "child_tuning", variant="F", reserve_p=0.3)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    masks_seen = []

    def check(before, hooks):
        for name, parameter in hooks.parameters.items():
            changed = parameter.detach() != before[name]
            assert not (changed & ~hooks.masks[name]).any(), f"{name} changed outside the step's mask"
        masks_seen.append(torch.cat([m.flatten() for m in hooks.masks.values()]))

    train_steps(model, optimizer, 3, check)
    assert not torch.equal(masks_seen[0], masks_seen[1]), "F draws a fresh mask each step"
    density = torch.stack(masks_seen).float().mean().item()
    assert abs(density - 0.3) < 0.02


def test_f_mask_generator_resumes_exactly():
    model = peftlab.apply(tiny_llama(), "child_tuning", variant="F", seed=7)
    hooks = peftlab.training_hooks(model)
    hooks.before_optimizer_step(model, 0)
    hooks.after_optimizer_step(model, 0)
    state = hooks.state_dict()
    resumed = peftlab.training_hooks(peftlab.apply(tiny_llama(), "child_tuning", variant="F", seed=7))
    resumed.load_state_dict(state)
    hooks.before_optimizer_step(model, 1)
    resumed.before_optimizer_step(model, 1)
    for name in hooks.masks:
        assert torch.equal(hooks.masks[name], resumed.masks[name])


def hand_fisher(model, data, names):
    """Sum over batches of squared gradients, computed without the method."""
    reference = copy.deepcopy(model)
    parameters = dict(reference.named_parameters())
    fisher = {name: torch.zeros_like(parameters[name]) for name in names}
    for batch in data:
        reference.zero_grad()
        reference(**batch).loss.backward()
        for name in names:
            fisher[name] += parameters[name].grad ** 2
    return fisher


def test_d_picks_the_top_p_entries_by_fisher_information():
    model = peftlab.apply(tiny_bert().eval(), "child_tuning", variant="D", reserve_p=0.2)  # eval: no dropout noise
    hooks = peftlab.training_hooks(model)
    data = batches(model)
    fisher = hand_fisher(model, data, list(hooks.parameters))
    hooks.prepare(model, data)
    scores = torch.cat([f.flatten() for f in fisher.values()])
    k = round(0.2 * scores.numel())
    threshold = scores.sort(descending=True).values[k - 1]
    chosen = torch.cat([m.flatten() for m in hooks.masks.values()])
    assert int(chosen.sum()) == k == peftlab.parameter_counts(model)[0]
    assert (scores[chosen] >= threshold).all() and (scores[~chosen] <= threshold).all()
    assert all(p.grad is None for p in model.parameters()), "prepare leaves no gradients behind"


@pytest.mark.parametrize("architecture", ["llama", "t5"])
def test_d_with_adamw_and_weight_decay_changes_only_the_child_network(architecture):
    model = peftlab.apply(FAMILY_BUILDERS[architecture](), "child_tuning", variant="D", reserve_p=0.1)
    peftlab.training_hooks(model).prepare(model, batches(model, 2))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    changed_ever = {}

    def check(before, hooks):
        for name, parameter in hooks.parameters.items():
            changed = parameter.detach() != before[name]
            assert not (changed & ~hooks.masks[name]).any(), f"{name} changed outside the child network"
            changed_ever[name] = changed_ever.get(name, torch.zeros_like(changed)) | changed

    train_steps(model, optimizer, 3, check)
    hooks = peftlab.training_hooks(model)
    child = torch.cat([m.flatten() for m in hooks.masks.values()])
    moved = torch.cat([changed_ever[name].flatten() for name in hooks.masks])
    assert moved[child].float().mean() > 0.9, "the child network itself trains"


def test_d_refuses_to_step_before_prepare():
    model = peftlab.apply(tiny_llama(), "child_tuning", variant="D")
    with pytest.raises(ChildTuningError, match="prepare"):
        peftlab.training_hooks(model).before_optimizer_step(model, 0)


def test_d_saves_only_the_child_network_and_loads_it_back(tmp_path):
    base = tiny_llama()
    model = peftlab.apply(copy.deepcopy(base), "child_tuning", variant="D", reserve_p=0.1)
    hooks = peftlab.training_hooks(model)
    hooks.prepare(model, batches(model, 2))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    train_steps(model, optimizer, 2, lambda before, hooks: None)
    peftlab.save_adapter(model, tmp_path / "adapter")

    stored = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    values = sum(t.numel() for n, t in stored.items() if n.endswith(".child_values"))
    assert values == peftlab.parameter_counts(model)[0]
    assert set(stored) == {n + s for n in hooks.parameters for s in (".child_mask", ".child_values")}

    loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    torch.testing.assert_close(probe_output(loaded), probe_output(model), atol=0, rtol=0)
    for name, parameter in loaded.named_parameters():
        assert torch.equal(parameter, dict(model.named_parameters())[name]), name
    loaded_hooks = peftlab.training_hooks(loaded)
    for name, mask in hooks.masks.items():
        assert torch.equal(loaded_hooks.masks[name], mask), "the child network is restored for further training"


def test_d_save_refuses_weights_trained_without_the_hooks(tmp_path):
    model = peftlab.apply(tiny_llama(), "child_tuning", variant="D")
    peftlab.training_hooks(model).prepare(model, batches(model, 1))
    model(**batch_for(model)).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    with pytest.raises(ChildTuningError, match="without the method's hooks"):
        peftlab.save_adapter(model, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_modules_to_save_train_in_full_beside_the_child_network():
    model = peftlab.apply(tiny_bert(), "child_tuning", variant="F", reserve_p=0.5, modules_to_save=("classifier",))
    parents = parent_parameters(model, peftlab.peft_state(model).config)
    parent_numel = sum(p.numel() for p in parents.values())
    classifier = sum(p.numel() for p in tiny_bert().classifier.parameters())  # its trained copy
    assert peftlab.parameter_counts(model)[0] == round(0.5 * parent_numel) + classifier
    assert "classifier.weight" not in parents

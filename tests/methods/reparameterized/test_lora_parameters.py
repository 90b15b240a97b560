"""LoRA's ``target_parameters`` on tiny mixture-of-experts models (experts as 3-D parameters): the per-expert
formula by hand, peft's ParamWrapper (same factors -> same outputs and gradients), merge, save/load, peft format,
and the errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import peftlab
from methods.reparameterized.moe_models import MOE_BUILDERS, tiny_gpt_oss, tiny_mixtral, tiny_qwen3_moe
from peftlab.core.probe import probe_inputs, probe_output
from peftlab.interop import export_peft, import_peft
from peftlab.interop.peft_methods._lora_expert_factors import expert_factors_to_peft
from peftlab.methods.reparameterized._lora_parameters import LoRAParameter

EXPERTS = ("experts.gate_up_proj", "experts.down_proj")
OPTIONS = {"rank": 2, "alpha": 6.0, "target_modules": ("q_proj",), "target_parameters": EXPERTS}


def perturbed(model, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return model


def wrappers(model) -> dict[str, LoRAParameter]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRAParameter)}


@pytest.mark.parametrize("builder", [tiny_mixtral, tiny_gpt_oss])
def test_each_expert_gets_its_own_update(builder):
    base = builder().eval()
    model = perturbed(peftlab.apply(copy.deepcopy(base), "lora", **OPTIONS))
    outer = model.model.layers[0].mlp.experts
    inner = outer.base_layer
    assert (outer.parameter_name, inner.parameter_name) == ("down_proj", "gate_up_proj")
    reference = copy.deepcopy(base.model.layers[0].mlp.experts)
    with torch.no_grad():
        for layer in (outer, inner):
            weight = getattr(reference, layer.parameter_name)
            for expert in range(weight.shape[0]):
                delta = 3.0 * layer.lora_B[expert] @ layer.lora_A[expert]  # s = alpha / r = 3
                weight[expert] += delta.T if layer.transposed else delta
    hidden = torch.randn(6, 32)
    top_k_index = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2], [1, 3]])
    top_k_weights = torch.rand(6, 2)
    torch.testing.assert_close(outer(hidden, top_k_index, top_k_weights),
                               reference(hidden, top_k_index, top_k_weights))


def test_starts_as_the_base_and_only_the_factors_train():
    base = tiny_mixtral().eval()
    model = peftlab.apply(copy.deepcopy(base), "lora", **OPTIONS)
    torch.testing.assert_close(probe_output(model), probe_output(base), atol=0, rtol=0)
    trained = dict(peftlab.adapter_parameters(model))
    layer = model.model.layers[1].mlp.experts
    assert layer.lora_A.shape == (4, 2, 24) and layer.lora_B.shape == (4, 32, 2)  # down_proj: (E, 32, 24)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trained)
    assert sum(p.numel() for p in trained.values()) == 2 * (4 * 2 * (24 + 32) + 4 * 2 * (32 + 48) + 2 * (32 + 32))


@pytest.mark.parametrize("arch", sorted(MOE_BUILDERS))
def test_same_factors_give_peft_outputs_and_gradients(arch):
    peft = pytest.importorskip("peft")
    base = MOE_BUILDERS[arch]().eval()
    ours = perturbed(peftlab.apply(copy.deepcopy(base), "lora", **OPTIONS))
    config = peft.LoraConfig(r=2, lora_alpha=6.0, target_modules=["q_proj"], target_parameters=list(EXPERTS))
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    named = dict(theirs.named_parameters())
    with torch.no_grad():
        for module, layer in wrappers(ours).items():
            for key, value in expert_factors_to_peft(layer.lora_A, layer.lora_B).items():
                kind, _, weight = key.partition(".")
                named[f"base_model.model.{module}.{kind}.default.{weight}"].copy_(value)
        for name, parameter in peftlab.adapter_parameters(ours):
            if parameter.dim() == 2:
                module, _, kind = name.rpartition(".")
                named[f"base_model.model.{module}.{kind}.default.weight"].copy_(parameter)
    inputs = probe_inputs(base)
    labels = inputs["input_ids"]
    loss_ours = ours(**inputs, labels=labels).loss
    loss_theirs = theirs(**inputs, labels=labels).loss
    torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-5, rtol=1e-5)
    loss_ours.backward()
    loss_theirs.backward()
    for module, layer in wrappers(ours).items():
        grads = expert_factors_to_peft(layer.lora_A.grad, layer.lora_B.grad)
        for key, grad in grads.items():
            kind, _, weight = key.partition(".")
            expected = named[f"base_model.model.{module}.{kind}.default.{weight}"].grad
            torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-4)


def test_merge_and_unmerge_are_exact_to_rounding():
    model = perturbed(peftlab.apply(tiny_mixtral().eval(), "lora", **OPTIONS))
    weights = {name: layer.weight.detach().clone() for name, layer in wrappers(model).items()}
    before = probe_output(model)
    report = peftlab.merge(model)
    assert report.max_abs_difference < 1e-5
    peftlab.unmerge(model)
    for name, layer in wrappers(model).items():
        torch.testing.assert_close(layer.weight, weights[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(probe_output(model), before, atol=1e-6, rtol=0)
    plain = peftlab.unload(model)
    assert not wrappers(plain)
    torch.testing.assert_close(probe_output(plain), before, atol=1e-5, rtol=0)


def test_save_and_load_round_trip(tmp_path):
    model = perturbed(peftlab.apply(tiny_mixtral().eval(), "lora", **OPTIONS))
    peftlab.save_adapter(model, tmp_path / "adapter")
    loaded = peftlab.load_adapter(tiny_mixtral().eval(), tmp_path / "adapter")
    assert peftlab.peft_state(loaded).config.target_parameters == EXPERTS
    torch.testing.assert_close(probe_output(loaded), probe_output(model), atol=0, rtol=0)


def test_peft_format_both_ways(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_mixtral().eval()
    ours = perturbed(peftlab.apply(copy.deepcopy(base), "lora", **OPTIONS))
    export_peft(ours, tmp_path / "peft")
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert document["target_parameters"] == list(EXPERTS) and document["target_modules"] == sorted(
        f"model.layers.{i}.self_attn.q_proj" for i in range(2))
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    inputs = probe_inputs(base)
    with torch.no_grad():
        torch.testing.assert_close(theirs(**inputs).logits, probe_output(ours, inputs), atol=1e-5, rtol=0)
    theirs.save_pretrained(tmp_path / "again")
    import_peft(tmp_path / "again", tmp_path / "ours")
    back = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "ours")
    for (name, mine), (_, loaded) in zip(peftlab.adapter_parameters(ours), peftlab.adapter_parameters(back)):
        assert torch.equal(mine, loaded), name


def test_a_peft_adapter_of_expert_parameters_alone_loads(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_gpt_oss().eval()
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=[], target_parameters=["down_proj"],
                             init_lora_weights=False)
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    theirs.save_pretrained(tmp_path / "peft")
    ours = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    assert peftlab.peft_state(ours).config.target_modules == ()
    inputs = probe_inputs(base)
    with torch.no_grad():
        torch.testing.assert_close(probe_output(ours, inputs), theirs(**inputs).logits, atol=1e-5, rtol=0)


def test_two_adapters_on_one_parameter_compose_and_switch():
    base = tiny_mixtral().eval()
    model = perturbed(peftlab.apply(copy.deepcopy(base), "lora", **OPTIONS, adapter_name="a"), seed=1)
    alone = probe_output(model)
    peftlab.apply(model, "lora", **OPTIONS, adapter_name="b")
    perturbed(model, seed=2)  # the active adapter, still "a"
    peftlab.set_adapter(model, "b")
    with peftlab.disable_adapters(model):
        torch.testing.assert_close(probe_output(model), probe_output(base), atol=0, rtol=0)
    with pytest.raises(peftlab.MixedBatchError, match="LoRAParameter"):
        model(**probe_inputs(base), adapter_names=["a", "b"])
    assert not torch.allclose(probe_output(model), alone)


@pytest.mark.parametrize("options, message", [
    ({"target_parameters": ("experts.up_proj",)}, "matches no parameter"),
    ({"target_parameters": ("input_layernorm.weight",)}, "2-D .* or a 3-D"),
    ({"target_parameters": EXPERTS, "dropout": 0.1}, "dropout"),
    ({"target_parameters": EXPERTS, "init": "pissa"}, "init"),
    ({"target_modules": ()}, "target_parameters"),
])
def test_clear_errors(options, message):
    model = tiny_mixtral()
    before = {name: p.clone() for name, p in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        peftlab.apply(model, "lora", **options)
    assert not wrappers(model)
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())


def test_variants_that_cannot_adapt_parameters_say_so():
    with pytest.raises(peftlab.ConfigError, match="target_parameters"):
        peftlab.make_config("dora", target_parameters=EXPERTS)
    with pytest.raises(peftlab.ConfigError, match="target_parameters"):
        peftlab.make_config("lora_fa", target_parameters=EXPERTS)


def test_training_moves_only_the_factors_and_lowers_the_loss():
    model = peftlab.apply(tiny_qwen3_moe().train(), "lora", **OPTIONS)
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for _, p in peftlab.adapter_parameters(model)], lr=1e-2)
    inputs = probe_inputs(model)
    losses = []
    for _ in range(4):
        loss = model(**inputs, labels=inputs["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)
    assert all(layer.lora_B.abs().sum() > 0 for layer in wrappers(model).values())


def test_lora_plus_gives_the_experts_b_its_learning_rate():
    model = peftlab.apply(tiny_mixtral(), "lora_plus", **OPTIONS, lr_ratio=4.0)
    groups = {group["name"]: group for group in peftlab.parameter_groups(model, 1e-3)}
    b_matrices = {id(layer.lora_B) for layer in wrappers(model).values()}
    assert b_matrices <= {id(p) for p in groups["lora_B"]["params"]} and groups["lora_B"]["lr"] == 4e-3


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing_gives_the_same_gradients(reentrant):
    model = perturbed(peftlab.apply(tiny_mixtral().train(), "lora", **OPTIONS))
    inputs = probe_inputs(model)
    gradients = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
        model(**inputs, labels=inputs["input_ids"], use_cache=False).loss.backward()
        gradients.append({name: p.grad.clone() for name, p in peftlab.adapter_parameters(model)})
        model.zero_grad()
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-7, rtol=1e-6)

"""UniPELT = LoRA + adapter + prefix-tuning, each behind a learned gate in (0, 1)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import peftlab
from conftest import FAMILY_BUILDERS, batch_for, tiny_bert
from contract_cases.unipelt import OPTIONS
from methods.hybrid.support import losses_while_training, perturb
from peftlab.core.probe import probe_output
from peftlab.methods.hybrid.unipelt import Gate, GatedLayer


def gates(model: torch.nn.Module) -> list[Gate]:
    return [module for module in model.modules() if isinstance(module, Gate)]


def without_wrappers(name: str) -> str:
    return name.replace(".base_layer", "")


@pytest.mark.parametrize("architecture", sorted(FAMILY_BUILDERS))
def test_with_gates_open_unipelt_equals_lora_adapter_and_prefix_tuning_injected_together(architecture):
    base = FAMILY_BUILDERS[architecture]().eval()
    hybrid = peftlab.apply(copy.deepcopy(base), "unipelt", **OPTIONS)
    perturb(hybrid)
    config = peftlab.peft_state(hybrid).config
    parts = copy.deepcopy(base)
    for part in (config.lora, config.adapter, config.prefix):
        peftlab.get_method(part.method).inject(parts, part)
    gate_parameters = {id(p) for gate in gates(hybrid) for p in gate.parameters()}
    weights = {without_wrappers(n): p for n, p in hybrid.named_parameters() if id(p) not in gate_parameters}
    parts_weights = {without_wrappers(n): p for n, p in parts.named_parameters()}
    assert weights.keys() == parts_weights.keys()
    with torch.no_grad():
        for name, parameter in parts_weights.items():
            parameter.copy_(weights[name])
    assert not torch.allclose(probe_output(hybrid), probe_output(parts), atol=1e-3), "gates at ~0.5 must matter"
    with torch.no_grad():
        for gate in gates(hybrid):  # sigmoid(100) is exactly 1.0 in float32
            gate.linear.weight.zero_()
            gate.linear.bias.fill_(100.0)
    torch.testing.assert_close(probe_output(hybrid), probe_output(parts), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("architecture", sorted(FAMILY_BUILDERS))
def test_every_part_has_gates_and_every_gate_is_in_zero_one_and_gets_a_gradient(architecture):
    model = peftlab.apply(FAMILY_BUILDERS[architecture](), "unipelt", **OPTIONS)
    perturb(model)
    with torch.no_grad():  # large gate weights: the values must still stay strictly inside (0, 1)
        for gate in gates(model):
            gate.linear.weight.mul_(20.0)
    values: list[torch.Tensor] = []
    handles = [gate.register_forward_hook(lambda _m, _i, out: values.append(out)) for gate in gates(model)]
    model.train()
    model(**batch_for(model)).loss.backward()
    for handle in handles:
        handle.remove()
    assert len(values) == len(gates(model)), "every gate runs once per forward pass"
    if architecture == "bert":  # 2 layers: LoRA on q and v, an adapter after each feed-forward, 2 prefixes
        assert len(values) == 2 * 2 + 2 + 2
    for value in values:
        assert value.shape == (2, 1, 1)
        assert ((value > 0) & (value < 1)).all()
    for gate in gates(model):
        assert gate.linear.weight.grad.abs().sum() > 0 and gate.linear.bias.grad.abs().sum() > 0


def test_gated_lora_layer_matches_a_hand_computation():
    model = peftlab.apply(tiny_bert(), "unipelt", **OPTIONS)
    perturb(model)
    layer = model.bert.encoder.layer[0].attention.self.query.base_layer  # under the prefix gate's input tap
    assert isinstance(layer, GatedLayer)
    lora, gate = layer.base_layer, layer.gate.linear
    x = torch.randn(2, 5, 32)
    g = torch.sigmoid(x @ gate.weight.T + gate.bias).mean(dim=1, keepdim=True)  # (2, 1, 1)
    expected = lora.base_layer(x) + g * (8.0 / 4) * (x @ lora.lora_A.T) @ lora.lora_B.T
    torch.testing.assert_close(layer(x), expected)


def test_prefix_gate_scales_the_prefix_keys_and_values_by_the_attention_inputs_gate():
    model = peftlab.apply(tiny_bert(), "unipelt", **OPTIONS)
    perturb(model)
    prefix_gates = model.unipelt_prefix_gates
    x = torch.randn(2, 5, 32)
    prefix_gates.gates[1].block_input = x
    keys, values = prefix_gates.key_values(1, query=torch.empty(0))
    plain_keys, plain_values = model.prefix_encoder.key_values(1, query=torch.empty(0))
    linear = prefix_gates.gates[1].linear
    g = torch.sigmoid(x @ linear.weight.T + linear.bias).mean(dim=1)[:, :, None, None]  # (2, 1, 1, 1)
    torch.testing.assert_close(keys, plain_keys * g)
    torch.testing.assert_close(values, plain_values * g)
    assert prefix_gates.gates[1].block_input is None, "the gate must drop its reference to the activations"


def test_training_lowers_the_loss_and_unload_restores_the_base():
    base = FAMILY_BUILDERS["llama"]().eval()
    model = peftlab.apply(copy.deepcopy(base), "unipelt", **OPTIONS)
    losses = losses_while_training(model)
    assert losses[-1] < losses[0] - 0.05
    peftlab.unload(model, merge_first=False)
    torch.testing.assert_close(probe_output(model), probe_output(base), atol=0, rtol=0)


def test_defaults_follow_the_paper_and_the_nested_config_round_trips_through_json():
    config = peftlab.make_config("unipelt")
    assert (config.adapter.bottleneck_size, config.adapter.placement) == (48, "pfeiffer")
    assert (config.prefix.num_virtual_tokens, config.lora.rank) == (10, 8)
    partial = peftlab.make_config("unipelt", adapter={"bottleneck_size": 16})
    assert (partial.adapter.bottleneck_size, partial.adapter.placement) == (16, "pfeiffer")  # not adapter's houlsby
    custom = peftlab.make_config("unipelt", **OPTIONS)
    assert type(custom).from_dict(json.loads(custom.to_json())) == custom

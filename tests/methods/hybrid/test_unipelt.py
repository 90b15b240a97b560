"""UniPELT = LoRA + adapter + prefix-tuning, each behind a learned gate in (0, 1): per position by default,
per example (the mean over positions) with gate_pooling="sequence"."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import peftlab
from conftest import FAMILY_BUILDERS, batch_for, tiny_bert, tiny_llama
from contract_cases.unipelt import OPTIONS, P
from methods.hybrid.support import losses_while_training, perturb
from peftlab.core.config import ConfigError
from peftlab.core.probe import probe_output
from peftlab.methods.hybrid.unipelt import Gate, GatedLayer

POOLINGS = ["token", "sequence"]
HEADS, HEAD = 4, 8  # tiny_bert


def gates(model: torch.nn.Module) -> list[Gate]:
    return [module for module in model.modules() if isinstance(module, Gate)]


def without_wrappers(name: str) -> str:
    return name.replace(".base_layer", "")


def unipelt(model: torch.nn.Module, pooling: str = "token", scale: float = 0.2) -> torch.nn.Module:
    model = peftlab.apply(model, "unipelt", **OPTIONS, gate_pooling=pooling).eval()
    perturb(model, scale=scale)
    return model


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("architecture", sorted(FAMILY_BUILDERS))
def test_with_gates_open_unipelt_equals_lora_adapter_and_prefix_tuning_injected_together(architecture, pooling):
    base = FAMILY_BUILDERS[architecture]().eval()
    hybrid = unipelt(copy.deepcopy(base), pooling)
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
    # token gates add the prefix's and the real tokens' shares of each head in two halves: other rounding
    tolerance = 1e-5 if pooling == "token" else 1e-6
    torch.testing.assert_close(probe_output(hybrid), probe_output(parts), atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("architecture", sorted(FAMILY_BUILDERS))
def test_every_part_has_gates_and_every_gate_is_in_zero_one_and_gets_a_gradient(architecture, pooling):
    model = unipelt(FAMILY_BUILDERS[architecture](), pooling)
    values: list[torch.Tensor] = []
    handles = [gate.register_forward_hook(lambda _m, _i, out: values.append(out)) for gate in gates(model)]
    model.train()
    batch = batch_for(model)
    model(**batch).loss.backward()
    for handle in handles:
        handle.remove()
    assert len(values) == len(gates(model)), "every gate runs once per forward pass"
    if architecture == "bert":  # 2 layers: LoRA on q and v, an adapter after each feed-forward, 2 prefixes
        assert len(values) == 2 * 2 + 2 + 2
    lengths = {batch["input_ids"].shape[1], batch["labels"].shape[-1]}  # T5's decoder runs on the labels
    for value in values:
        assert value.shape[0] == 2 and value.shape[2] == 1
        assert value.shape[1] == 1 if pooling == "sequence" else value.shape[1] in lengths
        assert ((value > 0) & (value < 1)).all()
    for gate in gates(model):
        assert gate.linear.weight.grad.abs().sum() > 0 and gate.linear.bias.grad.abs().sum() > 0


@pytest.mark.parametrize("pooling", POOLINGS)
def test_gated_lora_layer_matches_a_hand_computation(pooling):
    model = unipelt(tiny_bert(), pooling)
    layer = model.bert.encoder.layer[0].attention.self.query.base_layer  # under the prefix gate's input tap
    assert isinstance(layer, GatedLayer)
    lora, gate = layer.base_layer, layer.gate.linear
    x = torch.randn(2, 5, 32)
    g = torch.sigmoid(x @ gate.weight.T + gate.bias)  # (2, 5, 1)
    if pooling == "sequence":
        g = g.mean(dim=1, keepdim=True)  # (2, 1, 1)
    expected = lora.base_layer(x) + g * (8.0 / 4) * (x @ lora.lora_A.T) @ lora.lora_B.T
    torch.testing.assert_close(layer(x), expected)


def capture(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Record the hidden states a module receives and what it returns."""
    seen: dict[str, torch.Tensor] = {}

    def record_input(_module, args, kwargs):
        seen["hidden"] = kwargs.get("hidden_states", args[0] if args else None)

    module.register_forward_pre_hook(record_input, with_kwargs=True)
    module.register_forward_hook(lambda m, args, output: seen.update(output=output[0]))
    return seen


def heads(x: torch.Tensor) -> torch.Tensor:  # (B, T, H * D) -> (B, H, T, D)
    return x.view(x.shape[0], x.shape[1], HEADS, HEAD).transpose(1, 2)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_token_gated_prefix_attention_matches_a_hand_written_bert_layer(implementation):
    base = tiny_bert()
    base.set_attn_implementation(implementation)
    model = unipelt(base, scale=0.5)
    attention = model.bert.encoder.layer[0].attention.self
    seen = capture(attention)
    ids = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
    mask = (ids != 0).long()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        h = seen["hidden"]
        q, k, v = heads(attention.query(h)), heads(attention.key(h)), heads(attention.value(h))
        linear = model.unipelt_prefix_gates.gates[0].linear
        g = torch.sigmoid(h @ linear.weight.T + linear.bias)[:, None]  # (B, 1, T, 1): one gate per query
        prefix_keys, prefix_values = model.prefix_encoder.key_values(0, query=torch.empty(0))  # (1, H, P, D)
        scale = 1 / math.sqrt(HEAD)
        padding = torch.where(mask.bool(), 0.0, float("-inf"))[:, None, None, :]
        logits = torch.cat([g * (q @ prefix_keys.transpose(-1, -2)) * scale,
                            q @ k.transpose(-1, -2) * scale + padding], dim=-1)
        weights = torch.softmax(logits, dim=-1)
        out = g * (weights[..., :P] @ prefix_values) + weights[..., P:] @ v  # (B, H, T, D)
        expected = out.transpose(1, 2).reshape(2, ids.shape[1], HEADS * HEAD)
    assert g.std() > 0.05, "the gates must differ between positions for the check to mean anything"
    torch.testing.assert_close(seen["output"], expected, atol=1e-5, rtol=1e-5)


def test_sequence_prefix_gate_scales_the_prefix_keys_and_values_by_the_attention_inputs_mean_gate():
    model = unipelt(tiny_bert(), "sequence")
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


@pytest.mark.parametrize("pooling", POOLINGS)
def test_token_gates_keep_a_decoder_causal_and_sequence_gates_do_not(pooling):
    model = unipelt(tiny_llama(), pooling)
    ids = batch_for(model)["input_ids"]
    with torch.no_grad():
        prefix_logits = model(input_ids=ids[:, :6]).logits
        full_logits = model(input_ids=ids).logits[:, :6]
    if pooling == "token":
        torch.testing.assert_close(full_logits, prefix_logits, atol=1e-5, rtol=1e-5)
    else:  # the mean gate of the first six positions also sees the four after them
        assert not torch.allclose(full_logits, prefix_logits, atol=1e-3)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_training_lowers_the_loss_and_unload_restores_the_base(pooling):
    base = FAMILY_BUILDERS["llama"]().eval()
    model = peftlab.apply(copy.deepcopy(base), "unipelt", **OPTIONS, gate_pooling=pooling)
    losses = losses_while_training(model)
    assert losses[-1] < losses[0] - 0.05
    peftlab.unload(model, merge_first=False)
    assert all(layer.self_attn.config is model.config for layer in model.model.layers)
    assert not any("unipelt" in key for layer in model.model.layers for key in vars(layer.self_attn))
    torch.testing.assert_close(probe_output(model), probe_output(base), atol=0, rtol=0)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_save_and_load_keep_the_pooling_and_the_outputs(pooling, tmp_path):
    model = unipelt(tiny_llama(), pooling)
    peftlab.save_adapter(model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["gate_pooling"] == pooling
    loaded = peftlab.load_adapter(tiny_llama(), tmp_path / "adapter")
    assert peftlab.peft_state(loaded).config.gate_pooling == pooling
    torch.testing.assert_close(probe_output(loaded), probe_output(model), atol=0, rtol=0)


def test_defaults_follow_the_paper_and_the_nested_config_round_trips_through_json():
    config = peftlab.make_config("unipelt")
    assert (config.adapter.bottleneck_size, config.adapter.placement) == (48, "pfeiffer")
    assert (config.prefix.num_virtual_tokens, config.lora.rank) == (10, 8)
    assert config.gate_pooling == "token"
    partial = peftlab.make_config("unipelt", adapter={"bottleneck_size": 16})
    assert (partial.adapter.bottleneck_size, partial.adapter.placement) == (16, "pfeiffer")  # not adapter's houlsby
    for pooling in POOLINGS:
        custom = peftlab.make_config("unipelt", **OPTIONS, gate_pooling=pooling)
        assert type(custom).from_dict(json.loads(custom.to_json())) == custom


def test_an_unknown_pooling_is_a_config_error():
    with pytest.raises(ConfigError, match="gate_pooling"):
        peftlab.make_config("unipelt", gate_pooling="max")

"""ProPETL: one shared prototype, per-layer binary masks learned through scores (straight-through)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import peftlab
from conftest import FAMILY_BUILDERS, batch_for, tiny_bert, tiny_llama
from methods.hybrid.support import losses_while_training, perturb
from peftlab.core.probe import probe_output
from peftlab.methods.unified.propetl import masked_modules, pack_bits, unpack_bits
from peftlab.methods.unified._propetl_layers import MaskedAdapter, MaskedLoRA, binary_mask

PROTOTYPE_OPTIONS = {
    "adapter": {"prototype": "adapter", "bottleneck_size": 8},
    "lora": {"prototype": "lora", "rank": 4, "alpha": 8.0},
    "prefix": {"prototype": "prefix", "num_virtual_tokens": 3},
}
SHARED_TENSOR = {"adapter": "down.weight", "lora": "lora_A", "prefix": "prefix"}


def reference_mask(scores: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """The top ``keep_ratio`` share of |scores| by a threshold on the sorted magnitudes."""
    kept = scores.numel() - int((1 - keep_ratio) * scores.numel())
    threshold = scores.abs().flatten().sort(descending=True).values[kept - 1]
    return (scores.abs() >= threshold).float()


def test_binary_mask_is_zero_one_in_the_forward_pass_and_straight_through_in_the_backward():
    scores = torch.randn(6, 5, requires_grad=True)
    mask = binary_mask(scores, keep_ratio=0.4)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum().item() == 30 - int(0.6 * 30)
    torch.testing.assert_close(mask, reference_mask(scores.detach(), 0.4), atol=0, rtol=0)
    weight = torch.randn(6, 5)
    (mask * weight).sum().backward()
    torch.testing.assert_close(scores.grad, weight * scores.detach().sign())


@pytest.mark.parametrize("prototype", sorted(PROTOTYPE_OPTIONS))
def test_layers_share_one_prototype_tensor_and_their_effective_weights_differ_by_mask(prototype):
    model = peftlab.apply(tiny_bert(), "propetl", **PROTOTYPE_OPTIONS[prototype])
    perturb(model, scale=0.3)
    layers = [module for _, module in masked_modules(model)]
    name = SHARED_TENSOR[prototype]
    assert len(layers) >= 2
    pointers = {layer.prototype.get_parameter(name).data_ptr() for layer in layers}
    assert len(pointers) == 1, "every layer must read the same prototype storage"
    key = name.replace(".", "_")
    first, second = layers[0], layers[1]
    shared = first.prototype.get_parameter(name)
    for layer in (first, second):
        expected = shared * reference_mask(layer.scores[key].detach(), layer.keep_ratio)
        torch.testing.assert_close(layer.effective(name), expected, atol=0, rtol=0)
    assert not torch.equal(first.effective(name), second.effective(name))
    # the shared tensor is listed (and trained) once
    names = [n for n, p in peftlab.adapter_parameters(model) if p is shared]
    assert len(names) == 1


def test_lora_layer_forward_matches_a_hand_computation_with_hard_masks():
    model = peftlab.apply(tiny_llama(), "propetl", **PROTOTYPE_OPTIONS["lora"])
    perturb(model, scale=0.3)
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, MaskedLoRA)
    x = torch.randn(2, 3, 32)
    a = layer.prototype.lora_A * reference_mask(layer.scores["lora_A"].detach(), 0.5)
    b = layer.prototype.lora_B * reference_mask(layer.scores["lora_B"].detach(), 0.5)
    expected = layer.base_layer(x) + (8.0 / 4) * (x @ a.T) @ b.T
    torch.testing.assert_close(layer(x), expected)


def test_adapter_layer_forward_matches_a_hand_computation_with_hard_masks():
    model = peftlab.apply(tiny_bert().eval(), "propetl", **PROTOTYPE_OPTIONS["adapter"])
    perturb(model, scale=0.3)
    layer = model.bert.encoder.layer[1].output.dense
    assert isinstance(layer, MaskedAdapter)
    x = torch.randn(2, 3, 64)
    proto = layer.prototype
    down = proto.down.weight * reference_mask(layer.scores["down_weight"].detach(), 0.5)
    up = proto.up.weight * reference_mask(layer.scores["up_weight"].detach(), 0.5)
    h = layer.base_layer(x)
    expected = h + F.relu(h @ down.T + proto.down.bias) @ up.T + proto.up.bias
    torch.testing.assert_close(layer(x), expected)


def test_llama_lora_gets_one_prototype_per_shape():
    model = peftlab.apply(tiny_llama(), "propetl", **PROTOTYPE_OPTIONS["lora"])
    assert sorted(model.propetl_prototypes.shared) == ["lora_32x16", "lora_32x32"]  # v_proj (GQA), q_proj


@pytest.mark.parametrize("prototype", sorted(PROTOTYPE_OPTIONS))
def test_scores_and_prototype_receive_gradients(prototype):
    model = peftlab.apply(tiny_llama(), "propetl", **PROTOTYPE_OPTIONS[prototype])
    perturb(model, scale=0.3)
    model(**batch_for(model)).loss.backward()
    for name, parameter in peftlab.adapter_parameters(model):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert all(s.grad.abs().sum() > 0 for _, m in masked_modules(model) for s in m.scores.values())


def test_lora_parameter_count_is_prototype_plus_one_bit_per_mask_entry():
    model = peftlab.apply(tiny_bert(), "propetl", **PROTOTYPE_OPTIONS["lora"])
    # BERT q and v are both 32 x 32: one prototype A (4 x 32) + B (32 x 4); 4 layers mask both
    prototype = 4 * 32 + 32 * 4
    assert peftlab.parameter_counts(model)[0] == prototype + math.ceil(4 * prototype / 32)


@pytest.mark.parametrize("architecture", sorted(FAMILY_BUILDERS))
@pytest.mark.parametrize("prototype", ["lora", "prefix"])  # the adapter prototype goes through tests/test_contract.py
def test_masks_save_packed_and_round_trip(prototype, architecture, tmp_path):
    base = FAMILY_BUILDERS[architecture]().eval()
    model = peftlab.apply(copy.deepcopy(base), "propetl", **PROTOTYPE_OPTIONS[prototype])
    perturb(model, scale=0.3)
    expected = probe_output(model)
    masks = {n: m.masks() for n, m in masked_modules(model)}
    peftlab.save_adapter(model, tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    packed = {k: v for k, v in saved.items() if k.endswith(".mask_bits")}
    assert packed and all(v.dtype == torch.uint8 for v in packed.values())
    assert not any(".scores." in k for k in set(saved) - set(packed)), "real-valued scores must not be saved"
    score_entries = sum(s.numel() for _, m in masked_modules(model) for s in m.scores.values())
    assert sum(v.numel() for v in packed.values()) == sum(
        math.ceil(s.numel() / 8) for _, m in masked_modules(model) for s in m.scores.values()
    ) < score_entries
    loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    torch.testing.assert_close(probe_output(loaded), expected, atol=0, rtol=0)
    for name, module in masked_modules(loaded):
        for key, mask in module.masks().items():
            assert torch.equal(mask, masks[name][key])


def test_prefix_layers_attend_to_the_masked_shared_prefix_and_unload_restores_the_base():
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "propetl", **PROTOTYPE_OPTIONS["prefix"])
    layer = model.propetl_prefixes[1]
    prefix = layer.prototype.prefix * reference_mask(layer.scores["prefix"].detach(), 0.5)  # (3, 2 x (8 + 8))
    keys, values = model.propetl_prefixes.key_values(1, query=torch.empty(0))
    torch.testing.assert_close(keys[0], prefix[:, :16].view(3, 2, 8).transpose(0, 1))
    torch.testing.assert_close(values[0], prefix[:, 16:].view(3, 2, 8).transpose(0, 1))
    assert not torch.allclose(probe_output(model), probe_output(base))
    peftlab.unload(model, merge_first=False)
    torch.testing.assert_close(probe_output(model), probe_output(base), atol=0, rtol=0)
    assert not hasattr(model, "propetl_prefixes") and not hasattr(model, "propetl_prototypes")


def test_pack_bits_round_trips_odd_sizes():
    mask = (torch.rand(3, 7) > 0.5).float()
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == 3
    assert torch.equal(unpack_bits(packed, mask.shape).float(), mask)


@pytest.mark.parametrize("prototype", sorted(PROTOTYPE_OPTIONS))
def test_training_with_faster_scores_lowers_the_loss(prototype):
    model = peftlab.apply(tiny_llama(), "propetl", **PROTOTYPE_OPTIONS[prototype], score_lr_ratio=5.0)
    groups = peftlab.parameter_groups(model, lr=1e-2)
    assert [g["lr"] for g in groups] == [1e-2, 5e-2]
    assert sum(len(g["params"]) for g in groups) == len(list(peftlab.adapter_parameters(model)))
    losses = losses_while_training(model)
    assert losses[-1] < losses[0] - 0.05


def test_bad_keep_ratio_is_a_config_error():
    with pytest.raises(peftlab.ConfigError, match="keep_ratio"):
        peftlab.make_config("propetl", keep_ratio=0.0)


def test_an_option_of_another_prototype_is_an_error_not_ignored():
    with pytest.raises(peftlab.ConfigError, match="'target_modules': only the lora prototype uses it and this one is 'adapter'"):
        peftlab.make_config("propetl", prototype="adapter", target_modules=["feed_forward"])
    with pytest.raises(peftlab.ConfigError, match="'bottleneck_size': only the adapter prototype uses it"):
        peftlab.make_config("propetl", prototype="prefix", bottleneck_size=16)
    assert peftlab.make_config("propetl", prototype="lora", target_modules=["q_proj"]).target_modules == ("q_proj",)

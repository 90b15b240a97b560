"""The adapted model stays a plain ``transformers`` model: weights that ``device_map`` offloaded are refused
with the fix instead of silently adapted into garbage, an adapted model can be offloaded, and unloaded it
saves a checkpoint the plain class loads."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import dispatch_model
from torch import nn
from transformers import LlamaForCausalLM

import peftlab
from conftest import tiny_llama
from peftlab.core.layers import AdapterLayer, OffloadedWeightsError
from peftlab.methods.reparameterized.lora import LoRALinear

IDS = torch.tensor([[5, 6, 7, 8, 9]])
OFFLOAD_LAYER_1 = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                   "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}


def trained_lora(model: nn.Module, **options: object) -> nn.Module:
    peftlab.apply(model, "lora", rank=2, **options)
    torch.manual_seed(3)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.normal_()
    return model


def test_state_dict_names_are_the_parameter_names_as_accelerate_assumes():
    """accelerate's offload looks tensors up by parameter name in ``state_dict()``; renaming keys (e.g. to drop
    ``base_layer`` for ``save_pretrained``) breaks ``dispatch_model`` of an adapted model."""
    adapted = trained_lora(tiny_llama())
    named = {n for n, _ in adapted.named_parameters(remove_duplicate=False)} | {n for n, _ in adapted.named_buffers()}
    assert set(adapted.state_dict()) <= named
    assert "model.layers.0.self_attn.q_proj.base_layer.weight" in adapted.state_dict()


def test_unloaded_without_merging_the_model_saves_the_exact_base_for_the_plain_class(tmp_path):
    base = tiny_llama()
    adapted = trained_lora(copy.deepcopy(base), target_modules=["all_linear"])
    peftlab.unload(adapted, merge_first=False)
    adapted.save_pretrained(tmp_path)
    plain = LlamaForCausalLM.from_pretrained(tmp_path)
    expected = base.state_dict()
    assert plain.state_dict().keys() == expected.keys()
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_layer_offloaded_by_device_map_is_refused_with_the_fix_and_the_model_is_left_alone(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    model = LlamaForCausalLM.from_pretrained(tmp_path / "base", device_map=OFFLOAD_LAYER_1,
                                             offload_folder=str(tmp_path / "offload"))
    assert model.model.layers[1].self_attn.q_proj.weight.is_meta  # how accelerate leaves an offloaded layer
    expected = model(IDS).logits
    with pytest.raises(OffloadedWeightsError) as error:
        peftlab.apply(model, "lora", rank=2)
    message = str(error.value)
    assert "model.layers.1.self_attn.q_proj" in message and "meta device" in message
    assert "without offloading" in message and "offload it afterwards" in message
    assert not [m for m in model.modules() if isinstance(m, AdapterLayer)]
    assert peftlab.peft_state(model) is None
    assert torch.equal(model(IDS).logits, expected)


def test_an_adapter_layer_refuses_a_meta_weight():
    with pytest.raises(OffloadedWeightsError, match="cannot wrap Linear: its weight is on the meta device"):
        LoRALinear(nn.Linear(4, 4, device="meta"), rank=2, scaling=1.0, dropout=0.0)


def test_applying_first_then_offloading_keeps_the_outputs(tmp_path):
    adapted = trained_lora(tiny_llama())
    expected = adapted(IDS).logits
    dispatched = dispatch_model(adapted, device_map=OFFLOAD_LAYER_1, offload_dir=str(tmp_path / "offload"))
    assert dispatched.model.layers[1].self_attn.q_proj.lora_A.is_meta
    torch.testing.assert_close(dispatched(IDS).logits, expected)

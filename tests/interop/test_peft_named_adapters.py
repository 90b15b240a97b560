"""Named adapters in HF peft's multi-adapter layout (issue 32): a folder of several written by peft loads
into peftlab under its names, and peftlab's export of several loads in peft, each adapter giving the same
outputs on both sides. Requires peft (the `interop` extra)."""

from __future__ import annotations

import copy

import pytest
import torch

import peftlab
from conftest import tiny_llama
from peftlab.core.probe import probe_inputs
from peftlab.interop import export_peft, import_peft

peft = pytest.importorskip("peft")


def output(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def perturbed(parameters, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))


def peft_with_two(base):
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    model.add_adapter("b", peft.LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]))
    perturbed([p for n, p in model.named_parameters() if "lora_" in n], seed=3)
    return model.eval()


def test_a_multi_adapter_folder_written_by_peft_loads_under_its_names(tmp_path):
    base = tiny_llama().eval()
    theirs = peft_with_two(base)
    theirs.save_pretrained(tmp_path / "peft")
    assert (tmp_path / "peft" / "b" / "adapter_config.json").is_file()
    ours = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    peftlab.load_adapter(ours, tmp_path / "peft" / "b", adapter_name="b")
    inputs = probe_inputs(base)
    for name in ("default", "b"):
        theirs.set_adapter(name)
        peftlab.set_adapter(ours, name)
        torch.testing.assert_close(output(ours, inputs), output(theirs, inputs), atol=1e-5, rtol=1e-4)
    imported = import_peft(tmp_path / "peft", tmp_path / "ours")
    assert (imported / "adapter_config.json").is_file() and (imported / "b" / "adapter_config.json").is_file()
    again = peftlab.load_adapter(copy.deepcopy(base), imported / "b", adapter_name="b")
    torch.testing.assert_close(output(again, inputs), output(theirs, inputs), atol=1e-5, rtol=1e-4)


def test_an_export_of_several_adapters_loads_in_peft_under_their_names(tmp_path):
    base = tiny_llama().eval()
    ours = peftlab.apply(copy.deepcopy(base), "lora", rank=4)
    peftlab.apply(ours, "lora", adapter_name="b", rank=8, target_modules=["q_proj", "k_proj", "v_proj"])
    for name in ("default", "b"):
        peftlab.set_adapter(ours, name)
        perturbed([p for _, p in peftlab.adapter_parameters(ours)], seed=len(name))
    peftlab.set_adapter(ours, "default")
    exported = export_peft(ours, tmp_path / "export")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), exported)
    theirs.load_adapter(exported / "b", adapter_name="b")
    theirs.eval()
    inputs = probe_inputs(base)
    for name in ("default", "b"):
        theirs.set_adapter(name)
        peftlab.set_adapter(ours, name)
        torch.testing.assert_close(output(ours, inputs), output(theirs, inputs), atol=1e-5, rtol=1e-4)
    assert peftlab.list_adapters(peftlab.load_adapter(copy.deepcopy(base), exported)) == ["default"]

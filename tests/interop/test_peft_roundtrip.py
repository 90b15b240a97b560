"""peftlab -> peft and peft -> peftlab give the same outputs (1e-5), for every shared method on tiny
models of the four architecture families. Requires peft (the `interop` extra)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import peftlab
from conftest import FAMILY_BUILDERS
from interop.peft_cases import CASES
from peftlab.core.probe import probe_inputs, probe_output
from peftlab.interop import export_peft, import_peft, supported_methods

peft = pytest.importorskip("peft")

SHARED = [method for method in supported_methods() if method in peftlab.list_methods()]


def perturb(parameters, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))


def peft_output(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        output = model(**inputs)
    return output.logits.float()


@pytest.mark.parametrize("method", SHARED)
def test_every_shared_method_has_a_case(method):
    assert method in CASES, f"add {method!r} to tests/interop/peft_cases.py"


@pytest.mark.parametrize("method", SHARED)
def test_export_loads_in_peft_with_the_same_outputs(method, architecture, tmp_path):
    options, _ = CASES[method]
    base = FAMILY_BUILDERS[architecture]().eval()
    ours = peftlab.apply(copy.deepcopy(base), method, **options)
    perturb(p for _, p in peftlab.adapter_parameters(ours))
    peftlab.save_adapter(ours, tmp_path / "ours")
    export_peft(tmp_path / "ours", tmp_path / "peft")

    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert "method" not in document and document["peft_type"] and "base_model_name_or_path" in document
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    inputs = probe_inputs(base)
    expected = probe_output(ours, inputs)
    assert not torch.allclose(expected, probe_output(base, inputs)), "the perturbed adapter must change outputs"
    torch.testing.assert_close(peft_output(theirs, inputs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", SHARED)
def test_a_peft_made_adapter_loads_directly_and_after_import(method, architecture, tmp_path):
    _, peft_config = CASES[method]
    base = FAMILY_BUILDERS[architecture]().eval()
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(architecture)).eval()
    perturb(p for p in theirs.parameters() if p.requires_grad)
    theirs.save_pretrained(tmp_path / "peft")
    inputs = probe_inputs(base)
    expected = peft_output(theirs, inputs)

    direct = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    assert peftlab.peft_state(direct).method == method
    torch.testing.assert_close(probe_output(direct, inputs), expected, atol=1e-5, rtol=0)

    import_peft(tmp_path / "peft", tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["method"] == method
    imported = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "ours")
    torch.testing.assert_close(probe_output(imported, inputs), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", [m for m in SHARED if m in ("lora", "ia3")])
def test_export_then_import_round_trips_config_and_weights(method, tmp_path):
    options, _ = CASES[method]
    model = peftlab.apply(FAMILY_BUILDERS["llama"]().eval(), method, **options)
    perturb(p for _, p in peftlab.adapter_parameters(model))
    export_peft(model, tmp_path / "peft")
    back = peftlab.load_adapter(FAMILY_BUILDERS["llama"]().eval(), tmp_path / "peft")
    assert dict(peftlab.adapter_parameters(back)).keys() == dict(peftlab.adapter_parameters(model)).keys()
    for (name, ours), (_, loaded) in zip(peftlab.adapter_parameters(model), peftlab.adapter_parameters(back)):
        assert torch.equal(ours, loaded), name


def test_rslora_from_peft_keeps_its_scaling(tmp_path):
    from interop.peft_cases import lora

    base = FAMILY_BUILDERS["llama"]().eval()
    theirs = peft.get_peft_model(copy.deepcopy(base), lora("llama", use_rslora=True)).eval()
    perturb(p for p in theirs.parameters() if p.requires_grad)
    theirs.save_pretrained(tmp_path / "peft")
    ours = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    inputs = probe_inputs(base)
    torch.testing.assert_close(probe_output(ours, inputs), peft_output(theirs, inputs), atol=1e-5, rtol=0)
    export_peft(ours, tmp_path / "again")
    again = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "again").eval()
    torch.testing.assert_close(peft_output(again, inputs), peft_output(theirs, inputs), atol=1e-5, rtol=0)


def test_a_trained_classifier_travels_as_modules_to_save(tmp_path):
    base = FAMILY_BUILDERS["bert"]().eval()
    ours = peftlab.apply(copy.deepcopy(base), "lora", rank=4, alpha=8.0, modules_to_save=["classifier"])
    perturb(p for _, p in peftlab.adapter_parameters(ours))
    export_peft(ours, tmp_path / "peft")
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert document["modules_to_save"] == ["classifier"] and document["task_type"] == "SEQ_CLS"
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    inputs = probe_inputs(base)
    torch.testing.assert_close(peft_output(theirs, inputs), probe_output(ours, inputs), atol=1e-5, rtol=0)
    back = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    torch.testing.assert_close(probe_output(back, inputs), probe_output(ours, inputs), atol=1e-5, rtol=0)


def test_a_peft_classifier_adapter_imports_its_head(tmp_path):
    base = FAMILY_BUILDERS["bert"]().eval()
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    theirs = peft.get_peft_model(copy.deepcopy(base), config).eval()
    perturb(p for p in theirs.parameters() if p.requires_grad)
    theirs.save_pretrained(tmp_path / "peft")
    ours = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    inputs = probe_inputs(base)
    torch.testing.assert_close(probe_output(ours, inputs), peft_output(theirs, inputs), atol=1e-5, rtol=0)

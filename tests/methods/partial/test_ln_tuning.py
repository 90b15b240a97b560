"""LN tuning selects the normalisation layers' parameters (found by type and shape); it adds no module.
Against HF peft's LN_TUNING: the same norm weights give the same outputs and the same gradients."""

import copy

import pytest
import torch
from torch import nn

import peftlab
from conftest import FAMILY_BUILDERS, batch_for, perturb_both, tiny_bert, tiny_llama, tiny_t5
from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterModule
from peftlab.core.probe import probe_inputs, probe_output
from peftlab.methods.partial.ln_tuning import is_norm


def test_trains_exactly_the_norms_and_adds_no_module():
    model = peftlab.apply(tiny_llama(), "ln_tuning")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.layers.{i}.{norm}.weight" for i in range(2)
                         for norm in ("input_layernorm", "post_attention_layernorm")} | {"model.norm.weight"}
    assert not any(isinstance(m, AdapterModule) for m in model.modules())


def test_norms_are_found_by_shape_not_name():
    model = tiny_t5()
    kinds = {type(m).__name__ for m in model.modules() if is_norm(m)}
    assert kinds == {"T5LayerNorm"}
    assert not is_norm(nn.Linear(4, 4)) and not is_norm(nn.Embedding(4, 4))
    assert not is_norm(nn.LayerNorm(4, elementwise_affine=False))  # nothing to train

    class Renamed(nn.Module):  # an RMSNorm under a name that says nothing
        def __init__(self):
            super().__init__()
            self.weight, self.variance_epsilon = nn.Parameter(torch.ones(4)), 1e-6

    assert is_norm(Renamed())


def test_target_patterns_restrict_the_norms():
    model = peftlab.apply(tiny_t5(), "ln_tuning", target_modules=["encoder\\..*"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("encoder.") for n in trainable)
    assert len(trainable) == 2 * 2 + 1


def test_a_pattern_matching_no_norm_says_so():
    with pytest.raises(UserError, match=r"normalisation layers only, and target 'q_proj' matches none.*model.layers.N.input_layernorm"):
        peftlab.apply(tiny_llama(), "ln_tuning", target_modules=["q_proj"])


def test_a_model_without_norms_is_a_clear_error():
    with pytest.raises(UserError, match="no normalisation layer"):
        peftlab.apply(nn.Sequential(nn.Linear(4, 4)), "ln_tuning")


def _norm_gradients(model: nn.Module, batch: dict, names: list[str], peft_side: bool) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**batch).loss.backward()
    named = dict(model.named_parameters())
    return {name: named[_peft_name(name) if peft_side else name].grad.clone() for name in names}


def _peft_name(name: str) -> str:
    module, _, weight = name.rpartition(".")
    return f"base_model.model.{module}.ln_tuning_layers.default.{weight}"


@pytest.mark.parametrize("arch", sorted(FAMILY_BUILDERS))
def test_same_norm_weights_give_peft_outputs_and_gradients(arch):
    peft = pytest.importorskip("peft")
    base = FAMILY_BUILDERS[arch]().eval()
    ours = peftlab.apply(copy.deepcopy(base), "ln_tuning")
    names = [name for name, _ in peftlab.adapter_parameters(ours)]
    modules = sorted({name.rpartition(".")[0] for name in names})
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LNTuningConfig(target_modules=modules))
    perturb_both(ours, theirs, _peft_name, 0.2)
    assert {n for n, p in theirs.named_parameters() if p.requires_grad} == {_peft_name(n) for n in names}
    inputs = probe_inputs(base)
    with torch.no_grad():
        expected = theirs(**inputs).logits
    torch.testing.assert_close(probe_output(ours, inputs), expected, atol=1e-5, rtol=1e-5)
    batch = batch_for(base)
    got, want = _norm_gradients(ours, batch, names, False), _norm_gradients(theirs, batch, names, True)
    for name in names:
        assert want[name].abs().sum() > 0, name
        torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-4, msg=name)


def test_peft_export_keeps_a_trained_head_apart_from_the_norms(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_bert().eval()
    ours = peftlab.apply(copy.deepcopy(base), "ln_tuning", modules_to_save=["classifier"])
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(ours):
            parameter.add_(0.1)
    peftlab.interop.export_peft(ours, tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    assert "classifier" in theirs.peft_config["default"].modules_to_save
    inputs = probe_inputs(base)
    with torch.no_grad():
        torch.testing.assert_close(theirs(**inputs).logits, probe_output(ours, inputs), atol=1e-5, rtol=0)
    back = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    torch.testing.assert_close(probe_output(back, inputs), probe_output(ours, inputs), atol=1e-5, rtol=0)

"""Trainable tokens against HF peft (alone, and LoRA plus new tokens): the same initial values give the same
outputs and gradients; LoRA plus tokens trains, saves and loads both parts, in peftlab's format and peft's."""

import copy

import pytest
import torch

import peftlab
from conftest import FAMILY_BUILDERS, perturb_both
from methods.partial.test_trainable_tokens import NEW, batch_with_new_tokens, tied_llama, with_new_tokens
from peftlab.core.token_rows import TrainedTokens
from peftlab.interop import export_peft

peft = pytest.importorskip("peft")
BUILDERS = {**FAMILY_BUILDERS, "tied_llama": tied_llama}
LORA_TARGETS = {"bert": ["query", "value"], "t5": ["q", "v"], "llama": ["q_proj", "v_proj"],
                "tied_llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"]}


def peft_name(name: str) -> str:
    module, _, weight = name.rpartition(".")
    if weight == "token_rows":
        return f"base_model.model.{module}.{{}}trainable_tokens_delta.default"
    return f"base_model.model.{module}.{weight}.default.weight"


def pair(arch: str, with_lora: bool):
    base = with_new_tokens(BUILDERS[arch])
    options = {"rank": 4, "alpha": 8.0, "target_modules": LORA_TARGETS[arch]} if with_lora else {}
    ours = peftlab.apply(copy.deepcopy(base), "lora" if with_lora else "trainable_tokens", token_indices=NEW, **options)
    config = (peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[arch], fan_in_fan_out=arch == "gpt2",
                              trainable_token_indices=NEW) if with_lora else peft.TrainableTokensConfig(token_indices=NEW))
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    pairs = perturb_both(ours, theirs, lambda name: peft_name(name).format("token_adapter." if with_lora else ""), 0.3)
    assert {id(p) for p in theirs.parameters() if p.requires_grad} == {id(t) for _, t in pairs}
    return base, ours, theirs, pairs


@pytest.mark.parametrize("with_lora", [False, True], ids=["alone", "with_lora"])
@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_same_rows_give_peft_outputs_and_gradients(arch, with_lora):
    base, ours, theirs, pairs = pair(arch, with_lora)
    batch = batch_with_new_tokens(base)
    ours_out, theirs_out = ours(**batch), theirs(**batch)
    torch.testing.assert_close(ours_out.logits, theirs_out.logits, atol=1e-5, rtol=1e-5)
    ours_out.loss.backward()
    theirs_out.loss.backward()
    for mine, other in pairs:
        assert other.grad.abs().sum() > 0
        torch.testing.assert_close(mine.grad, other.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5"])
def test_lora_plus_tokens_trains_saves_and_loads_both(arch, tmp_path):
    base = with_new_tokens(BUILDERS[arch])
    model = peftlab.apply(copy.deepcopy(base), "lora", rank=4, token_indices=NEW)
    trained = dict(peftlab.adapter_parameters(model))
    assert any(n.endswith("token_rows") for n in trained) and any(n.endswith("lora_B") for n in trained)
    before = {n: p.detach().clone() for n, p in trained.items()}
    optimizer = torch.optim.AdamW(trained.values(), lr=0.05)
    batch = batch_with_new_tokens(base)
    for _ in range(2):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in trained.items()), "both parts train"
    peftlab.save_adapter(model, tmp_path / "ours")
    loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "ours")
    assert peftlab.peft_state(loaded).config.token_indices == tuple(NEW)
    with torch.no_grad():
        expected = model(**batch).logits
        torch.testing.assert_close(loaded(**batch).logits, expected, atol=0, rtol=0)
    export_peft(model, tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    back = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(theirs(**batch).logits, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(back(**batch).logits, expected, atol=1e-5, rtol=0)


def test_a_peft_lora_with_trainable_tokens_loads(tmp_path):
    base, _, theirs, _ = pair("gpt2", with_lora=True)
    theirs.save_pretrained(tmp_path / "peft")
    ours = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    assert peftlab.peft_state(ours).config.token_indices == tuple(NEW)
    assert isinstance(ours.lm_head, TrainedTokens)  # the tied head shares the rows
    batch = batch_with_new_tokens(base)
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, atol=1e-5, rtol=0)


def test_tokens_beside_a_method_peft_cannot_pair_them_with_is_refused_on_export(tmp_path):
    model = peftlab.apply(tiny := FAMILY_BUILDERS["llama"](), "ia3", token_indices=[5])
    assert tiny is model
    with pytest.raises(peftlab.interop.peft_converters.UnsupportedPeftAdapter, match="no trainable_token_indices"):
        export_peft(model, tmp_path / "peft")


def test_two_named_lora_plus_token_adapters_save_and_load_apart(tmp_path):
    base = with_new_tokens(tied_llama)
    model = peftlab.apply(copy.deepcopy(base), "lora", rank=4, token_indices=NEW, adapter_name="default")
    peftlab.apply(model, "lora", rank=4, token_indices=[NEW[0], 7], adapter_name="chat")
    generator = torch.Generator().manual_seed(1)
    for name in ("default", "chat"):
        peftlab.set_adapter(model, name)
        with torch.no_grad():
            for _, parameter in peftlab.adapter_parameters(model):
                parameter.add_(torch.randn(parameter.shape, generator=generator))
    batch = batch_with_new_tokens(base)
    expected = {}
    for name in ("default", "chat"):
        peftlab.set_adapter(model, name)
        with torch.no_grad():
            expected[name] = model(**batch).logits
    assert not torch.allclose(expected["default"], expected["chat"])
    peftlab.save_adapter(model, tmp_path / "both")
    export_peft(model, tmp_path / "peft")
    for folder in ("both", "peft"):
        loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / folder)
        peftlab.load_adapter(loaded, tmp_path / folder / "chat", adapter_name="chat")
        for name in ("default", "chat"):
            peftlab.set_adapter(loaded, name)
            with torch.no_grad():
                torch.testing.assert_close(loaded(**batch).logits, expected[name], atol=1e-6, rtol=0)
    with pytest.raises(peftlab.AdapterFileError, match="token_indices"):  # other rows: other layers
        peftlab.hotswap_adapter(model, tmp_path / "both", adapter_name="chat")

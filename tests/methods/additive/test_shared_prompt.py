"""Prompt tuning's packed batch on decoder-only models (the prompt's rows once per batch) computes what
prepending the prompt to every example computes: logits, loss and the prompt's gradient."""

import copy

import pytest
import torch

import peftlab
from conftest import tiny_gpt2, tiny_llama
from peftlab.core.checkpointing import enable_activation_checkpointing
from peftlab.methods.additive import _shared_prompt as shared_prompt
from peftlab.methods.additive.prompt_tuning import PROMPT_NAME
from peftlab.train.speedups.compile import compile_blocks
from peftlab.train.speedups.losses import lm_loss

P = 4


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("attn_pdrop", "resid_pdrop", "embd_pdrop"):
        if hasattr(model.config, name):
            setattr(model.config, name, 0.0)
    return model


BUILD = {"llama": tiny_llama, "gpt2": lambda: no_dropout(tiny_gpt2())}


def pair(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same adapted model twice: the prompt packed once per batch, and prepended to every example."""
    packed = peftlab.apply(BUILD[family](), "prompt_tuning", num_virtual_tokens=P, init="random")
    prepended = peftlab.apply(BUILD[family](), "prompt_tuning", num_virtual_tokens=P, init="random",
                              shared_prompt=False)
    prepended.load_state_dict(packed.state_dict())
    return packed.train(), prepended.train()


def left_padded_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 96, (3, 9), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[2, :1] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.fixture
def packs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many forwards ran packed (the batch size of each)."""
    calls: list[int] = []
    original = shared_prompt.SharedPrompt.pack

    def pack(self, prompt, embeds, kwargs):
        calls.append(embeds.shape[0])
        return original(self, prompt, embeds, kwargs)

    monkeypatch.setattr(shared_prompt.SharedPrompt, "pack", pack)
    return calls


def prompt_grad(model: torch.nn.Module) -> torch.Tensor:
    return getattr(model, PROMPT_NAME).prompt.grad


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_packed_batch_equals_the_prompt_prepended_to_every_example(family, packs):
    packed, prepended = pair(family)
    batch = left_padded_batch()
    got, want = packed(**batch), prepended(**batch)
    got.loss.backward()
    want.loss.backward()
    assert packs == [3], "the training forward ran packed"
    assert got.logits.shape == want.logits.shape == (3, 9, 96)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, want.loss)
    assert prompt_grad(prepended).abs().sum() > 0
    torch.testing.assert_close(prompt_grad(packed), prompt_grad(prepended), rtol=1e-4, atol=1e-6)


def test_the_first_token_is_still_predicted_from_the_last_prompt_position(packs):
    packed, prepended = pair("llama")
    batch = left_padded_batch()
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    batch["labels"] = torch.full_like(batch["input_ids"], -100)
    batch["labels"][:, 0] = batch["input_ids"][:, 0]  # only the prediction from the prompt carries loss
    got, want = packed(**batch).loss, prepended(**batch).loss
    assert packs == [3]
    torch.testing.assert_close(got, want)


def test_given_positions_and_the_chunked_loss(packs):
    packed, prepended = pair("llama")
    batch = left_padded_batch()
    batch["position_ids"] = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
    got, want = lm_loss(packed, batch), lm_loss(prepended, batch)
    got.backward()
    want.backward()
    assert packs == [3]
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(prompt_grad(packed), prompt_grad(prepended), rtol=1e-4, atol=1e-6)


def test_compiled_blocks_give_the_same_loss_and_gradient(packs):
    packed, prepended = pair("llama")
    compile_blocks(packed)
    batch = {**left_padded_batch(), "use_cache": False}
    for _ in range(2):  # the second step reuses the compiled graphs
        packed.zero_grad()
        prepended.zero_grad()
        got, want = packed(**batch).loss, prepended(**batch).loss
        got.backward()
        want.backward()
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(prompt_grad(packed), prompt_grad(prepended), rtol=1e-4, atol=1e-6)
    assert packs == [3, 3]


def test_forwards_that_need_the_unpacked_layout_prepend(packs):
    packed, _ = pair("llama")
    batch = left_padded_batch()
    packed(**{**batch, "input_ids": batch["input_ids"][:1], "attention_mask": batch["attention_mask"][:1],
              "labels": batch["labels"][:1]})  # batch of one: nothing to share
    packed(**batch, output_hidden_states=True)
    packed.eval()
    with torch.no_grad():
        packed(**batch)  # eval keeps a KV cache (use_cache defaults to True): it must hold the prompt
        packed.generate(input_ids=batch["input_ids"][1:], max_new_tokens=2, do_sample=False)
    assert packs == []
    with torch.no_grad():
        packed(**batch, use_cache=False)
    assert packs == [3], "an eval forward without a cache runs packed"


def test_dropout_gradient_checkpointing_and_eager_attention_prepend(packs):
    with_dropout = peftlab.apply(tiny_gpt2(), "prompt_tuning", num_virtual_tokens=P).train()
    with_dropout(**left_padded_batch())
    checkpointed = peftlab.apply(tiny_llama(), "prompt_tuning", num_virtual_tokens=P).train()
    enable_activation_checkpointing(checkpointed)
    checkpointed(**left_padded_batch()).loss.backward()
    assert prompt_grad(checkpointed).abs().sum() > 0
    eager = tiny_llama()
    eager.set_attn_implementation("eager")
    peftlab.apply(eager, "prompt_tuning", num_virtual_tokens=P).train()(**left_padded_batch())
    assert packs == []


def test_a_forward_that_raised_leaves_the_next_one_correct():
    packed, prepended = pair("llama")
    batch = left_padded_batch()
    layer = packed.model.layers[1]
    handle = layer.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        packed(**batch)
    handle.remove()
    torch.testing.assert_close(packed(**batch).loss, prepended(**batch).loss)
    packed.eval()
    with torch.no_grad():
        got = packed.generate(input_ids=batch["input_ids"][1:], max_new_tokens=3, do_sample=False)
        want = prepended.eval().generate(input_ids=batch["input_ids"][1:], max_new_tokens=3, do_sample=False)
    assert torch.equal(got, want)


def test_unload_takes_the_packing_off_the_attention_modules():
    base = tiny_llama()
    adapted = peftlab.apply(copy.deepcopy(base), "prompt_tuning", num_virtual_tokens=P)
    attention = adapted.model.layers[0].self_attn
    assert shared_prompt._OWNER in attention.__dict__
    restored = peftlab.unload(adapted, merge_first=False)
    assert shared_prompt._OWNER not in restored.model.layers[0].self_attn.__dict__
    assert restored.model.layers[0].self_attn.config._attn_implementation == "sdpa"

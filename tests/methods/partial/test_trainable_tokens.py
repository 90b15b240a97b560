"""Trainable tokens: only the chosen embedding rows train (a tied head shares them), alone or beside any method
(``token_indices``); the frozen rows stay bit-identical, and the adapter saves just the rows and their indices."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import peftlab
from conftest import VOCAB, batch_for, tiny_gpt2, tiny_llama, tiny_t5
from peftlab.core.config import ConfigError
from peftlab.core.errors import UserError
from peftlab.core.probe import probe_inputs, probe_output
from peftlab.core.token_rows import TokenRowsError, TrainedTokens

NEW = [VOCAB, VOCAB + 1]  # two tokens added to the tokenizer


def tied_llama() -> nn.Module:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True))


def with_new_tokens(builder) -> nn.Module:
    model = builder().eval()
    model.resize_token_embeddings(VOCAB + len(NEW))
    return model


def batch_with_new_tokens(model: nn.Module) -> dict[str, torch.Tensor]:
    batch = batch_for(model)
    batch["input_ids"][:, 2], batch["input_ids"][:, 5] = NEW[0], NEW[1]
    if model.config.model_type not in ("t5", "bert"):
        batch["labels"] = batch["input_ids"].clone()  # the head's new columns are trained too
    return batch


@pytest.mark.parametrize("builder", [tiny_gpt2, tied_llama, tiny_llama, tiny_t5])
def test_only_the_chosen_rows_move_and_a_tied_head_shares_them(builder):
    model = peftlab.apply(with_new_tokens(builder), "trainable_tokens", token_indices=NEW)
    embedding = model.get_input_embeddings()
    weight = embedding.base_layer.weight
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    batch = batch_with_new_tokens(model)
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            assert torch.equal(parameter, frozen[name]), f"frozen {name} changed"
    rows = embedding.token_rows
    assert not torch.equal(rows, weight[NEW])
    # the model computes what the base computes with the rows written into its embedding (and tied head)
    reference = copy.deepcopy(model)
    peftlab.unload(reference)
    assert reference.get_input_embeddings().weight is not None
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, atol=1e-5, rtol=0)
    tied = model.get_output_embeddings() is not None and isinstance(model.get_output_embeddings(), TrainedTokens)
    assert tied == bool(model.config.tie_word_embeddings)


def test_merge_writes_the_rows_into_the_embedding_and_unmerge_restores_them():
    model = peftlab.apply(with_new_tokens(tiny_gpt2), "trainable_tokens", token_indices=NEW)
    wrapper = model.get_input_embeddings()
    with torch.no_grad():
        wrapper.token_rows.add_(1.0)
    inputs = {k: v for k, v in batch_with_new_tokens(model).items() if k != "labels"}
    before, original = probe_output(model, inputs), wrapper.base_layer.weight.detach().clone()
    peftlab.merge(model)
    assert torch.equal(wrapper.base_layer.weight[NEW], wrapper.token_rows)
    torch.testing.assert_close(probe_output(model, inputs), before, atol=1e-5, rtol=0)
    peftlab.unmerge(model)
    assert torch.equal(wrapper.base_layer.weight, original)


def test_the_saved_adapter_holds_only_the_rows_and_their_indices(tmp_path):
    base = with_new_tokens(tied_llama)
    model = peftlab.apply(copy.deepcopy(base), "trainable_tokens", token_indices=NEW)
    with torch.no_grad():
        model.get_input_embeddings().token_rows.mul_(3.0)
    peftlab.save_adapter(model, tmp_path / "a")
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert {n: tuple(t.shape) for n, t in tensors.items()} == {"model.embed_tokens.token_rows": (2, 32),
                                                              "model.embed_tokens.token_indices": (2,)}
    assert tensors["model.embed_tokens.token_indices"].tolist() == NEW
    loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "a")
    inputs = {k: v for k, v in batch_with_new_tokens(model).items() if k != "labels"}
    torch.testing.assert_close(probe_output(loaded, inputs), probe_output(model, inputs), atol=0, rtol=0)


def test_an_index_outside_the_vocabulary_names_it_and_the_size():
    with pytest.raises(TokenRowsError, match=rf"token index {VOCAB + 2} is outside the vocabulary of {VOCAB + 2}"):
        peftlab.apply(with_new_tokens(tiny_llama), "trainable_tokens", token_indices=[5, VOCAB + 2])


@pytest.mark.parametrize("indices, message", [((), "give the ids"), ((3, -1), "non-negative"), ((3, 3), "twice")])
def test_invalid_indices_are_config_errors(indices, message):
    with pytest.raises(ConfigError, match=message):
        peftlab.apply(tiny_llama(), "trainable_tokens", token_indices=indices)


def test_a_hybrid_part_cannot_carry_token_indices():
    with pytest.raises(ConfigError, match="token_indices on the hybrid itself"):
        peftlab.apply(tiny_llama(), "mam", adapter={"token_indices": [3]})


MIXED_BATCH_ROUNDING = 1e-5


def test_two_named_adapters_keep_their_own_rows():
    base = with_new_tokens(tiny_gpt2)
    model = peftlab.apply(copy.deepcopy(base), "trainable_tokens", token_indices=NEW, adapter_name="a")
    peftlab.apply(model, "lora", rank=4, token_indices=[NEW[1], 7], adapter_name="b")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, TrainedTokens) and not module._rows_of:
                module.token_rows.add_(torch.randn(module.token_rows.shape, generator=generator))
    inputs = {k: v for k, v in batch_with_new_tokens(model).items() if k != "labels"}
    inputs["input_ids"][:, 7] = 7
    alone = {}
    for name in ("a", "b"):
        peftlab.set_adapter(model, name)
        trained = {id(p) for p in model.parameters() if p.requires_grad}
        assert trained == {id(p) for _, p in peftlab.adapter_parameters(model)} and len(trained) == 1 + 4 * (name == "b")
        alone[name] = probe_output(model, inputs)
    with peftlab.disable_adapters(model):
        torch.testing.assert_close(probe_output(model, inputs), probe_output(base, inputs), atol=0, rtol=0)
    # A mixed batch computes each adapter's part on its own rows, so its sums may round in another order: 1.2e-6
    # on an AMD EPYC. The two adapters' outputs are far further apart than that, so the bound still tells them apart.
    assert (alone["a"] - alone["b"]).abs().max() > 100 * MIXED_BATCH_ROUNDING
    with torch.no_grad():
        mixed = model(**inputs, adapter_names=["a", "b"]).logits
    torch.testing.assert_close(mixed[0], alone["a"][0], atol=MIXED_BATCH_ROUNDING, rtol=0)
    torch.testing.assert_close(mixed[1], alone["b"][1], atol=MIXED_BATCH_ROUNDING, rtol=0)
    peftlab.delete_adapter(model, "a")
    torch.testing.assert_close(probe_output(model, inputs), alone["b"], atol=0, rtol=0)
    assert sum(isinstance(m, TrainedTokens) for m in model.modules()) == 2  # b's embedding and tied head


def test_adapters_training_the_same_token_cannot_be_in_use_together():
    model = peftlab.apply(tiny_llama(), "trainable_tokens", token_indices=[3, 4], adapter_name="a")
    peftlab.apply(model, "trainable_tokens", token_indices=[4, 5], adapter_name="b")
    with pytest.raises(UserError, match="'a' and 'b' both train the embedding row of token 4"):
        peftlab.set_adapter(model, ["a", "b"])
    peftlab.set_adapter(model, "b")
    with pytest.raises(UserError, match="token rows"):
        peftlab.add_weighted_adapter(model, {"a": 0.5, "b": 0.5}, "ab", "cat")

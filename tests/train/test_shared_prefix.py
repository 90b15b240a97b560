"""Few-shot scoring that reads each subject's shared prefix once gives the full prompts' option-letter
log-likelihoods, under every registered method, and costs about what 0-shot costs."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

import peftlab
from peftlab.core import registry
from peftlab.core.registry import get_method
from peftlab.tasks import get_task
from peftlab.train import evaluation
from peftlab.train.encoding import PromptCuts
from peftlab.train.evaluation import evaluate, full_prompt_letter_logprobs, letter_ids
from peftlab.train.models import last_position_logits
from peftlab.train.shared_prefix import letter_logprobs, reuses_prefix_cache, shared_length
from test_contract import case, perturb
from train.tiny import char_tokenizer

CPU = torch.device("cpu")
METHODS = peftlab.list_methods()


def long_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=512,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0))


def long_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                        pad_token_id=0, bos_token_id=1, eos_token_id=2))


BUILDERS = {"llama": long_llama, "gpt2": long_gpt2}


def write_subject(root, subject: str, questions: int) -> None:
    for split, count in (("dev", 5), ("test", questions)):
        folder = root / "mmlu" / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = "".join(f"{subject} q{i}{'?' * (i % 3)},o{i},t,th,f{i},{'ABCD'[i % 4]}\n" for i in range(count))
        (folder / f"{subject}_{split}.csv").write_text(rows)


@pytest.fixture
def five_shot(tmp_path):
    """Seven 5-shot questions of two subjects (different prefixes, question lengths that need padding)."""
    write_subject(tmp_path, "anatomy", 4)
    write_subject(tmp_path, "virology", 3)
    return get_task("mmlu-5shot").load("test", tmp_path)


def both_ways(model, family: str, examples, limit: int = 10**6) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = char_tokenizer(family)
    letters = letter_ids(tokenizer, "decoder")
    with torch.no_grad():
        shared = letter_logprobs(model, tokenizer, examples, letters, limit=limit, batch_size=3, device=CPU,
                                 cuts=PromptCuts())
        full = full_prompt_letter_logprobs(model, tokenizer, "decoder", examples, limit, CPU, PromptCuts())
    return shared, full


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_the_shared_prefix_gives_the_full_prompts_log_likelihoods(five_shot, family):
    model = BUILDERS[family]().eval()
    shared, full = both_ways(model, family, five_shot)
    assert shared.shape == (7, 4)
    torch.testing.assert_close(shared, full, rtol=0, atol=1e-5)
    assert shared.argmax(-1).tolist() == full.argmax(-1).tolist()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_every_method_either_reuses_the_cache_exactly_or_declares_it_cannot(five_shot, family, method):
    """Prompt and prefix tuning (and their hybrids) reuse it too: their hooks extend a cached step's mask and
    positions as generation needs. A method that cannot declares ``MethodHooks(reuses_kv_cache=False)``."""
    options = case(method).OPTIONS
    if family in getattr(case(method), "SKIP", {}) or family not in get_method(method).architectures:
        pytest.skip(f"{method} does not run on {family}")
    model = peftlab.apply(copy.deepcopy(BUILDERS[family]()).eval(), method, **options)
    perturb(model)
    if not reuses_prefix_cache(model, "decoder"):
        pytest.skip(f"{method} declares that a prompt's cache cannot be reused: evaluation reads full prompts")
    shared, full = both_ways(model, family, five_shot[:4])
    torch.testing.assert_close(shared, full, rtol=0, atol=1e-4)


def count_read_tokens(model) -> list[int]:
    """Token positions the model reads, summed over its forward passes (counted at the input embedding)."""
    read = [0]
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: read.__setitem__(0, read[0] + args[0].numel()))
    return read


def test_evaluate_scores_5_shot_through_the_shared_prefix_at_about_0_shot_cost(five_shot, tmp_path):
    model, tokenizer = long_llama().eval(), char_tokenizer("llama")
    zero = get_task("mmlu").load("test", tmp_path)
    read = count_read_tokens(model)
    zero_scores = evaluate(model, tokenizer, "decoder", get_task("mmlu"), zero, batch_size=3)
    zero_read, read[0] = read[0], 0
    five_scores = evaluate(model, tokenizer, "decoder", get_task("mmlu-5shot"), five_shot, batch_size=3)
    five_read = read[0]
    full = full_prompt_letter_logprobs(model, tokenizer, "decoder", five_shot, 10**6, CPU, PromptCuts())
    assert five_scores["accuracy"] == pytest.approx(
        sum(p == e.label for p, e in zip(full.argmax(-1).tolist(), five_shot, strict=True)) / len(five_shot))
    ids = {subject: [tokenizer(e.text)["input_ids"] for e in five_shot if e.group == subject]
           for subject in ("anatomy", "virology")}
    prefixes = sum(shared_length(group) for group in ids.values())
    whole = sum(len(one) for group in ids.values() for one in group)  # the full prompts, unpadded
    assert five_read < whole / 2.5
    assert five_read <= zero_read + prefixes  # each subject's prefix once, then what 0-shot reads
    assert zero_scores["accuracy"] >= 0


def test_a_method_that_declares_no_cache_reuse_is_scored_on_full_prompts(five_shot, monkeypatch):
    model, tokenizer = long_llama().eval(), char_tokenizer("llama")
    peftlab.apply(model, "prompt_tuning", num_virtual_tokens=4, init="random")
    expected = evaluate(model, tokenizer, "decoder", get_task("mmlu-5shot"), five_shot, batch_size=3)
    spec = get_method("prompt_tuning")
    no_reuse = dataclasses.replace(spec, hooks=dataclasses.replace(spec.hooks, reuses_kv_cache=False))
    monkeypatch.setitem(registry._REGISTRY, "prompt_tuning", no_reuse)
    assert not reuses_prefix_cache(model, "decoder")
    monkeypatch.setattr(evaluation, "letter_logprobs", lambda *a, **k: pytest.fail("the shared-prefix path ran"))
    read = count_read_tokens(model)
    scores = evaluate(model, tokenizer, "decoder", get_task("mmlu-5shot"), five_shot, batch_size=3)
    assert scores["accuracy"] == expected["accuracy"]
    assert read[0] >= sum(len(tokenizer(e.text)["input_ids"]) for e in five_shot)  # every prompt read whole


def test_prompts_cut_to_the_model_keep_the_full_paths_cuts_and_scores(five_shot):
    """Prompts too long for a model drop shots per prompt; the shared run of ids is then shorter, the same
    log-likelihoods come out, and the cuts are counted once per prompt."""
    tokenizer = char_tokenizer("gpt2")
    model = long_gpt2().eval()
    limit = max(len(tokenizer(e.with_shots(2))["input_ids"]) for e in five_shot)
    shared, full = both_ways(model, "gpt2", five_shot, limit=limit)
    torch.testing.assert_close(shared, full, rtol=0, atol=1e-5)
    cuts = PromptCuts()
    letter_logprobs(model, tokenizer, five_shot, letter_ids(tokenizer, "decoder"), limit=limit, batch_size=3,
                    device=CPU, cuts=cuts)
    assert cuts.prompts == 7 and cuts.shots >= 7 * 3


def test_shared_length_leaves_each_sequence_a_token_of_its_own():
    assert shared_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 7]]) == 2
    assert shared_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_length([[5], [5, 6]]) == 0


@pytest.mark.parametrize("method", METHODS)
def test_scoring_the_last_position_alone_gives_what_the_full_logits_give(five_shot, method):
    """The letter scores come from ``logits_to_keep=1`` (one vocabulary row per prompt); under every method,
    including those that put virtual tokens in front, they equal the last row of the full logits."""
    if "llama" in getattr(case(method), "SKIP", {}) or "llama" not in get_method(method).architectures:
        pytest.skip(f"{method} does not run on llama")
    model = peftlab.apply(long_llama().eval(), method, **case(method).OPTIONS)
    perturb(model)
    tokenizer = char_tokenizer("llama")
    letters = letter_ids(tokenizer, "decoder")
    assert last_position_logits(model) == {"logits_to_keep": 1}
    with torch.no_grad():
        kept = full_prompt_letter_logprobs(model, tokenizer, "decoder", five_shot[:3], 10**6, CPU, PromptCuts())
        for row, example in enumerate(five_shot[:3]):
            ids = torch.tensor([tokenizer(example.text)["input_ids"]])
            every = model(input_ids=ids).logits[0, -1].float().log_softmax(-1)[letters]
            torch.testing.assert_close(kept[row], every, rtol=0, atol=1e-5)

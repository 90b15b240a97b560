"""Behaviours every method that puts soft tokens in front of attention promises on every family: training
lowers the loss (the two soft-prompt methods), cached generation equals uncached generation, and a sequence's
output does not change when it is batched with longer, padded sequences (right padding for encoders, left
padding for decoders). The second and third also hold for the methods built on attention prefixes: MAM,
UniPELT (its default per-token gates) and ProPETL's prefix prototype."""

import pytest
import torch

import peftlab
from conftest import BUILDERS, batch_for
from methods.hybrid.support import perturb

METHODS = {
    "prefix_tuning": {"num_virtual_tokens": 3, "mlp_hidden_size": 16},
    "prompt_tuning": {"num_virtual_tokens": 3, "init": "random"},
}
# Methods with parts that start as the identity (zero up-projections, LoRA B = 0) or as near-constant gates:
# moved off their initialisation so every part changes the outputs.
PREFIXED = {
    "mam": {"prefix": {"num_virtual_tokens": 3, "mlp_hidden_size": 16}, "adapter": {"bottleneck_size": 8}},
    "unipelt": {"prefix": {"num_virtual_tokens": 3, "mlp_hidden_size": 16}, "adapter": {"bottleneck_size": 8},
                "lora": {"rank": 4, "alpha": 8.0}},
    "propetl": {"prototype": "prefix", "num_virtual_tokens": 3},
}
ATTENTION_METHODS = sorted(METHODS) + sorted(PREFIXED)
SHORT = [5, 6, 7, 8]
LONG = [9, 10, 11, 12, 13, 14, 15]


def adapted(method: str, family: str, implementation: str = "sdpa") -> torch.nn.Module:
    model = BUILDERS[family]()
    model.set_attn_implementation(implementation)
    model = peftlab.apply(model, method, **{**METHODS, **PREFIXED}[method]).eval()
    if method in PREFIXED:
        perturb(model)
    return model


def padded(model: torch.nn.Module, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SHORT and LONG in one batch, SHORT padded with the model's pad id on the left or the right."""
    pad = [model.config.pad_token_id] * (len(LONG) - len(SHORT))
    ids = torch.tensor([pad + SHORT if left else SHORT + pad, LONG])
    mask = torch.tensor([[0] * len(pad) + [1] * len(SHORT) if left else [1] * len(SHORT) + [0] * len(pad),
                         [1] * len(LONG)])
    return ids, mask


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", ["bert", "roberta", "t5", "llama", "gpt2"])
def test_training_lowers_the_loss(method, family):
    model = adapted(method, family)  # eval mode: dropout off, the check is about the optimisation
    batch = batch_for(model, batch=4)
    optimizer = torch.optim.Adam(peftlab.parameter_groups(model, lr=1e-2))
    losses = []
    for _ in range(6):
        loss = model(**batch).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(after < before for before, after in zip(losses, losses[1:])), losses


@pytest.mark.parametrize("method", ATTENTION_METHODS)
@pytest.mark.parametrize(("family", "implementation"),
                         [("t5", "sdpa"), ("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa")])
def test_generate_with_the_cache_equals_generate_without(method, family, implementation):
    model = adapted(method, family, implementation)
    ids, mask = padded(model, left=family != "t5")
    options = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 6, "do_sample": False}
    scored = {**options, "output_scores": True, "return_dict_in_generate": True}
    cached = model.generate(**scored, use_cache=True)
    uncached = model.generate(**scored, use_cache=False)
    torch.testing.assert_close(cached.sequences, uncached.sequences, rtol=0, atol=0)
    for step, (with_cache, without) in enumerate(zip(cached.scores, uncached.scores, strict=True)):
        torch.testing.assert_close(with_cache, without, atol=1e-5, rtol=1e-5,
                                   msg=lambda text, step=step: f"step {step}: {text}")
    alone = model.generate(input_ids=torch.tensor([SHORT]), max_new_tokens=6, do_sample=False)
    row = cached.sequences[0] if family == "t5" else cached.sequences[0, len(LONG) - len(SHORT):]
    torch.testing.assert_close(row, alone[0], rtol=0, atol=0)
    base = BUILDERS[family]().eval().generate(**options)
    assert not torch.equal(cached.sequences, base), "the soft prompt should change what the model generates"


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ATTENTION_METHODS)
@pytest.mark.parametrize("family", ["bert", "roberta", "t5", "llama", "gpt2"])
def test_a_sequence_gives_the_same_output_alone_and_in_a_padded_batch(method, family, implementation):
    model = adapted(method, family, implementation)
    decoder = family in ("llama", "gpt2")
    ids, mask = padded(model, left=decoder)
    alone = {"input_ids": torch.tensor([SHORT])}
    batched = {"input_ids": ids, "attention_mask": mask}
    if decoder:  # left padding: positions count real tokens only, as generate computes them
        batched["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if family == "t5":
        alone["decoder_input_ids"] = torch.tensor([[0, 5, 6]])
        batched["decoder_input_ids"] = torch.tensor([[0, 5, 6]] * 2)
    with torch.no_grad():
        single, pair = model(**alone).logits[0], model(**batched).logits[0]
    if decoder:
        pair = pair[len(LONG) - len(SHORT):]
    torch.testing.assert_close(pair, single, atol=1e-5, rtol=1e-5)

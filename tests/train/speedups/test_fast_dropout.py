"""Fast dropout: masks keep 1 - p' of the elements, independently, scaled to keep the mean; the gradient is
the mask times the scale; inside the context every dropout and dropping attention of a model draws them,
outside it (and in eval mode) nothing changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import peftlab
from conftest import BUILDERS, batch_for, count_fast_dropouts
from peftlab.core.checkpointing import enable_activation_checkpointing
from peftlab.train.speedups import fast_dropout as fast
from peftlab.train.speedups.compile import compile_blocks

P = 0.1
KEPT = 1 - round(P * 65536) / 65536  # 1 - p'


def test_masks_keep_one_minus_p_and_the_scale_keeps_the_mean():
    torch.manual_seed(0)
    count = 1_000_003  # not a multiple of the four masks per draw
    y = fast.dropout(torch.ones(count), P)
    kept = y != 0
    sigma = (KEPT * (1 - KEPT) / count) ** 0.5
    assert abs(kept.float().mean().item() - KEPT) < 5 * sigma
    assert torch.all(y[kept] == y[kept][0]) and y[kept][0].item() == pytest.approx(1 / KEPT, rel=1e-7)
    assert abs(y.double().mean().item() - 1) < 5 * sigma / KEPT


@pytest.mark.parametrize("offset", [1, 2, 3, 4, 5])
def test_neighbouring_masks_are_independent(offset):
    """Four elements share one 64-bit draw: their masks must still be independent (joint keep = (1 - p)^2)."""
    torch.manual_seed(1)
    kept = fast.dropout(torch.ones(2_000_000), 0.5) != 0
    joint = (kept[:-offset] & kept[offset:]).float().mean().item()
    assert abs(joint - 0.25) < 5 * (0.25 * 0.75 / kept.numel()) ** 0.5


def test_output_and_gradient_are_the_input_and_upstream_gradient_masked_and_scaled():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 7, 33, generator=generator).requires_grad_()
    upstream = torch.randn(3, 7, 33, generator=generator)
    y = fast.dropout(x, 0.3)
    mask = y != 0
    scale = 65536 / (65536 - round(0.3 * 65536))
    torch.testing.assert_close(y, x.detach() * mask * scale)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, upstream * mask * scale)
    assert 0.6 < mask.float().mean().item() < 0.8


def test_p_zero_is_the_identity_and_a_seed_repeats_the_masks():
    x = torch.randn(4, 9)
    assert fast.dropout(x, 0.0) is x
    torch.manual_seed(3)
    first = fast.dropout(x, P)
    torch.manual_seed(3)
    torch.testing.assert_close(fast.dropout(x, P), first, rtol=0, atol=0)


def _attention_inputs(heads: int = 4, kv_heads: int = 4):
    generator = torch.Generator().manual_seed(4)
    q = torch.randn(2, heads, 5, 8, generator=generator).requires_grad_()
    k = torch.randn(2, kv_heads, 6, 8, generator=generator).requires_grad_()
    v = torch.randn(2, kv_heads, 6, 8, generator=generator).requires_grad_()
    return q, k, v


@pytest.mark.parametrize("case", ["plain", "bool_mask", "float_mask", "causal", "gqa", "scale", "masked_row"])
def test_attention_without_dropout_is_pytorchs_attention_in_value_and_gradients(case):
    q, k, v = _attention_inputs(kv_heads=2 if case == "gqa" else 4)
    options: dict = {}
    if case in ("bool_mask", "masked_row"):
        options["attn_mask"] = torch.rand(2, 1, 5, 6, generator=torch.Generator().manual_seed(5)) > 0.3
        options["attn_mask"][..., 0] = case != "masked_row"  # one query row masked whole: zeros, as SDPA gives
    if case == "float_mask":
        options["attn_mask"] = torch.randn(2, 1, 5, 6, generator=torch.Generator().manual_seed(6))
    options.update({"causal": {"is_causal": True}, "gqa": {"enable_gqa": True}, "scale": {"scale": 0.3}}.get(case, {}))
    expected = F.scaled_dot_product_attention(q, k, v, **options)
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    got = fast.attention_with_dropout(q, k, v, **options)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for got_grad, expected_grad in zip(torch.autograd.grad(got.sum(), (q, k, v)), expected_grads):
        torch.testing.assert_close(got_grad, expected_grad, atol=1e-5, rtol=1e-5)


def test_inside_the_context_dropout_and_dropping_attention_draw_the_fast_masks():
    x = torch.randn(64, fast.MIN_ELEMENTS // 64)
    generator = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, 4, 128, 8, generator=generator) for _ in range(3))  # 2 x 4 x 128 x 128 probabilities
    with fast.fast_dropout():
        torch.manual_seed(7)
        module_output = nn.Dropout(0.3)(x)
        attention_output = F.scaled_dot_product_attention(q, k, v, dropout_p=0.2)
        keywords_output = F.scaled_dot_product_attention(query=q, key=k, value=v, dropout_p=0.2)
    torch.manual_seed(7)
    torch.testing.assert_close(module_output, fast.dropout(x, 0.3), rtol=0, atol=0)
    torch.testing.assert_close(attention_output, fast.attention_with_dropout(q, k, v, dropout_p=0.2))
    torch.testing.assert_close(keywords_output, fast.attention_with_dropout(q, k, v, dropout_p=0.2))

    torch.manual_seed(8)  # outside the context: PyTorch's own dropout again
    plain = nn.Dropout(0.3)(x)
    torch.manual_seed(8)
    torch.testing.assert_close(plain, torch.ops.aten.native_dropout(x, 0.3, True)[0], rtol=0, atol=0)


def test_eval_mode_in_place_small_tensors_and_disabled_run_the_plain_functions():
    x = torch.randn(64, fast.MIN_ELEMENTS // 64)
    with fast.fast_dropout():
        assert F.dropout(x, 0.5, training=False) is x
        target = x.clone()
        torch.manual_seed(9)
        F.dropout(target, 0.5, inplace=True)
    torch.manual_seed(9)
    torch.testing.assert_close(target, torch.ops.aten.native_dropout(x, 0.5, True)[0], rtol=0, atol=0)
    with fast.fast_dropout(enabled=False):
        torch.manual_seed(10)
        plain = F.dropout(x, 0.5)
    torch.manual_seed(10)
    torch.testing.assert_close(plain, torch.ops.aten.native_dropout(x, 0.5, True)[0], rtol=0, atol=0)
    small = x[:, :-1]  # below MIN_ELEMENTS: PyTorch's dropout costs less per call
    with fast.fast_dropout():
        torch.manual_seed(13)
        plain = F.dropout(small, 0.5)
    torch.manual_seed(13)
    torch.testing.assert_close(plain, torch.ops.aten.native_dropout(small, 0.5, True)[0], rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_a_model_trains_inside_the_context_and_evaluates_as_without_it(arch, monkeypatch):
    model = peftlab.apply(BUILDERS[arch](), "lora")
    batch = batch_for(model)
    calls = count_fast_dropouts(monkeypatch)
    model.train()
    with fast.fast_dropout():
        loss = model(**batch).loss
    loss.backward()
    assert 2 * 4 * 10 * 10 in calls and torch.isfinite(loss)  # the attention probabilities' dropout, too
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    model.eval()
    calls.clear()
    with torch.no_grad(), fast.fast_dropout():
        evaluated = model(**batch).loss
    with torch.no_grad():
        torch.testing.assert_close(evaluated, model(**batch).loss, rtol=0, atol=0)
    assert calls == []


def test_compiled_blocks_train_inside_the_context(monkeypatch):
    """The compiler draws its own masks in the blocks it compiles; the rest of the model draws the fast ones."""
    count_fast_dropouts(monkeypatch)
    model = peftlab.apply(BUILDERS["bert"](), "lora")
    batch = batch_for(model)
    assert compile_blocks(model) > 0
    model.train()
    for _ in range(2):
        with fast.fast_dropout():
            loss = model(**batch).loss
        loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in model.named_parameters() if "lora" in n)


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_activation_checkpointing_draws_the_same_masks_again(arch, monkeypatch):
    """Recomputed in backward (inside the context too), each block draws the masks its forward drew."""
    def gradients(checkpointed: bool) -> dict[str, torch.Tensor]:
        model = peftlab.apply(BUILDERS[arch](), "lora", dropout=0.2)
        if checkpointed:
            enable_activation_checkpointing(model, context_fn=fast.checkpoint_contexts)
        model.train()
        torch.manual_seed(11)
        with fast.fast_dropout():
            model(**batch_for(model)).loss.backward()
        return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}

    calls = count_fast_dropouts(monkeypatch)
    plain, checkpointed = gradients(False), gradients(True)
    assert calls
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)

"""Language-model loss without the full-vocabulary logits.

The plain path (``model(**batch, labels=...).loss``) writes ``(batch, length, vocab)`` logits, upcasts
them to fp32, and keeps a log-softmax and its gradient of the same size: with a 49k vocabulary that is
most of a small model's training memory. :func:`linear_cross_entropy` computes the same loss from the
hidden states and the head weight a few hundred rows at a time, and the gradients with it (the
softmax minus the one-hot target, multiplied back through the head), so no chunk's logits outlive
their chunk and nothing is recomputed in backward. Only positions that carry a label are computed.

    loss = lm_loss(model, batch)          # == model(**batch).loss, for causal and seq2seq LMs
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.errors import UserError
from peftlab.core.layers import AdapterLayer

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 23  # fp32 logits per chunk (32 MB) when no chunk size is given


class ChunkedLossError(UserError, ValueError):
    pass


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    shift: bool = False,
    chunk_size: int | None = None,
    reduction: str = "mean",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T + bias, labels)`` over the labelled positions, in chunks.

    ``hidden`` is ``(..., length, H)`` and ``labels`` ``(..., length)``; with ``shift`` position ``t``
    predicts label ``t + 1`` (causal LMs). ``reduction`` is ``"mean"`` over labelled positions
    (what ``transformers`` reports) or ``"sum"``. ``chunk_size`` is rows per chunk; by default a
    chunk's fp32 logits take about 32 MB. Logits are computed in ``hidden``'s dtype and reduced in fp32.
    """
    if reduction not in ("mean", "sum"):
        raise ChunkedLossError(f"reduction {reduction!r} is not supported; use 'mean' or 'sum'")
    if chunk_size is not None and chunk_size < 1:
        raise ChunkedLossError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    if hidden.shape[:-1] != labels.shape:
        raise ChunkedLossError(f"hidden states {tuple(hidden.shape)} do not match labels {tuple(labels.shape)}")
    if shift:
        labels = F.pad(labels[..., 1:], (0, 1), value=ignore_index)
    labels = labels.reshape(-1).to(hidden.device)
    rows = (labels != ignore_index).nonzero().squeeze(1)
    selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)  # (N, H), labelled rows only
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // weight.shape[0])
    total = _LinearCrossEntropy.apply(selected, weight, bias, labels.index_select(0, rows), chunk)
    return total / max(rows.numel(), 1) if reduction == "mean" else total


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy whose gradients are computed chunk by chunk in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk):  # type: ignore[override]
        needs = ctx.needs_input_grad
        grad_hidden = torch.empty_like(hidden) if needs[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and needs[2] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            rows, target = hidden[start:start + chunk], labels[start:start + chunk]
            logits = F.linear(rows, weight, bias).float()  # (chunk, V); every pass below is in place
            row_max = logits.amax(dim=1, keepdim=True)
            target_logit = logits.gather(1, target[:, None])
            exp = logits.sub_(row_max).exp_()
            sum_exp = exp.sum(dim=1, keepdim=True)
            total += (sum_exp.log() + row_max - target_logit).sum()  # logsumexp - target logit
            if not any(needs[:3]):
                continue
            probs = exp.div_(sum_exp)  # the softmax, in the logits' memory
            probs[torch.arange(target.numel(), device=probs.device), target] -= 1.0
            grad_logits = probs.to(hidden.dtype)
            if grad_hidden is not None:
                torch.mm(grad_logits, weight, out=grad_hidden[start:start + chunk])
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.T.float(), rows.float())
            if grad_bias is not None:
                grad_bias += probs.sum(0)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight, grad_bias) if g is not None))
        ctx.present = (grad_hidden is not None, grad_weight is not None, grad_bias is not None)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):  # type: ignore[override]
        saved = iter(ctx.saved_tensors)
        grads = [(next(saved) * grad_total).to(dtype) if present else None
                 for present, dtype in zip(ctx.present, ctx.dtypes)]
        return grads[0], grads[1], grads[2], None, None


def lm_loss(
    model: nn.Module,
    batch: Mapping[str, torch.Tensor],
    *,
    chunk_size: int | None = None,
    reduction: str = "mean",
    forward: Callable[..., object] | None = None,
) -> torch.Tensor:
    """The language-model loss of ``batch`` (which holds ``labels``) without full-vocabulary logits.

    Equals ``model(**batch).loss`` for ``transformers`` causal LMs (labels shifted by one) and
    seq2seq LMs (decoder inputs built from the labels, as the model does). The model's head must be
    a plain ``nn.Linear``: train it through the plain loss if a method adapts the head itself.
    ``forward`` runs the model instead of ``model`` itself (a DDP wrapper around it, say).
    """
    if "labels" not in batch:
        raise ChunkedLossError("the batch has no 'labels'; the chunked loss needs them")
    problem = chunked_loss_problem(model)
    if problem is not None:
        raise ChunkedLossError(f"{problem}; use the plain loss (model(**batch).loss) for this model")
    head = model.get_output_embeddings()
    labels = batch["labels"]
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    if seq2seq and "decoder_input_ids" not in inputs:
        inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    if hasattr(model.config, "use_cache"):
        inputs.setdefault("use_cache", False)  # a loss needs no KV cache (and compiled blocks no cache object)
    with _hidden_before(head) as captured:
        (forward or model)(**inputs)
    hidden = captured[0]
    if hidden.shape[-2] > labels.shape[-1]:  # positions a method prepended (virtual tokens) carry no label
        labels = F.pad(labels, (hidden.shape[-2] - labels.shape[-1], 0), value=IGNORE_INDEX)
    return linear_cross_entropy(hidden, head.weight, labels, head.bias, shift=not seq2seq,
                                chunk_size=chunk_size, reduction=reduction)


def chunked_loss_problem(model: nn.Module) -> str | None:
    """Why :func:`lm_loss` cannot compute ``model``'s loss, or None when it can."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if not isinstance(head, nn.Linear) or isinstance(head, AdapterLayer):
        return (f"the chunked loss needs a plain nn.Linear output head, found {type(head).__name__} "
                "(a method that adapts the head trains it through the plain loss)")
    if getattr(model.config, "final_logit_softcapping", None):
        return "the chunked loss does not apply logit soft-capping"
    return None


@contextmanager
def _hidden_before(head: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Capture the head's input and hand the head an empty sequence, so it computes no logits."""
    captured: list[torch.Tensor] = []

    def capture(_module: nn.Module, args: tuple) -> tuple:
        captured.append(args[0])
        return (args[0][..., :0, :],) + tuple(args[1:])

    handle = head.register_forward_pre_hook(capture)
    try:
        yield captured
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ChunkedLossError(f"the output head ran {len(captured)} times in one forward; use the plain loss")

"""A fixed probe input for numeric checks (merge, load): a few seeded token ids the model accepts."""

from __future__ import annotations

import torch
from torch import nn

from peftlab.core.architectures import model_kind


def probe_inputs(model: nn.Module, batch: int = 2, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    config = model.config
    vocab_size = getattr(config, "vocab_size", None) or model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab_size, (batch, length), generator=generator).to(device)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if model_kind(model) == "encoder-decoder":
        inputs["decoder_input_ids"] = ids[:, : max(2, length // 2)]
    return inputs


def probe_output(model: nn.Module, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The model's main output on the probe, in eval mode; the model's mode is restored afterwards."""
    inputs = inputs if inputs is not None else probe_inputs(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(**inputs)
    finally:
        model.train(was_training)
    for key in ("logits", "last_hidden_state"):
        value = getattr(output, key, None)
        if value is not None:
            return value.float()
    return output[0].float()

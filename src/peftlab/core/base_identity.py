"""The identity of the base model an adapter was trained on, and the check made when it is loaded.

Saved in ``adapter_config.json`` as ``base_model``: the model type, architecture, name, vocabulary size and a
fingerprint (a hash of the base parameters' names and logical shapes). Loading into another family or
vocabulary that the adapter's tensors depend on is refused; another fingerprint or vocabulary size is warned
about once the adapter has loaded.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

from peftlab.core.accounting import logical_shape
from peftlab.core.errors import AdapterFileError, few
from peftlab.core.layers import AdapterModule
from peftlab.core.state import peft_state


class BaseModelMismatchWarning(UserWarning):
    """The adapter loads, but its base model differs from this one (another fingerprint or vocabulary)."""


def base_model_info(model: nn.Module) -> dict[str, Any]:
    """Model type and a fingerprint of the base parameters' names and shapes.

    For an adapted model, the base as it was before the method was injected (a method may add
    parameters, like BitFit's biases, or swap module types, like QLoRA's quantized layers).
    """
    state = peft_state(model)
    if state is not None and state.base_model:
        return dict(state.base_model)
    added = {id(p) for m in model.modules() if isinstance(m, AdapterModule) for _, p in m.adapter_parameters()}
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if id(parameter) not in added:
            digest.update(f"{name.replace('.base_layer', '')}:{logical_shape(parameter)};".encode())
    config = getattr(model, "config", None)
    try:
        vocab_size = model.get_input_embeddings().num_embeddings
    except (AttributeError, NotImplementedError):
        vocab_size = None
    return {
        "model_type": getattr(config, "model_type", None),
        "architecture": type(model).__name__,
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "vocab_size": vocab_size,
        "fingerprint": digest.hexdigest()[:16],
    }


def check_base_model(model: nn.Module, saved: dict[str, Any], tensors: dict[str, torch.Tensor], source: str) -> list[str]:
    """Refuse an adapter for another model family or vocabulary (when it holds embeddings); return the
    doubts to warn about once it has loaded (another vocabulary size or base fingerprint)."""
    trained_on = saved.get("model_type")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if trained_on and model_type and trained_on != model_type:
        raise AdapterFileError(f"the adapter in {source} was trained on a {trained_on!r} model; this model is {model_type!r}")
    here = base_model_info(model)
    saved_vocab, vocab = saved.get("vocab_size"), here["vocab_size"]
    if saved_vocab and vocab and saved_vocab != vocab:
        embeddings = [n for n, t in tensors.items() if t.ndim == 2 and t.shape[0] == saved_vocab]
        message = (
            f"the adapter in {source} was trained with a vocabulary of {saved_vocab} tokens; this base has "
            f"{vocab}. Load the tokenizer it was trained with (saved beside the adapter when tokens were added) "
            f"and call model.resize_token_embeddings({saved_vocab}) before loading"
        )
        if embeddings:
            raise AdapterFileError(message + f" (it holds resized embeddings: {few(embeddings)})")
        return [message]
    if saved.get("fingerprint") and saved["fingerprint"] != here["fingerprint"]:
        return [
            f"the adapter in {source} was saved from a base model with other parameter names or shapes "
            f"(fingerprint {saved['fingerprint']}, this one {here['fingerprint']}; "
            f"saved from {saved.get('name_or_path') or saved.get('architecture') or 'an unnamed model'}); "
            f"its tensors fit, but check that this is the base it was trained on"
        ]
    return []

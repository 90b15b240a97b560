"""Save and load an adapter alone: ``adapter_config.json`` + ``adapter_model.safetensors``.

Never pickle: tensors go through safetensors, everything else through JSON. A save replaces the
folder atomically. A load checks every tensor name and shape against the model and says what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from peftlab.core.atomic import atomic_directory, recover_directory
from peftlab.core.config import ConfigError, MethodConfig
from peftlab.core.errors import UserError
from peftlab.core.injection import adapter_buffers, adapter_parameters, apply_config, peft_state
from peftlab.core.layers import AdapterModule
from peftlab.core.merging import unload
from peftlab.core.registry import get_method

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


class AdapterFileError(UserError, ValueError):
    """An adapter folder is missing, corrupt, or does not fit the model."""


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a saved adapter holds (a method may export a different form, e.g. folded prefixes)."""
    state = peft_state(model)
    exporter = get_method(state.method).extra.get("export_state") if state else None
    if exporter is not None:
        return exporter(model)
    tensors = {name: p.detach() for name, p in adapter_parameters(model)}
    tensors.update({name: b.detach() for name, b in adapter_buffers(model)})
    return tensors


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the applied method's config and weights to folder ``path`` (replaced atomically)."""
    state = peft_state(model)
    if state is None:
        raise ValueError("nothing to save: this model carries no peftlab method (peftlab.apply first)")
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in adapter_state_dict(model).items()}
    document = {
        **state.config.to_dict(),
        "peftlab_version": _peftlab_version(),
        "base_model": base_model_info(model),
    }
    path = Path(path)
    with atomic_directory(path) as staging:
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt", "method": state.method})
        (staging / CONFIG_NAME).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def read_adapter_document(path: str | os.PathLike) -> dict[str, Any]:
    """The raw ``adapter_config.json`` of an adapter folder, checked to be a peftlab adapter config."""
    path = Path(path)
    recover_directory(path)
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise AdapterFileError(f"{path} is not an adapter folder: {CONFIG_NAME} is missing")
    try:
        document = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterFileError(f"{config_path} is not valid JSON ({error}); the file is corrupt") from None
    if not isinstance(document, dict) or "method" not in document:
        raise AdapterFileError(f"{config_path} names no 'method'; it was not written by peftlab")
    return document


def read_adapter_config(path: str | os.PathLike) -> MethodConfig:
    document = dict(read_adapter_document(path))
    document.pop("base_model", None)
    try:
        return get_method(document["method"]).config_class.from_dict(document)
    except KeyError as error:
        raise AdapterFileError(f"{Path(path) / CONFIG_NAME}: {error}") from None


def read_adapter_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    weights_path = Path(path) / WEIGHTS_NAME
    if not weights_path.is_file():
        raise AdapterFileError(f"{Path(path)} has no {WEIGHTS_NAME}")
    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(f"{weights_path} is corrupt or truncated ({error}); save the adapter again") from None


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply the saved method to a plain base model (or reuse the one it carries) and load its weights.

    On any mismatch the model is left as it was given.
    """
    config = read_adapter_config(path)
    trained_on = read_adapter_document(path).get("base_model", {}).get("model_type")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if trained_on and model_type and trained_on != model_type:
        raise AdapterFileError(
            f"the adapter in {path} was trained on a {trained_on!r} model; this model is {model_type!r}"
        )
    tensors = read_adapter_tensors(path)
    state = peft_state(model)
    if state is None:
        apply_config(model, config)
        try:
            load_adapter_state_dict(model, tensors, source=str(path))
        except BaseException:
            unload(model, merge_first=False)
            raise
        return model
    if state.config != config:
        raise AdapterFileError(
            f"the model already carries {state.method!r} with another config than the adapter in {path}; "
            f"load it onto a fresh base model"
        )
    load_adapter_state_dict(model, tensors, source=str(path))
    return model


def load_adapter_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "adapter") -> None:
    state = peft_state(model)
    importer = get_method(state.method).extra.get("import_state")
    if importer is not None:
        importer(model, tensors)
        return
    expected = {name: p for name, p in adapter_parameters(model)}
    expected.update(dict(adapter_buffers(model)))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterFileError(
            f"{source} does not fit this model: "
            + (f"missing tensors {_few(missing)}; " if missing else "")
            + (f"tensors for modules this model lacks {_few(unexpected)}; " if unexpected else "")
            + "was it trained on another base model or with other target modules?"
        )
    mismatched = [(n, tuple(tensors[n].shape), tuple(expected[n].shape)) for n in expected
                  if tensors[n].shape != expected[n].shape]
    if mismatched:
        listing = "; ".join(f"{n}: adapter {a} vs model {m}" for n, a, m in mismatched[:5])
        raise AdapterFileError(f"{source} was trained for a base model of another shape: {listing}")
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(tensors[name].to(device=target.device, dtype=target.dtype))


def base_model_info(model: nn.Module) -> dict[str, Any]:
    """Model type and a fingerprint of the base parameters' names and shapes."""
    added = {id(p) for m in model.modules() if isinstance(m, AdapterModule) for _, p in m.adapter_parameters()}
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        if id(parameter) not in added:
            digest.update(f"{name.replace('.base_layer', '')}:{tuple(parameter.shape)};".encode())
    config = getattr(model, "config", None)
    return {
        "model_type": getattr(config, "model_type", None),
        "name_or_path": getattr(config, "_name_or_path", None) or None,
        "fingerprint": digest.hexdigest()[:16],
    }


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _peftlab_version() -> str:
    try:
        return version("peftlab")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = ["save_adapter", "load_adapter", "read_adapter_config", "AdapterFileError", "ConfigError"]

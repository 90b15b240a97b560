"""Save and load an adapter alone: ``adapter_config.json`` + ``adapter_model.safetensors``.

Never pickle: tensors go through safetensors, everything else through JSON. A save replaces the
folder atomically. A load checks every tensor name and shape against the model and says what differs.

``adapter_config.json`` holds the method's config, ``peftlab_version``, ``base_model`` (what it was trained
on: ``base_identity.py``) and, for methods that learn a structure, ``report``: facts for readers, written
from the model by the method's ``report`` hook (AdaLoRA: ``{"rank_pattern": {layer: rank},
"total_rank": n}``) and ignored on load (the tensors are the truth).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from peftlab.core.adapter_formats import adapter_formats
from peftlab.core.adapters import only_adapter
from peftlab.core.atomic import atomic_directory, recover_directory
from peftlab.core.base_identity import BaseModelMismatchWarning, base_model_info, check_base_model
from peftlab.core.checks import non_finite_tensors, warn_if_inert
from peftlab.core.config import ConfigError, MethodConfig
from peftlab.core.errors import AdapterFileError, few
from peftlab.core.injection import apply_config, restored_on_error
from peftlab.core.method_hooks import method_report
from peftlab.core.registry import get_method
from peftlab.core.state import (
    DEFAULT_ADAPTER,
    adapter_buffers,
    adapter_parameters,
    adapter_states,
    peft_state,
)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
REPORT_KEY = "report"
HOTSWAP_FREE = ("init", "dropout")  # settings that do not shape the layers or their numbers at inference


@dataclass
class StoredAdapter:
    """What an adapter folder holds, whatever its format: a peftlab config, tensors named as in the model."""

    config: MethodConfig
    tensors: dict[str, torch.Tensor]
    base_model: dict[str, Any] = field(default_factory=dict)
    format: str = "peftlab"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a saved adapter holds (a method may export a different form, e.g. folded prefixes)."""
    state = peft_state(model)
    exporter = get_method(state.method).hooks.export_state if state else None
    if exporter is not None:
        return exporter(model)
    tensors = {name: p.detach() for name, p in adapter_parameters(model)}
    tensors.update({name: b.detach() for name, b in adapter_buffers(model)})
    return tensors


def save_adapter(model: nn.Module, path: str | os.PathLike, tokenizer: Any = None,
                 adapter_name: str | None = None) -> Path:
    """Write the applied method's config and weights to folder ``path`` (replaced atomically).

    Several named adapters are laid out as HF peft lays them out: ``default`` at the top of ``path``, each
    other one in the subfolder of its name (``path/NAME``); with ``adapter_name``, that adapter alone, at the
    top of ``path`` as if it were alone on the base. Pass the ``tokenizer`` when tokens were added (resized
    embeddings): it is saved beside the adapter.
    """
    if not adapter_states(model):
        raise ValueError("nothing to save: this model carries no peftlab method (peftlab.apply first)")
    contents = {}
    for name in [adapter_name] if adapter_name is not None else adapter_states(model):
        with only_adapter(model, name):
            contents[DEFAULT_ADAPTER if adapter_name is not None else name] = _adapter_contents(model)
    path = Path(path)
    with atomic_directory(path) as staging:
        for name, (method, document, tensors) in contents.items():
            folder = staging if name == DEFAULT_ADAPTER else staging / name
            folder.mkdir(exist_ok=True)
            save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "method": method})
            (folder / CONFIG_NAME).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
    return path


def _adapter_contents(model: nn.Module) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter in use: its method, its ``adapter_config.json`` document and its tensors (on the CPU)."""
    state = peft_state(model)
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in adapter_state_dict(model).items()}
    document = {
        **state.config.to_dict(),
        "peftlab_version": _peftlab_version(),
        "base_model": base_model_info(model),
    }
    report = method_report(model)
    if report:
        document[REPORT_KEY] = report
    return state.method, document, tensors


def read_config_json(path: str | os.PathLike) -> dict[str, Any]:
    """The ``adapter_config.json`` of folder ``path`` as a dict (any format), or a clear error."""
    path = Path(path)
    recover_directory(path)
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        named = sorted(p.parent.name for p in path.glob(f"*/{CONFIG_NAME}"))
        raise AdapterFileError(
            f"{path} is not an adapter folder: {CONFIG_NAME} is missing"
            + (f"; it holds named adapters in subfolders ({few(named)}): load each with "
               f"load_adapter(model, '{path}/NAME', adapter_name='NAME')" if named else "")
        )
    try:
        document = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterFileError(f"{config_path} is not valid JSON ({error}); the file is corrupt") from None
    if not isinstance(document, dict):
        raise AdapterFileError(f"{config_path} holds a {type(document).__name__}, not a JSON object; the file is corrupt")
    return document


def read_adapter(path: str | os.PathLike) -> StoredAdapter:
    """Config, tensors and base-model info of an adapter folder in peftlab's format or a registered one."""
    document = read_config_json(path)
    if "method" not in document:
        for _name, detect, read in adapter_formats():
            if detect(document):
                return read(Path(path))
    config = read_adapter_config(path)
    base_model = document.get("base_model")
    return StoredAdapter(config, read_adapter_tensors(path), base_model if isinstance(base_model, dict) else {})


def read_adapter_document(path: str | os.PathLike) -> dict[str, Any]:
    """The raw ``adapter_config.json`` of an adapter folder, checked to be a peftlab adapter config."""
    document = read_config_json(path)
    if "method" not in document:
        known = ", ".join(name for name, _, _ in adapter_formats()) or "none registered"
        raise AdapterFileError(
            f"{Path(path) / CONFIG_NAME} names no 'method': it was not written by peftlab, nor in a format "
            f"peftlab reads ({known})"
        )
    return document


def read_adapter_config(path: str | os.PathLike) -> MethodConfig:
    document = dict(read_adapter_document(path))
    document.pop("base_model", None)
    document.pop(REPORT_KEY, None)
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


def load_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Apply the saved method to a plain base model (or reuse the one it carries) and load its weights.

    With ``adapter_name`` the adapter is added beside those the model carries (inactive, as
    :func:`peftlab.apply` adds one), or loaded into the adapter of that name if it has the same config.
    Reads peftlab's format and any registered one (HF peft; a subfolder of a multi-adapter folder is
    one adapter). On any mismatch the model is left as it was given. Warns when the adapter changes
    nothing or was saved from a differently shaped base.
    """
    stored = read_adapter(path)
    config, tensors = stored.config, stored.tensors
    doubts = check_base_model(model, stored.base_model, tensors, source=str(path))
    bad = non_finite_tensors(tensors)
    if bad:
        raise AdapterFileError(
            f"{path} holds NaN or infinite values in {few(bad)}: training diverged before it was saved; "
            f"use an earlier checkpoint"
        )
    state = adapter_states(model).get(adapter_name)
    if state is not None and state.config != config:
        raise AdapterFileError(
            f"the model already carries {state.method!r} as adapter {adapter_name!r} with another config than the "
            f"adapter in {path}; load it under another adapter_name, or onto a fresh base model"
        )
    with restored_on_error(model):
        if state is None:
            apply_config(model, config, adapter_name)
        with only_adapter(model, adapter_name):
            load_adapter_state_dict(model, tensors, source=str(path))
            _warn_after_load(model, doubts, str(path))
    return model


def hotswap_adapter(model: nn.Module, path: str | os.PathLike, adapter_name: str = DEFAULT_ADAPTER) -> nn.Module:
    """Replace adapter ``adapter_name``'s weights in place by those saved in ``path`` (same method, shapes and
    settings): no module is added or replaced, so a compiled model runs on without recompiling."""
    stored = read_adapter(path)
    state = adapter_states(model).get(adapter_name)
    if state is None:
        raise AdapterFileError(f"no adapter named {adapter_name!r} to hot-swap on this model; load the first one "
                               f"with load_adapter(model, path, adapter_name={adapter_name!r})")
    differences = [f"{key}: {value!r} -> {stored.config.to_dict().get(key)!r}"
                   for key, value in state.config.to_dict().items()
                   if key not in HOTSWAP_FREE and stored.config.to_dict().get(key) != value]
    if differences:
        raise AdapterFileError(
            f"{path} cannot be hot-swapped into adapter {adapter_name!r}: its settings differ ({'; '.join(differences)}), "
            f"which would change the layers themselves; load it as another adapter (load_adapter(..., adapter_name=...))"
        )
    with only_adapter(model, adapter_name):
        load_adapter_state_dict(model, stored.tensors, source=str(path))
    return model


def _warn_after_load(model: nn.Module, doubts: list[str], source: str) -> None:
    for doubt in doubts:
        warnings.warn(doubt, BaseModelMismatchWarning, stacklevel=3)
    warn_if_inert(model, source)


def load_adapter_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "adapter") -> None:
    state = peft_state(model)
    importer = get_method(state.method).hooks.import_state
    if importer is not None:
        importer(model, tensors)
        return
    copy_adapter_tensors(model, tensors, source)


def copy_adapter_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """The generic load: every adapter parameter and buffer from ``tensors``, names and shapes checked
    (a method's ``import_state`` may prepare the model, then call this)."""
    expected = {name: p for name, p in adapter_parameters(model)}
    expected.update(dict(adapter_buffers(model)))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterFileError(
            f"{source} does not fit this model: "
            + (f"missing tensors {few(missing)}; " if missing else "")
            + (f"tensors for modules this model lacks {few(unexpected)}; " if unexpected else "")
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


def _peftlab_version() -> str:
    try:
        return version("peftlab")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = [
    "AdapterFileError",
    "BaseModelMismatchWarning",
    "ConfigError",
    "StoredAdapter",
    "load_adapter",
    "read_adapter",
    "read_adapter_config",
    "register_adapter_format",
    "save_adapter",
]

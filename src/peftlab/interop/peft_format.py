"""The HF peft adapter format: ``adapter_config.json`` (with ``peft_type``) + ``adapter_model.safetensors``
whose tensors are named ``base_model.model.<module>.<weight>``.

One converter per method (``interop/peft_converters.py``) translates its config and tensors both ways; adding a
method to the format is adding one converter file in ``interop/peft_methods/``. This module does the rest, the
same for every method: names and prefixes, ``modules_to_save`` tensors, the fields peft expects,
tokenizer files, and reading a peft folder for :func:`peftlab.load_adapter`. peft itself is not needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from peftlab.core.adapters import only_adapter
from peftlab.core.atomic import atomic_directory
from peftlab.core.base_identity import base_model_info
from peftlab.core.config import MethodConfig
from peftlab.core.outputs import OutputKind, claim_output
from peftlab.core.serialization import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    AdapterFileError,
    StoredAdapter,
    adapter_state_dict,
    read_adapter,
    read_config_json,
)
from peftlab.core.state import DEFAULT_ADAPTER, adapter_states, peft_state
from peftlab.interop.peft_converters import (
    PREFIX,
    Grouped,
    UnsupportedPeftAdapter,
    converter_for_method,
    converter_for_peft,
    exact_patterns,
    saved_module_tensors,
    supported_methods,
    task_type_for,
)
from peftlab.interop.peft_tokens import BESIDE_LORA, ROWS, split_token_rows, tokens_from_peft, tokens_to_peft

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja",
)
ADAPTER_FILES = (WEIGHTS_NAME, CONFIG_NAME, *TOKENIZER_FILES)  # what export and import write
EXPORT_OUTPUT = OutputKind(command="peftlab export", flag="DST", owns=ADAPTER_FILES)
IMPORT_OUTPUT = OutputKind(command="peftlab import", flag="DST", owns=ADAPTER_FILES)
# Task types for which peft wraps the classification head in modules_to_save.
HEAD_TASKS = ("SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS")


def is_peft_document(document: dict[str, Any]) -> bool:
    return "peft_type" in document and "method" not in document


def _split(tensors: dict[str, torch.Tensor], weights: tuple[str, ...]) -> tuple[Grouped, dict[str, torch.Tensor]]:
    """Method tensors grouped by module, and the rest (modules_to_save parameters)."""
    grouped: Grouped = {}
    rest: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        weight = next((w for w in weights if name == w or name.endswith("." + w)), None)
        if weight is None:
            rest[name] = tensor
        else:
            grouped.setdefault(name[: -len(weight)].rstrip("."), {})[weight] = tensor
    return grouped, rest


def _join(grouped: Grouped) -> dict[str, torch.Tensor]:
    return {(f"{module}.{weight}" if module else weight): t for module, ws in grouped.items() for weight, t in ws.items()}


def _owner_modules(names: list[str]) -> list[str]:
    return sorted({name.rpartition(".")[0] for name in names})


def to_peft(stored: StoredAdapter, lora_only: bool = False) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """peft's ``adapter_config.json`` fields and tensors for a peftlab adapter."""
    converter = converter_for_method(stored.config.method)
    config = stored.config
    saved, own = saved_module_tensors(stored.tensors, config.modules_to_save, stored.base_model.get("model_type"))
    tokens, own = split_token_rows(own) if ROWS not in converter.weights else (None, own)  # rows beside the method
    grouped, rest = _split(own, converter.weights)
    rest.update(saved)
    if lora_only and rest:
        config, rest = replace(config, modules_to_save=()), {}
    document, peft_grouped = converter.to_peft(config, grouped, stored.base_model)
    base = stored.base_model
    modules_to_save = _owner_modules(list(rest))
    task_type = task_type_for(base.get("architecture"), base.get("model_type"))
    if task_type in HEAD_TASKS and not modules_to_save:
        task_type = None  # peft would expect a saved copy of the untrained head
    if document.get("task_type") in HEAD_TASKS and not modules_to_save:
        raise UnsupportedPeftAdapter(
            f"peft's {converter.peft_type} on a {base.get('architecture')} needs the classification head saved "
            f"with the adapter; train it beside the method (modules_to_save=['classifier'], or 'score')"
        )
    document = {
        "peft_type": converter.peft_type,
        "task_type": task_type,
        "base_model_name_or_path": base.get("name_or_path"),
        "revision": None,
        "inference_mode": True,
        **document,
        "modules_to_save": modules_to_save or None,
    }
    tensors = {
        (f"{converter.prefix}{module}.{weight}" if module else weight): t
        for module, weights in peft_grouped.items() for weight, t in weights.items()
    }
    tensors.update({converter.prefix + name: t for name, t in rest.items()})
    if tokens is not None:
        fields, token_tensors = tokens_to_peft(converter.peft_type, tokens)
        document.update(fields)
        tensors.update({converter.prefix + name: t for name, t in token_tensors.items()})
    return document, tensors


def from_peft(document: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[MethodConfig, dict[str, torch.Tensor]]:
    """The peftlab config and tensors (named as in the model) of a peft adapter."""
    converter = converter_for_peft(document)
    prefix = converter.prefix
    plain = {(name[len(prefix):] if name.startswith(prefix) else name): t for name, t in tensors.items()}
    beside = document.get("trainable_token_indices")  # LoRA plus trainable tokens
    indices, token_tensors, plain = (tokens_from_peft(document, plain, BESIDE_LORA, list(beside) if isinstance(beside, dict)
                                                      else None) if beside else ([], {}, plain))
    grouped, rest = _split(plain, converter.peft_weights)
    _check_modules_to_save(document, list(rest))
    if not grouped:
        raise AdapterFileError(f"the {document.get('peft_type')} adapter holds no {' / '.join(converter.peft_weights)} tensors")
    config, ours = converter.from_peft(document, grouped)
    if rest:
        config = replace(config, modules_to_save=exact_patterns(_owner_modules(list(rest))))
    if indices:
        config = replace(config, token_indices=tuple(indices))
    return config, {**_join(ours), **rest, **token_tensors}


def _check_modules_to_save(document: dict[str, Any], names: list[str]) -> None:
    """Tensors that are not the method's must belong to a ``modules_to_save`` module, or peftlab would
    silently treat an unknown adapter weight (e.g. LoRA on an embedding) as a trained base weight."""
    saved = list(document.get("modules_to_save") or [])
    if document.get("task_type") == "SEQ_CLS":
        saved += ["classifier", "score"]
    patterns = [re.compile(rf"(?:.*\.)?{re.escape(entry)}\..+") for entry in saved if isinstance(entry, str)]
    strays = [name for name in names if not any(p.fullmatch(name) for p in patterns)]
    if strays:
        raise UnsupportedPeftAdapter(
            f"the {document.get('peft_type')} adapter holds tensors peftlab does not read: {', '.join(strays[:5])}"
            + (f" and {len(strays) - 5} more" if len(strays) > 5 else "")
            + " (e.g. LoRA on embeddings or bias terms); merge it with peft instead"
        )


def read_peft_folder(path: Path) -> StoredAdapter:
    """A peft adapter folder as peftlab sees it (safetensors only: a pickled ``adapter_model.bin`` is refused)."""
    document = read_config_json(path)
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        pickled = [name for name in ("adapter_model.bin", "adapter_model.pt") if (path / name).is_file()]
        if pickled:
            raise AdapterFileError(
                f"{path / pickled[0]} is a pickle file, which can run code when loaded; peftlab reads safetensors only. "
                f"In a trusted environment, re-save it with peft: PeftModel.from_pretrained(base, dir)"
                f".save_pretrained(out, safe_serialization=True)"
            )
        raise AdapterFileError(f"{path} has no {WEIGHTS_NAME}")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterFileError(f"{weights} is corrupt or truncated ({error}); save the adapter again") from None
    config, ours = from_peft(document, tensors)
    base = _saved_base_info(metadata) or {"name_or_path": document.get("base_model_name_or_path")}
    return StoredAdapter(config, ours, base, format="peft")


def _saved_base_info(metadata: dict[str, str]) -> dict[str, Any]:
    try:
        info = json.loads(metadata.get("peftlab_base_model", "{}"))
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def _stored(source: str | os.PathLike | nn.Module) -> StoredAdapter:
    if isinstance(source, nn.Module):
        state = peft_state(source)
        if state is None:
            raise UnsupportedPeftAdapter("this model carries no peftlab method; nothing to export")
        tensors = {n: t.detach().to("cpu").contiguous().clone() for n, t in adapter_state_dict(source).items()}
        return StoredAdapter(state.config, tensors, base_model_info(source))
    return read_adapter(source)


def export_peft(
    source: str | os.PathLike | nn.Module, destination: str | os.PathLike, *, lora_only: bool = False,
    overwrite: bool = True,
) -> Path:
    """Write a peftlab adapter (a folder or an adapted model) as a peft adapter folder, atomically.

    Named adapters keep their names, in peft's layout: ``default`` at the top, each other one in the
    subfolder of its name (from a model with several adapters, or a folder saved from one).

    ``destination`` is checked first by the output policy (:mod:`peftlab.core.outputs`): never the source,
    and an existing adapter folder is replaced only with ``overwrite`` (the Python default; the CLI's is off).

    ``lora_only`` drops the ``modules_to_save`` weights (trained heads, embeddings), which servers
    such as vLLM refuse; the exported adapter then no longer reproduces them.
    """
    named = _named_sources(source)
    inputs = {"SRC": None if isinstance(source, nn.Module) else source}
    kind = replace(EXPORT_OUTPUT, owns=EXPORT_OUTPUT.owns + tuple(n for n in named if n != DEFAULT_ADAPTER))
    destination = claim_output(destination, kind, overwrite=overwrite, inputs=inputs)
    converted = {name: (stored, *to_peft(stored, lora_only=lora_only)) for name, stored in named.items()}
    with atomic_directory(destination) as staging:
        for name, (stored, document, tensors) in converted.items():
            folder = _named_folder(staging, name)
            metadata = {"format": "pt", "peftlab_method": stored.config.method,
                        "peftlab_base_model": json.dumps(stored.base_model, sort_keys=True)}
            save_file({n: t.contiguous() for n, t in tensors.items()}, str(folder / WEIGHTS_NAME), metadata=metadata)
            (folder / CONFIG_NAME).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        _copy_tokenizer(source, staging)
    return destination


def import_peft(source: str | os.PathLike, destination: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Convert a peft adapter folder to a peftlab one (config with ``method``, tensors named as in the model),
    with ``destination`` checked as in :func:`export_peft`; a multi-adapter folder keeps its layout."""
    folders = named_adapter_folders(Path(source))
    kind = replace(IMPORT_OUTPUT, owns=IMPORT_OUTPUT.owns + tuple(n for n in folders if n != DEFAULT_ADAPTER))
    destination = claim_output(destination, kind, overwrite=overwrite, inputs={"SRC": source})
    converted = {name: read_peft_folder(folder) for name, folder in folders.items()}
    with atomic_directory(destination) as staging:
        for name, stored in converted.items():
            folder = _named_folder(staging, name)
            document = {**stored.config.to_dict(), "base_model": {**stored.base_model, "imported_from": "peft"}}
            save_file(stored.tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt", "method": stored.config.method})
            (folder / CONFIG_NAME).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        _copy_tokenizer(source, staging)
    return destination


def named_adapter_folders(path: Path) -> dict[str, Path]:
    """``{adapter name: folder}`` of an adapter folder in peft's multi-adapter layout (just ``default`` for a
    folder of one adapter)."""
    folders = {DEFAULT_ADAPTER: path} if (path / CONFIG_NAME).is_file() else {}
    folders.update({sub.name: sub for sub in sorted(path.iterdir()) if (sub / CONFIG_NAME).is_file()}
                   if path.is_dir() else {})
    if not folders:
        read_config_json(path)  # raises the clear error for a folder without an adapter
    return folders


def _named_sources(source: str | os.PathLike | nn.Module) -> dict[str, StoredAdapter]:
    if isinstance(source, nn.Module):
        names = list(adapter_states(source))
        if len(names) <= 1:
            return {names[0] if names else DEFAULT_ADAPTER: _stored(source)}
        named = {}
        for name in names:
            with only_adapter(source, name):
                named[name] = _stored(source)
        return named
    return {name: read_adapter(folder) for name, folder in named_adapter_folders(Path(source)).items()}


def _named_folder(staging: Path, name: str) -> Path:
    folder = staging if name == DEFAULT_ADAPTER else staging / name
    folder.mkdir(exist_ok=True)
    return folder


def _copy_tokenizer(source: Any, staging: Path) -> None:
    if isinstance(source, nn.Module):
        return
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, staging / name)

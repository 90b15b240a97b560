"""Tokenised training data cached between runs (``$PEFTLAB_CACHE/features/<key>.safetensors``).

The key is a digest of everything that changes the features: the task (name, kind, separator), the
examples themselves (text, pair, label, target, few-shot parts: so another data file, split, sample,
holdout or prompt template gives another key, and an edited data file too, without trusting file
times), the tokenizer (its full serialised form, special tokens and sides), the model kind, the
maximum length, and the source of the encoding code. Reading the examples is cheap; tokenising them
is what the cache saves.

An entry is one safetensors file: each list field as its values laid end to end plus one length per
example, each scalar field as one vector; the metadata names the fields and holds a digest of the
tensors, checked on every read. A file that does not read whole (truncated, edited, another format)
is rebuilt, never served.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from peftlab.core.atomic import write_bytes_atomic
from peftlab.core.cache import cache_root, digest, source_code_digest, warn_unwritable
from peftlab.tasks import Example, Task
from peftlab.train import encoding
from peftlab.train.encoding import Features, encode

FORMAT = "peftlab-features-1"


class CacheEntryError(ValueError):
    """A cache entry that does not read whole; the caller rebuilds it."""


def encode_cached(task: Task, examples: Sequence[Example], tokenizer: Any, kind: str,
                  max_length: int) -> tuple[list[Features], dict[str, Any]]:
    """``encode(...)``'s features, from the cache when an entry for exactly these inputs reads whole, and
    what happened (``{"tokenize_s", "features_cached": bool}``)."""
    started = time.perf_counter()
    path = entry_path(task, examples, tokenizer, kind, max_length)
    if path is not None and path.is_file():
        try:
            features = read_features(path)
            if len(features) == len(examples):
                return features, {"tokenize_s": time.perf_counter() - started, "features_cached": True}
        except (OSError, CacheEntryError, SafetensorError):
            pass  # rebuilt below, and written over
    features = encode(task, examples, tokenizer, kind, max_length)
    if path is not None:
        try:
            write_features(path, features)
        except (OSError, CacheEntryError) as error:
            warn_unwritable(str(path), error)
    return features, {"tokenize_s": time.perf_counter() - started, "features_cached": False}


def entry_path(task: Task, examples: Sequence[Example], tokenizer: Any, kind: str, max_length: int) -> Path | None:
    """Where these inputs' features are cached; None when caching is off or the tokenizer has no fingerprint."""
    root = cache_root()
    fingerprint = tokenizer_fingerprint(tokenizer)
    if root is None or fingerprint is None:
        return None
    rows = (json.dumps([e.text, e.text_pair, e.label, e.target, list(e.shots)] + ([e.messages] if e.messages else []))
            for e in examples)
    template = [str(getattr(tokenizer, "chat_template", None))] if any(e.messages for e in examples) else []
    key = digest([FORMAT, task.name, task.kind, repr(getattr(task, "separator", None)), kind, str(max_length),
                  fingerprint, source_code_digest(encoding), digest(rows), *template])
    return root / "features" / f"{key}.safetensors"


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """A digest of what the tokenizer does: its fast backend serialised (less the truncation and padding state
    that each call sets), its special tokens and sides.
    None for a tokenizer without a serialisable backend (then nothing is cached)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return None
    serialised = json.loads(backend.to_str())
    for state in ("truncation", "padding"):  # set on the backend by each call's arguments, not part of it
        serialised.pop(state, None)
    specials = json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str)
    return digest([type(tokenizer).__name__, json.dumps(serialised, sort_keys=True), specials, str(getattr(tokenizer, "padding_side", "")),
                   str(getattr(tokenizer, "truncation_side", "")), str(tokenizer.eos_token_id)])


def write_features(path: Path, features: Sequence[Features]) -> None:
    """One safetensors file: ``<field>.values`` + ``<field>.lengths`` per list field, ``<field>.scalar`` otherwise."""
    if not features:
        raise CacheEntryError("no features to cache")
    tensors: dict[str, torch.Tensor] = {}
    for name in features[0]:
        values = [feature[name] for feature in features]
        if all(isinstance(v, list) for v in values):
            tensors[f"{name}.values"] = torch.tensor([x for v in values for x in v], dtype=torch.int64)
            tensors[f"{name}.lengths"] = torch.tensor([len(v) for v in values], dtype=torch.int64)
        elif all(isinstance(v, int) for v in values):
            tensors[f"{name}.scalar"] = torch.tensor(values, dtype=torch.int64)
        elif all(isinstance(v, (int, float)) for v in values):
            tensors[f"{name}.scalar"] = torch.tensor(values, dtype=torch.float64)
        else:
            raise CacheEntryError(f"field {name!r} mixes lists and scalars (or holds None)")
    metadata = {"format": FORMAT, "fields": json.dumps(list(features[0])), "count": str(len(features)),
                "digest": _tensors_digest(tensors)}
    write_bytes_atomic(path, save_tensors(tensors, metadata=metadata))


def read_features(path: Path) -> list[Features]:
    """The features of a cache entry; :class:`CacheEntryError` (or SafetensorError) when it does not read whole."""
    data = path.read_bytes()
    tensors = load_tensors(data)
    metadata = _metadata(data)
    if metadata.get("format") != FORMAT or metadata.get("digest") != _tensors_digest(tensors):
        raise CacheEntryError(f"{path} is not a whole features entry")
    count, fields = int(metadata["count"]), json.loads(metadata["fields"])
    columns: dict[str, list] = {}
    for name in fields:
        if f"{name}.scalar" in tensors:
            columns[name] = tensors[f"{name}.scalar"].tolist()
            continue
        values, lengths = tensors[f"{name}.values"].tolist(), tensors[f"{name}.lengths"].tolist()
        if sum(lengths) != len(values):
            raise CacheEntryError(f"{path}: field {name!r} does not add up")
        column, start = [], 0
        for length in lengths:
            column.append(values[start:start + length])
            start += length
        columns[name] = column
    if any(len(column) != count for column in columns.values()):
        raise CacheEntryError(f"{path}: fields of different lengths")
    return [{name: columns[name][i] for name in fields} for i in range(count)]


def _metadata(data: bytes) -> dict[str, str]:
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]).get("__metadata__", {})


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    return digest(part for name in sorted(tensors) for part in (name, tensors[name].numpy().tobytes()))

"""Converted weights of GGUF models, cached (``$PEFTLAB_CACHE/weights/<key>/``).

transformers reads a GGUF file by dequantising every tensor, at every start. The first load converts the
file once into an ordinary model folder (config.json, model.safetensors, the tokenizer's files); later
loads read that folder instead.

The key is a digest of the GGUF file's resolved path, size, modification time and first MiB, and the
transformers version that converted it: replacing or editing the file (or upgrading transformers)
gives another key, so a stale conversion is never read. The folder is built in a staging folder and
renamed into place whole (:func:`peftlab.core.atomic.atomic_directory`), with ``manifest.json`` naming
every file's size; an entry whose manifest is missing or whose files do not match it (a disk that lost
part of a file) is converted again, never served.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from peftlab.core.atomic import atomic_directory
from peftlab.core.cache import cache_root, digest, file_digest, warn_unwritable
from peftlab.core.errors import UserError

FORMAT = "peftlab-gguf-weights-1"
MANIFEST = "manifest.json"
HEAD_BYTES = 1 << 20

Converter = Callable[[Path, Path], None]  # (GGUF file, empty folder to write the model folder into)


def convert_gguf(gguf: Path, staging: Path) -> None:
    """Dequantise ``gguf`` with transformers and save it as a model folder (safetensors, config, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options = {"gguf_file": gguf.name}
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **options)
    # Dequantised, the weights are plain tensors; transformers still marks the model as GGUF-quantised and
    # refuses to save it, so the marks go (the saved folder is an ordinary float model).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(staging)
    AutoTokenizer.from_pretrained(str(gguf.parent), **options).save_pretrained(staging)


def entry_key(gguf: Path) -> str:
    import transformers

    stat = gguf.stat()
    return digest([FORMAT, str(gguf.resolve()), str(stat.st_size), str(stat.st_mtime_ns),
                   file_digest(gguf, HEAD_BYTES), transformers.__version__])


def converted_folder(gguf: str | os.PathLike, convert: Converter = convert_gguf) -> Path | None:
    """The cached model folder for ``gguf``, converted first if there is no whole entry for it; None when
    caching is off or the cache cannot be written (the caller then reads the GGUF file itself)."""
    root = cache_root()
    if root is None:
        return None
    gguf = Path(gguf)
    key = entry_key(gguf)
    folder = root / "weights" / key
    if entry_is_whole(folder, key):
        return folder
    try:
        with atomic_directory(folder) as staging:
            convert(gguf, staging)
            files = {p.name: p.stat().st_size for p in sorted(staging.iterdir()) if p.is_file()}
            manifest = {"format": FORMAT, "key": key, "source": str(gguf.resolve()), "files": files}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    except (OSError, UserError) as error:  # a full disk or a read-only cache: load from the GGUF file
        warn_unwritable(str(folder), error)
        return None
    return folder


def entry_is_whole(folder: Path, key: str) -> bool:
    """Whether ``folder`` holds a finished conversion for ``key``, every file at its recorded size."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        return (manifest.get("format") == FORMAT and manifest.get("key") == key and bool(manifest["files"])
                and all((folder / name).stat().st_size == size for name, size in manifest["files"].items()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False

"""peftlab's cache folder: files derived from inputs (tokenised data, converted weights) that a later run
may reuse instead of deriving them again.

The folder is ``$PEFTLAB_CACHE``, else ``$XDG_CACHE_HOME/peftlab``, else ``~/.cache/peftlab``;
``PEFTLAB_CACHE=off`` turns caching off. Every entry is named by a digest of everything that changes
its content (see the users: :mod:`peftlab.train.feature_cache`, :mod:`peftlab.train.weights_cache`), is
written atomically (:mod:`peftlab.core.atomic`), and is checked when read: an entry that does not read
whole is rebuilt, never served. Entries are safetensors or JSON, never pickle.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

OFF = ("off", "0", "none", "false")


def cache_root() -> Path | None:
    """The cache folder, or None when caching is off."""
    given = os.environ.get("PEFTLAB_CACHE")
    if given is not None:
        return None if given.strip().lower() in OFF or not given.strip() else Path(given).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "peftlab"


def digest(parts: Iterable[str | bytes]) -> str:
    """A hex digest (BLAKE2b, 20 bytes) of ``parts``, each framed by its length so no two lists collide."""
    hasher = hashlib.blake2b(digest_size=20)
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()


def file_digest(path: str | os.PathLike, limit: int | None = None) -> str:
    """The digest of a file's bytes (its first ``limit`` bytes only, when given)."""
    hasher = hashlib.blake2b(digest_size=20)
    left = limit
    with open(path, "rb") as handle:
        while left is None or left > 0:
            block = handle.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            hasher.update(block)
            if left is not None:
                left -= len(block)
    return hasher.hexdigest()


def source_code_digest(*modules: object) -> str:
    """The digest of the named modules' source files: an entry derived by that code is rebuilt when it changes."""
    return digest(Path(module.__file__).read_bytes() for module in modules)  # type: ignore[attr-defined]


def warn_unwritable(what: str, error: BaseException) -> None:
    """A cache that cannot be written costs time, not the run: say so once, go on without it."""
    warnings.warn(f"peftlab cache: could not write {what} ({type(error).__name__}: {error}); continuing without "
                  f"the cache (set PEFTLAB_CACHE to a writable folder, or PEFTLAB_CACHE=off)", stacklevel=3)

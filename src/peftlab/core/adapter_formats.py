"""Adapter formats other than peftlab's own that :func:`peftlab.load_adapter` reads (HF peft's, registered
by :mod:`peftlab.interop`). The first lookup imports ``FORMATS_PACKAGE``, so the formats are there however
the library was entered, and a command that never loads an adapter imports none."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMATS_PACKAGE = "peftlab.interop"  # importing it registers the formats it reads
Detect = Callable[[dict], bool]  # sees the folder's adapter_config.json
Read = Callable[[Path], Any]  # the folder read as a core.serialization.StoredAdapter (which imports this module)
_FORMATS: list[tuple[str, Detect, Read]] = []


def register_adapter_format(name: str, detect: Detect, read: Read) -> None:
    """Let :func:`peftlab.load_adapter` read another format's folder: ``detect`` sees its config document."""
    if all(existing != name for existing, _, _ in _FORMATS):
        _FORMATS.append((name, detect, read))


def adapter_formats() -> list[tuple[str, Detect, Read]]:
    """``(name, detect, read)`` of every registered format, ``FORMATS_PACKAGE`` imported first."""
    importlib.import_module(FORMATS_PACKAGE)
    return _FORMATS

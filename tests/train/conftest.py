"""Tiny model folders (one per family, saved once per session) and the real data root."""

from __future__ import annotations

import pytest

from tasks.data_root_helper import real_data_root
from train.tiny import save_tiny


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: save_tiny(family, root / family) for family in ("bert", "t5", "llama", "gpt2")}


@pytest.fixture(scope="session")
def still_bert(tmp_path_factory):
    """Tiny BERT without dropout: runs in different process layouts draw no masks to compare."""
    return save_tiny("bert", tmp_path_factory.mktemp("tiny-still") / "bert", dropout=False)


@pytest.fixture(scope="session")
def data_root():
    return real_data_root()

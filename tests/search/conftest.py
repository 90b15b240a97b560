"""The search's tests run on the bench tests' tiny offline workspace (a seeded tiny BERT and SST-2-layout data)."""

from __future__ import annotations

import pytest

from bench.conftest import tiny_workspace  # noqa: F401  (the fixture, shared)


@pytest.fixture
def select_command(tiny_workspace, tmp_path, monkeypatch):  # noqa: F811
    """``peftlab select`` arguments for a search on the tiny workspace: a few steps a trial, all on CPU."""
    monkeypatch.setenv("PEFTLAB_DATA", str(tiny_workspace["data"]))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def command(*extra: str, output: str | None = None) -> list[str]:
        return ["select", "--model", str(tiny_workspace["model"]), "--task", "sst2",
                "--output", output or str(tmp_path / "select"), "--holdout", "12", "--batch-size", "8",
                "--max-length", "16", "--max-steps", "4", "--eval-steps", "1", "--heartbeat", "1",
                "--seeds", "0", *extra]

    return command

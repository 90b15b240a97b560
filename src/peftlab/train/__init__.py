"""Fine-tune any registered method on the survey's tasks.

    from peftlab.train import TrainArgs, run_training
    metrics = run_training(TrainArgs(model="minilm-l6", task="sst2", method="lora", output_dir="runs/x"))

``run_training`` returns the run's record (also written to ``<output_dir>/metrics.json``).
"""

from __future__ import annotations

import importlib
from typing import Any

from peftlab.train.args import ArgumentError, EvalArgs, TrainArgs

__all__ = ["ArgumentError", "EvalArgs", "TrainArgs", "run_training"]


def __getattr__(name: str) -> Any:
    """``run_training`` (torch and transformers) imported on first use (PEP 562): the CLI's parser reads
    :class:`TrainArgs` without them. (``evaluate_adapter`` is imported from its module, which has its name.)"""
    if name == "run_training":
        return importlib.import_module("peftlab.train.loop").run_training
    raise AttributeError(f"module 'peftlab.train' has no attribute {name!r}")

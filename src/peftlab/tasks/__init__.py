"""The survey's benchmark tasks: one module per benchmark (its data loader and official metric).

    from peftlab.tasks import get_task
    task = get_task("sst2")
    dev = task.load("dev", data_dir="data/")     # or $PEFTLAB_DATA, or the HuggingFace hub
    task.metrics(predictions, dev)

Importing this package registers every task module in it.
"""

from __future__ import annotations

import importlib
import pkgutil

from peftlab.tasks.base import DATA_ENV, Example, Task, TaskError, get_task, subsample, task_names

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "metrics"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["DATA_ENV", "Example", "Task", "TaskError", "get_task", "subsample", "task_names"]

"""A configuration's footprint before it trains: the base model is loaded once, and each candidate is
applied to a copy of it and counted by the rules peftlab's records use (trainable parameters as
:func:`peftlab.parameter_report` counts them, the task's new head included; memory as
:func:`peftlab.bench.memory.predicted`: weights + gradients + AdamW state, activations not predicted)."""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

import peftlab
from peftlab.bench.memory import predicted
from peftlab.core.architectures import ARCHITECTURES, architecture_of
from peftlab.core.errors import UserError
from peftlab.core.targeting import find_modules
from peftlab.search.space import Candidate
from peftlab.tasks import Task
from peftlab.tasks.files import task_for
from peftlab.train.args import TrainArgs
from peftlab.train.models import load_model
from peftlab.train.plan import method_options


class SearchError(UserError, ValueError):
    """The search cannot start: its model, task or budgets do not allow it."""


@dataclass(frozen=True)
class Footprint:
    trainable: int
    base: int
    memory_bytes: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.base


class Footprints:
    """The search's base model (with the task's head), loaded once; candidates are counted on copies."""

    def __init__(self, args: TrainArgs) -> None:
        self.args = args
        self.task: Task = task_for(args.task, dataclasses.asdict(args))
        self.loaded = load_model(args.model, self.task)
        if architecture_of(self.loaded.model) is None:
            model_type = getattr(self.loaded.model.config, "model_type", type(self.loaded.model).__name__)
            raise SearchError(f"model {args.model!r} is a {model_type!r} model; the search chooses target modules "
                              f"by the presets peftlab has for {', '.join(ARCHITECTURES)} models only: give one "
                              f"of those (e.g. minilm-l6), or tune this one with `peftlab train` and your own "
                              f"target patterns")

    def measure(self, candidate: Candidate) -> Footprint:
        model = copy.deepcopy(self.loaded.model)
        args = dataclasses.replace(self.args, method=candidate.method, options=candidate.options)
        peftlab.apply(model, candidate.method, **method_options(args, self.loaded.head, total_steps=1))
        report = peftlab.parameter_report(model)
        memory = sum(value for value in predicted(model).values() if value is not None)
        return Footprint(trainable=report.trainable, base=report.base, memory_bytes=memory)

    def upper_layers(self, targets: Sequence[str]) -> list[str]:
        """Patterns for the modules ``targets`` choose in the upper half of each layer stack (the layer
        number is a module name's first number: encoder and decoder blocks alike)."""
        names = [name for name, _ in find_modules(self.loaded.model, list(targets))]
        numbered = [(name, re.search(r"\.(\d+)\.", name)) for name in names]
        depth = 1 + max((int(match.group(1)) for _, match in numbered if match), default=0)
        upper = [str(layer) for layer in range(depth // 2, depth)]
        patterns = []
        for name, match in numbered:
            if match is None or match.group(1) not in upper:
                continue
            prefix, suffix = name[:match.start(1)], name[match.end(1):]
            patterns.append(f"{re.escape(prefix)}(?:{'|'.join(upper)}){re.escape(suffix)}")
        return list(dict.fromkeys(patterns))

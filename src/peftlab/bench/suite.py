"""A suite: a small YAML file naming models x tasks x methods x seeds, expanded into runs.

    name: quick
    seeds: [0]
    models: [minilm-l6]
    tasks: [{task: sst2, training: {max_train_samples: 2000}}]
    training: {epochs: 1, learning_rate: 5.0e-4}      # defaults for every run
    methods:
      - full: {training: {learning_rate: 5.0e-5}}     # per-method training overrides
      - lora: {options: {rank: 8}}                     # method options (peftlab methods --options lora)
      - method: lora                                   # a grid: one entry per combination, each value a knob
        grid: {rank: [1, 4, 16, 64], target_modules: [attention_qv, all_linear]}
      - method: lora                                   # a grid over training settings too
        grid: {learning_rate: [1.0e-4, 1.0e-3]}
      - untuned                                        # the base model scored as it is (no method, no step)

A suite whose models need different tasks (the ``paper`` suite) lists ``experiments:``, each a
mapping of the same keys that inherits what it leaves out. Training settings merge in this order,
later winning: suite, experiment, model, task, method. Everything is checked (methods, their options, tasks, training keys) before anything runs.

This module holds what a suite is (its entries and the runs it expands to); :mod:`peftlab.bench.suite_file`
reads and checks the YAML.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peftlab.bench.builtin_suites import SUITES_DIR
from peftlab.core.errors import UserError
from peftlab.core.registry import get_method

UNTUNED = "untuned"  # peftlab.train.args.UNTUNED (bench reads no train module at import)



class SuiteError(UserError):
    """A suite file that cannot run; the message names the entry and the fix."""


@dataclass(frozen=True)
class ModelEntry:
    """A model: an alias, HF name or path; optionally a random-init fallback of the same shape (cost-only)."""

    name: str
    source: str
    training: dict[str, Any] = field(default_factory=dict)
    random_init: dict[str, Any] | None = None
    tokenizer: str | None = None


@dataclass(frozen=True)
class TaskEntry:
    name: str
    task: str
    training: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodEntry:
    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: everything the worker needs, and the identity resume compares."""

    suite: str
    model: str
    model_source: str
    task: str
    task_name: str
    label: str
    method: str
    family: str
    options: dict[str, Any]
    training: dict[str, Any]
    seed: int
    knobs: dict[str, Any] = field(default_factory=dict)
    random_init: dict[str, Any] | None = None
    tokenizer: str | None = None

    @property
    def run_id(self) -> str:
        return "--".join(slug(part) for part in (self.model, self.task, self.label, f"s{self.seed}"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(**data)


@dataclass(frozen=True)
class Experiment:
    """One product of models x tasks x methods x seeds; a suite is one or more of them."""

    models: tuple[ModelEntry, ...]
    tasks: tuple[TaskEntry, ...]
    methods: tuple[MethodEntry, ...]
    seeds: tuple[int, ...]
    training: dict[str, Any]

    def runs(self, suite: str) -> list[RunSpec]:
        runs = []
        for model, task, method, seed in itertools.product(self.models, self.tasks, self.methods, self.seeds):
            training = {**self.training, **model.training, **task.training, **method.training}
            runs.append(RunSpec(
                suite=suite, model=model.name, model_source=model.source, task=task.name,
                task_name=task.task, label=method.label, method=method.method,
                family="baseline" if method.method == UNTUNED else get_method(method.method).family, options=dict(method.options), training=training,
                seed=seed, knobs=dict(method.knobs), random_init=model.random_init, tokenizer=model.tokenizer,
            ))
        return runs


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    experiments: tuple[Experiment, ...]

    def runs(self) -> list[RunSpec]:
        """Every run, in a fixed order: per experiment, models x tasks x methods x seeds."""
        return [run for experiment in self.experiments for run in experiment.runs(self.name)]


def slug(text: str) -> str:
    """A file-name-safe form of a label: ``google-t5/t5-small`` -> ``google-t5_t5-small``."""
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "_", str(text)).strip("_") or "_"

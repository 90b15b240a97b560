"""Reading a suite file: the YAML's shape checked key by key (unknown keys, bad entries, methods, their options,
tasks and training keys), each error naming where it is, before anything runs. The format is described in
:mod:`peftlab.bench.suite`."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from peftlab.bench.builtin_suites import available_suites
from peftlab.bench.suite import (SUITES_DIR, UNTUNED, Experiment, MethodEntry, ModelEntry, Suite, SuiteError,
                                 TaskEntry)
from peftlab.core.errors import UserError
from peftlab.core.registry import get_method


def suite_path(name_or_path: str) -> Path:
    """A built-in suite name (``quick``) or the path of a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SuiteError(f"suite file {path} does not exist; built-in suites: {', '.join(available_suites())}")
        return path
    builtin = SUITES_DIR / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise SuiteError(
            f"unknown suite {name_or_path!r}; built-in suites: {', '.join(available_suites())}, or pass a YAML path"
        )
    return builtin


def load_suite(
    name_or_path: str,
    known_tasks: Iterable[str] | None = None,
    check_training: Callable[[dict[str, Any], str], None] | None = None,
) -> Suite:
    """Read and fully validate a suite; ``known_tasks`` and ``check_training`` come from the train package."""
    path = suite_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SuiteError(f"{path}: not valid YAML ({error})") from None
    return parse_suite(data, str(path), known_tasks, check_training)


def parse_suite(
    data: Any,
    where: str,
    known_tasks: Iterable[str] | None = None,
    check_training: Callable[[dict[str, Any], str], None] | None = None,
) -> Suite:
    data = _mapping(data, where)
    _only_keys(data, where, {"name", "description", "experiments", *EXPERIMENT_KEYS})
    parts = data.get("experiments")
    if parts is None:
        experiments = (_experiment(data, where),)
    elif not isinstance(parts, list) or not parts:
        raise SuiteError(f"{where}: 'experiments' must be a non-empty list of mappings")
    else:
        defaults = {key: data[key] for key in EXPERIMENT_KEYS if key in data}
        experiments = tuple(
            _experiment({**defaults, **_only(part, f"{where}: experiments[{i}]"),
                         "training": {**defaults.get("training", {}), **(part.get("training") or {})}},
                        f"{where}: experiments[{i}]")
            for i, part in enumerate(parts))
    suite = Suite(str(data.get("name") or Path(where).stem), str(data.get("description", "")).strip(), experiments)
    _check(suite, where, known_tasks, check_training)
    return suite


EXPERIMENT_KEYS = ("models", "tasks", "methods", "seeds", "training")


def _only(part: Any, where: str) -> dict[str, Any]:
    part = _mapping(part, where)
    _only_keys(part, where, set(EXPERIMENT_KEYS))
    return part


def _experiment(data: dict[str, Any], where: str) -> Experiment:
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SuiteError(f"{where}: 'seeds' must be a non-empty list of integers, e.g. [0, 1, 2]")
    return Experiment(
        models=tuple(_model(entry, where) for entry in _entries(data, "models", where)),
        tasks=tuple(_task(entry, where) for entry in _entries(data, "tasks", where)),
        methods=tuple(m for entry in _entries(data, "methods", where) for m in _methods(entry, where)),
        seeds=tuple(seeds),
        training=_mapping(data.get("training") or {}, f"{where}: training"),
    )


def _check(suite: Suite, where: str, known_tasks: Iterable[str] | None,
           check_training: Callable[[dict[str, Any], str], None] | None) -> None:
    known = set(known_tasks) if known_tasks is not None else None
    for experiment in suite.experiments:
        for task in experiment.tasks:
            if known is not None and task.task not in known:
                raise SuiteError(f"{where}: unknown task {task.task!r}; known tasks: {', '.join(sorted(known))}")
        for method in experiment.methods:
            if method.method == UNTUNED:
                continue
            config_class = get_method(method.method).config_class
            run_length = {"total_steps": 10**6} if "total_steps" in {f.name for f in fields(config_class)} else {}
            try:  # a schedule's total_steps is the run's step count, which train fills in; any count stands in
                config_class.from_options({**run_length, **method.options})
            except UserError as error:
                raise SuiteError(f"{where}: method entry {method.label!r}: {error}") from None
    counts = Counter(run.run_id for run in suite.runs())
    repeated = sorted(run_id for run_id, count in counts.items() if count > 1)
    if repeated:
        raise SuiteError(f"{where}: runs repeat ({', '.join(repeated[:3])}); give method, task or model "
                         "entries distinct labels ('label:' / 'name:')")
    if check_training is not None:
        for run in suite.runs():
            check_training(run.training, f"{where}: run {run.run_id}")


def _entries(data: dict[str, Any], key: str, where: str) -> list[Any]:
    entries = data.get(key)
    if not isinstance(entries, list) or not entries:
        raise SuiteError(f"{where}: '{key}' must be a non-empty list")
    return entries


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SuiteError(f"{where}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _only_keys(data: dict[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _single_key_form(entry: Any, main: str, where: str) -> dict[str, Any]:
    """``name`` or ``{name: {settings}}`` or ``{<main>: name, settings...}`` as one mapping."""
    if isinstance(entry, str):
        return {main: entry}
    entry = _mapping(entry, where)
    if main not in entry and len(entry) == 1:
        (name, settings), = entry.items()
        return {main: name, **_mapping(settings or {}, f"{where}: {name}")}
    if main not in entry:
        raise SuiteError(f"{where}: entry {entry} names no {main!r}")
    return entry


def _model(entry: Any, where: str) -> ModelEntry:
    entry = _single_key_form(entry, "model", f"{where}: models")
    _only_keys(entry, f"{where}: model {entry['model']!r}", {"model", "name", "training", "random_init", "tokenizer"})
    random_init = entry.get("random_init")
    if random_init is not None and "model_type" not in _mapping(random_init, f"{where}: random_init"):
        raise SuiteError(f"{where}: model {entry['model']!r}: random_init needs a 'model_type' (e.g. t5) and its shape")
    return ModelEntry(name=str(entry.get("name", entry["model"])), source=str(entry["model"]),
                      training=_mapping(entry.get("training", {}), f"{where}: training"),
                      random_init=random_init, tokenizer=entry.get("tokenizer"))


# A task entry's ``data:`` keys (a file task's files and columns) -> the training settings they become
DATA_KEYS = {"train": "train_file", "eval": "eval_file", **{f"{c}_column": f"{c}_column" for c in
                                                           ("text", "text_pair", "label", "source", "target")}}


def _task(entry: Any, where: str) -> TaskEntry:
    entry = _single_key_form(entry, "task", f"{where}: tasks")
    _only_keys(entry, f"{where}: task {entry['task']!r}", {"task", "name", "training", "data"})
    data = _mapping(entry.get("data") or {}, f"{where}: task {entry['task']!r} data")
    _only_keys(data, f"{where}: task {entry['task']!r} data", set(DATA_KEYS))
    files = {DATA_KEYS[key]: _beside(str(value), where) if key in ("train", "eval") else str(value)
             for key, value in data.items()}
    return TaskEntry(name=str(entry.get("name", entry["task"])), task=str(entry["task"]),
                     training={**_mapping(entry.get("training", {}), f"{where}: training"), **files})


def _beside(path: str, where: str) -> str:
    """A data path relative to the suite file's folder, where it is found there (else as given: relative to
    the working folder, or a hub dataset name)."""
    beside = Path(where.split(":")[0]).parent / path
    return str(beside.resolve()) if not Path(path).is_absolute() and beside.exists() else path


def _methods(entry: Any, where: str) -> list[MethodEntry]:
    entry = _single_key_form(entry, "method", f"{where}: methods")
    name = str(entry["method"])
    _only_keys(entry, f"{where}: method {name!r}", {"method", "label", "options", "training", "grid", "knobs"})
    if name == UNTUNED:  # no method: no options, nothing to sweep; training settings still say what is scored
        _only_keys(entry, f"{where}: method {name!r} (the base model, scored without training)",
                   {"method", "label", "training"})
        return [MethodEntry(str(entry.get("label", name)), name,
                            training=_mapping(entry.get("training", {}), f"{where}: {name} training"))]
    try:
        spec = get_method(name)
    except UserError as error:
        raise SuiteError(f"{where}: {error}") from None
    options = _mapping(entry.get("options", {}), f"{where}: {name} options")
    training = _mapping(entry.get("training", {}), f"{where}: {name} training")
    knobs = _mapping(entry.get("knobs", {}), f"{where}: {name} knobs")
    grid = _mapping(entry.get("grid", {}), f"{where}: {name} grid")
    base_label = str(entry.get("label", name))
    if not grid:
        return [MethodEntry(base_label, name, options, training, knobs)]
    if not all(isinstance(values, list) and values for values in grid.values()):
        raise SuiteError(f"{where}: method {name!r}: every grid value must be a non-empty list")
    method_fields = {f.name for f in fields(spec.config_class)}  # a grid key that is not an option is a training key
    expanded = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        label = f"{base_label}[{','.join(f'{k}={v}' for k, v in point.items())}]"
        chosen_options = {k: v for k, v in point.items() if k in method_fields}
        chosen_training = {k: v for k, v in point.items() if k not in method_fields}  # e.g. learning_rate
        expanded.append(MethodEntry(label, name, {**options, **chosen_options}, {**training, **chosen_training},
                                    {**knobs, **point}))
    return expanded

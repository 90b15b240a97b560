"""``peftlab bench --pack K``: runs that can share one process train together, K adapters on one frozen base
(:mod:`peftlab.train.packed_run`), one worker process per pack (``python -m peftlab.bench.packed SPEC...
--record RECORD...``), one record per run.

Runs share a pack when they have the same model, task, data and loop settings and methods that live in their
own layers (seeds, methods and their options, learning rate, weight decay, warm-up and clipping may differ).
A pack that turns out not to fit (a method that changes the base is known only once applied) exits with
:data:`PACK_REFUSED`, naming the methods; the sweep then runs those runs alone, and packs without them.

Each packed record says ``packed_with`` (the other runs' ids) and its ``reproduce`` command reruns the whole
pack (``peftlab train --lanes``): a pack is deterministic, and with dropout a lane draws other masks than a
solo run would, so the pack, not the run alone, reproduces the score (``reproduce_lane``: its folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from peftlab.bench.records import checkpoints_path, provenance, write_record
from peftlab.bench.suite import UNTUNED, RunSpec
from peftlab.core.atomic import write_text_atomic
from peftlab.core.errors import Interrupted
from peftlab.core.registry import get_method

PACK_REFUSED = 3  # the worker's exit status when its runs cannot share one base: the sweep runs them alone
LANE_TRAINING = ("learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm")  # may differ in a pack
REFUSED_SUFFIX = ".pack-refused.json"


def packable(spec: RunSpec) -> bool:
    """What the suite tells before anything loads: a method that may share the base, a loop that allows it."""
    if spec.method == UNTUNED:
        return False
    method = get_method(spec.method)
    if method.hooks.training_hooks is not None or method.family == "partial" and not method.shares_base:
        return False
    training = spec.training
    return not (training.get("fsdp") or training.get("compile") or training.get("gradient_accumulation_steps", 1) > 1
                or training.get("loss") == "chunked" or training.get("mixed_precision") == "fp16")


def pack_key(spec: RunSpec) -> str:
    shared = {key: value for key, value in spec.training.items() if key not in LANE_TRAINING}
    return json.dumps([spec.model, spec.model_source, spec.task_name, spec.random_init, spec.tokenizer, shared],
                      sort_keys=True, default=str)


def pack_units(runs: Sequence[RunSpec], size: int, refused: set[str] = frozenset()) -> list[list[RunSpec]]:
    """``runs`` as packs of at most ``size`` (in order of their first run), and the rest alone."""
    groups: dict[str, list[RunSpec]] = {}
    units: list[list[RunSpec]] = []
    for run in runs:
        if size > 1 and packable(run) and run.method not in refused:
            group = groups.setdefault(pack_key(run), [])
            if not group:
                units.append(group)
            group.append(run)
            if len(group) == size:
                del groups[pack_key(run)]
        else:
            units.append([run])
    return units


def refused_path(spec_path: Path) -> Path:
    return spec_path.with_name(spec_path.name + REFUSED_SUFFIX)


def execute_pack(specs: Sequence[RunSpec], output: Path) -> list[dict[str, Any]]:
    """Train ``specs`` at once; returns each run's measured record fields."""
    from peftlab.bench import memory
    from peftlab.bench.models import model_for_run
    from peftlab.bench.worker import continues, remove_checkpoints, run_fields
    from peftlab.train import TrainArgs
    from peftlab.train.packed_run import lane_names, run_packed

    model_name, note = model_for_run(specs[0], output)
    folders = [checkpoints_path(output, spec) for spec in specs]
    resume = all([continues(folder, spec) for folder, spec in zip(folders, specs)])
    if not resume:  # every lane starts over, or none does: they share one loop
        for folder, spec in zip(folders, specs):
            remove_checkpoints(folder)
            continues(folder, spec)
    lanes = [TrainArgs(model=model_name, task=spec.task_name, method=spec.method, options=dict(spec.options),
                       seed=spec.seed, output_dir=str(folder), resume=resume, overwrite=not resume, **spec.training)
             for spec, folder in zip(specs, folders)]
    baseline_rss = memory.current_rss_bytes()
    names = lane_names(lanes)
    metrics = run_packed(lanes, names)
    lanes = [dataclasses.replace(a, output_dir=None, resume=False, overwrite=False) for a in lanes]
    command = reproduce_pack(lanes, specs[0].run_id)
    return [{**run_fields(args, spec, lane),
             "memory": {"peak_bytes": lane["peak_memory_bytes"], "peak_source": lane["peak_memory_kind"],
                        "baseline_rss_bytes": baseline_rss, "breakdown": None, "shared_by_pack": True},
             "packed_with": [other.run_id for other in specs if other is not spec],
             "continued_from_checkpoint": resume, "model_note": note, "model_used": model_name,
             "reproduce": command, "reproduce_lane": f"reproduce/{specs[0].run_id}+pack/{name}"}
            for spec, args, lane, name in zip(specs, lanes, metrics, names)]


def reproduce_pack(lanes: Sequence[Any], pack_id: str) -> str:
    """The one command that reruns the pack (each lane's folder ``reproduce/<first run>+pack/<lane>``)."""
    from peftlab.train.packed_run import LANE_SETTINGS

    defaults = {f.name: f.default for f in dataclasses.fields(lanes[0]) if f.name in LANE_SETTINGS}
    shared = dataclasses.replace(lanes[0], options={}, **{k: v for k, v in defaults.items() if k != "options"})
    each = [{name: getattr(args, name) for name in LANE_SETTINGS if name != "output_dir"
             and (name in ("method", "seed", "options") or getattr(args, name) != defaults[name])} for args in lanes]
    words = [*shared.command_line(), "--no-progress" if shared.progress else "",
             "--lanes", json.dumps(each, default=list), "--output", f"reproduce/{pack_id}+pack"]
    return " ".join(shlex.quote(word) for word in words if word)


def main(argv: list[str] | None = None) -> int:
    """The worker for a pack: every run's record written (``ok``, or ``failed`` with the pack's error)."""
    from peftlab.bench.worker import device_name, is_main_process, remove_checkpoints
    from peftlab.train.packed_run import PackError

    parser = argparse.ArgumentParser(prog="python -m peftlab.bench.packed", description=__doc__)
    parser.add_argument("spec", type=Path, nargs="+", help="the runs' specs (JSON, written by the sweep)")
    parser.add_argument("--record", type=Path, required=True, action="append",
                        help="where to write each run's record (once per spec, in the same order)")
    arguments = parser.parse_args(argv)
    if len(arguments.spec) != len(arguments.record):
        parser.error("give one --record per spec")
    specs = [RunSpec.from_dict(json.loads(path.read_text(encoding="utf-8"))) for path in arguments.spec]
    records, spec_paths = arguments.record, arguments.spec
    output = records[0].resolve().parent.parent
    started_at, started = datetime.now(UTC).isoformat(timespec="seconds"), time.perf_counter()
    try:
        measured = execute_pack(specs, output)
    except Interrupted as stop:
        print(f"peftlab bench worker: {stop}", file=sys.stderr)
        return stop.exit_code
    except PackError as error:
        print(f"peftlab bench worker: these runs cannot share one base, so each runs alone: {error}", file=sys.stderr)
        write_text_atomic(refused_path(spec_paths[0]), json.dumps({"methods": error.methods, "error": str(error)}))
        for spec in specs:
            remove_checkpoints(checkpoints_path(output, spec))
        return PACK_REFUSED
    except Exception as error:  # noqa: BLE001  (any failure becomes every packed run's failed record)
        traceback.print_exc()
        for spec, record in zip(specs, records):
            remove_checkpoints(checkpoints_path(output, spec))
            write_record(record, {"run_id": spec.run_id, "spec": spec.to_dict(), "seed": spec.seed,
                                  "started_at": started_at, "status": "failed",
                                  "error": f"{type(error).__name__}: {error}",
                                  "packed_with": [other.run_id for other in specs if other is not spec],
                                  "wall_seconds": time.perf_counter() - started,
                                  "provenance": provenance(device_name())})
        return 1
    if not is_main_process():
        return 0
    finished = datetime.now(UTC).isoformat(timespec="seconds")
    for spec, record, fields in zip(specs, records, measured):
        write_record(record, {"run_id": spec.run_id, "spec": spec.to_dict(), "seed": spec.seed,
                              "started_at": started_at, "status": "ok", **fields, "error": None,
                              "wall_seconds": time.perf_counter() - started, "finished_at": finished,
                              "provenance": provenance(device_name())})
        remove_checkpoints(checkpoints_path(output, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())

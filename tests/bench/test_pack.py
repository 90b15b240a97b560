"""``peftlab bench --pack K``: runs that can share a base train at once in one worker process, one record each
(with ``packed_with``) and a ``reproduce`` command that reruns the pack to the same scores; the others alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import peftlab
from peftlab.bench import load_suite_checked
from peftlab.bench.packed import pack_units
from peftlab.bench.records import read_records
from peftlab.bench.runner import run_sweep
from peftlab.bench.suite import SuiteError

SRC = str(Path(peftlab.__file__).resolve().parent.parent)


@pytest.mark.slow
def test_bench_pack_writes_one_record_per_run_and_reproduce_reruns_the_pack(tiny_suite, tmp_path):
    suite = tiny_suite([{"lora": {"options": {"rank": 2}}}, "ia3", "prefix_tuning"], seeds=(1,))
    output, lines = tmp_path / "out", []
    result = run_sweep(load_suite_checked(suite).runs(), output, echo=lines.append, pack=3)
    assert result.failed == [] and len(result.ran) == 3
    records = {r["spec"]["method"]: r for r in read_records(output)}
    # prefix tuning is known not to share a base only once applied (bitfit before: see below): it is
    # refused by the pack's worker and then runs alone, and lora + ia3 run as a pack of two
    assert sorted(records["lora"]["packed_with"]) == [records["ia3"]["run_id"]]
    assert records["ia3"]["packed_with"] == [records["lora"]["run_id"]]
    assert "packed_with" not in records["prefix_tuning"]
    assert any("cannot share one base (prefix_tuning)" in line for line in lines)
    environment = {**os.environ, "PYTHONPATH": SRC}
    words = records["lora"]["reproduce"]
    assert words == records["ia3"]["reproduce"] and "--lanes" in words
    import shlex

    subprocess.run([sys.executable, "-m", "peftlab.cli", *shlex.split(words)[1:]], cwd=tmp_path, env=environment,
                   check=True, stdout=subprocess.DEVNULL)
    for method in ("lora", "ia3"):  # with dropout: the rerun pack gives the same scores
        metrics = json.loads((tmp_path / records[method]["reproduce_lane"] / "metrics.json").read_text())
        assert metrics["scores"] == records[method]["scores"]
        assert metrics["parameters"] == records[method]["parameters"]


def test_packs_hold_runs_that_share_model_task_and_loop(tiny_suite):
    suite = tiny_suite(["lora", {"method": "lora", "grid": {"learning_rate": [1.0e-4]}},
                        {"method": "ia3", "training": {"batch_size": 4}}, "bitfit", "untuned"], seeds=(0, 1))
    runs = load_suite_checked(suite).runs()
    units = pack_units(runs, 3)
    labels = [[(run.label, run.seed) for run in unit] for unit in units]
    assert labels[0] == [(runs[0].label, 0), (runs[0].label, 1), (runs[2].label, 0)]  # lr may differ in a pack
    assert [(runs[4].label, 0), (runs[4].label, 1)] in labels  # ia3's other batch size: its own pack
    assert all(len(unit) == 1 for unit in units if unit[0].method in ("bitfit", "untuned"))
    assert sorted(run.run_id for unit in units for run in unit) == sorted(run.run_id for run in runs)
    assert all(len(unit) == 1 for unit in pack_units(runs, 1))
    with pytest.raises(SuiteError):
        run_sweep(runs, "unused", pack=2, launch="torchrun --nproc-per-node 2", echo=lambda line: None)

"""The table against hand-computed values: mean ± sample std over seeds, the average column, best marking."""

from __future__ import annotations

import math

import pytest

from peftlab.bench.aggregate import ADAPTER, AVERAGE, MEMORY, SPEED, TRAINABLE, build_tables, format_cell
from peftlab.bench.report import csv_text, latex, summary
from peftlab.bench.tables import markdown, score_grid


def record(label, method, family, task, seed, score, percent, peak_mib, status="ok", adapter_mib=None, speed=None):
    return {"status": status, "run_id": f"{label}-{task}-{seed}", "score": score, "primary_metric": "accuracy",
            "spec": {"model": "m", "task": task, "label": label, "method": method, "family": family,
                     "seed": seed, "knobs": {}},
            "parameters": {"trainable_percent": percent}, "memory": {"peak_bytes": peak_mib * 2**20},
            "adapter_bytes": None if adapter_mib is None else adapter_mib * 2**20, "train_tokens_per_second": speed}


RECORDS = [
    # full: a = 80, 82, 84 ; b = 70, 74, 72
    *[record("full", "full", "baseline", "a", s, v, 100.0, 900, adapter_mib=87.0, speed=1000.0)
      for s, v in enumerate((80.0, 82.0, 84.0))],
    *[record("full", "full", "baseline", "b", s, v, 100.0, 950) for s, v in enumerate((70.0, 74.0, 72.0))],
    # lora: a = 85, 81 (seeds 0, 1) ; b = 60 (seed 0 only)
    # (the adapter's size and speed: recorded by some runs only; an older record has neither)
    record("lora", "lora", "reparameterized", "a", 0, 85.0, 0.5, 400, adapter_mib=0.25, speed=1500.0),
    record("lora", "lora", "reparameterized", "a", 1, 81.0, 0.5, 410, adapter_mib=0.25, speed=1700.0),
    record("lora", "lora", "reparameterized", "b", 0, 60.0, 0.5, 405, speed=1600.0),
    # adapter: a = 83 (ties lora: both marked) ; b = 75 ; a failed run that must be ignored
    record("adapter", "adapter", "additive", "a", 0, 83.0, 2.0, 400),
    record("adapter", "adapter", "additive", "b", 0, 75.0, 2.0, 380),
    record("adapter", "adapter", "additive", "b", 1, None, 2.0, 100000, status="failed"),
]


@pytest.fixture
def table():
    (table,) = build_tables(RECORDS)
    return table


def test_rows_are_grouped_by_family_in_the_survey_order(table):
    assert [row.label for row in table.rows] == ["full", "adapter", "lora"]
    assert table.tasks == ["a", "b"]


def test_mean_and_sample_std_over_seeds(table):
    full, adapter, lora = table.rows
    assert full.cells["a"].mean == pytest.approx(82.0) and full.cells["a"].std == pytest.approx(2.0)
    assert full.cells["b"].mean == pytest.approx(72.0) and full.cells["b"].std == pytest.approx(2.0)
    assert lora.cells["a"].mean == pytest.approx(83.0) and lora.cells["a"].std == pytest.approx(math.sqrt(8))
    assert lora.cells["b"].mean == pytest.approx(60.0) and lora.cells["b"].std is None
    # Average: per seed over the tasks, then over the seeds that have every task.
    assert full.cells[AVERAGE].mean == pytest.approx(77.0)  # (75, 78, 78) -> 77
    assert full.cells[AVERAGE].std == pytest.approx(math.sqrt(3))
    assert lora.cells[AVERAGE].mean == pytest.approx(72.5) and lora.cells[AVERAGE].n == 1
    assert adapter.cells[AVERAGE].mean == pytest.approx(79.0)


def test_best_per_column(table):
    full, adapter, lora = table.rows
    best = {column: [row.label for row in table.rows if row.cells[column].best] for column in table.columns}
    assert best == {"a": ["adapter", "lora"], "b": ["adapter"], AVERAGE: ["adapter"], TRAINABLE: ["lora"],
                    MEMORY: ["adapter"], ADAPTER: ["lora"], SPEED: ["lora"]}
    assert lora.cells[ADAPTER].mean == pytest.approx(0.25) and adapter.cells[ADAPTER].mean is None
    assert lora.cells[SPEED].mean == pytest.approx(1600.0) and lora.cells[SPEED].std == pytest.approx(100.0)
    assert full.cells[MEMORY].mean == pytest.approx(950.0)  # the row's largest peak
    assert lora.cells[MEMORY].mean == pytest.approx(410.0)


def test_formats_mark_the_best(table):
    assert format_cell(table.rows[0].cells["a"], "a") == "82.0 ± 2.0"
    text = markdown(score_grid(table))
    assert "| reparameterized | `lora` | **83.0 ± 2.8** | 60.0 | 72.5 | **0.5** | 410 | **0.25** | **1600 ± 100** |" in text
    assert "| additive | `adapter` | **83.0** | **75.0** | **79.0** | 2 | **400** | – | – |" in text
    assert r"\textbf{79.0}" in latex([table])
    rows = csv_text([table]).splitlines()
    assert "m,additive,adapter,b,accuracy,75.0,,1,1" in rows


def test_summary_names_sources_and_shortens_long_lists():
    records = [{**r, "provenance": {"device": "cpu", "git_commit": f"{i:02d}" + "f" * 38}} for i, r in enumerate(RECORDS)]
    for r in records:
        r["spec"] = {**r["spec"], "suite": "quick"}
    line = summary(records)
    assert line.startswith("Suite: quick · runs: 11 ok, 1 failed · device: cpu · commit: ")
    assert line.endswith("00ffffffff, 01ffffffff, 02ffffffff (+9 more)")


def test_how_a_method_counts_its_parameters_is_noted_under_the_table():
    noted = [*RECORDS, {**record("propetl", "propetl", "unified", "a", 0, 84.0, 0.3, 400),
                        "parameters": {"trainable_percent": 0.3, "note": "masks counted at 1 bit per entry"}}]
    (table,) = build_tables(noted)
    assert table.notes == ["`propetl` trainable %: masks counted at 1 bit per entry"]


def test_a_run_scored_on_mmlu_and_the_forgetting_loss_gives_each_its_column_and_direction():
    def scored(label, seed, accuracy, loss):
        entry = record(label, label, "baseline" if label != "lora" else "reparameterized", "alpaca", seed, loss, 1.0, 500)
        entry["task_scores"] = {
            "mmlu-subset": {"metric": "mmlu-subset/accuracy", "score": accuracy, "greater_is_better": True},
            "english-lm": {"metric": "english-lm/loss", "score": loss, "greater_is_better": False}}
        return entry

    (table,) = build_tables([scored("full", 0, 30.0, 3.4), scored("lora", 0, 28.0, 3.1), scored("lora", 1, 29.0, 3.3)])
    assert table.tasks == ["alpaca english-lm", "alpaca mmlu-subset"]
    assert table.metric_names["alpaca english-lm"] == "english-lm/loss"
    full, lora = table.rows
    assert lora.cells["alpaca english-lm"].mean == pytest.approx(3.2) and lora.cells["alpaca mmlu-subset"].n == 2
    assert lora.cells["alpaca english-lm"].best and not full.cells["alpaca english-lm"].best  # lower loss wins
    assert full.cells["alpaca mmlu-subset"].best  # higher accuracy wins
    assert full.cells[AVERAGE].mean is None  # an accuracy and a loss are not averaged


def test_the_pareto_front_keeps_each_point_no_cheaper_one_beats():
    from peftlab.bench.plots import pareto_front

    points = [(100.0, 82.0), (0.5, 72.5), (2.0, 79.0), (1.0, 70.0), (2.0, 75.0), (50.0, 78.0)]
    assert pareto_front(points) == [(0.5, 72.5), (2.0, 79.0), (100.0, 82.0)]
    assert pareto_front([(1.0, 3.0), (2.0, 1.0), (3.0, 2.0)], greater_is_better=False) == [(1.0, 3.0), (2.0, 1.0)]


def test_memory_and_speed_are_left_out_where_the_runs_ran_on_different_devices():
    cpu = record("lora", "lora", "reparameterized", "a", 0, 85.0, 0.5, 400, speed=1500.0)
    gpu = record("lora", "lora", "reparameterized", "a", 1, 81.0, 0.5, 900, speed=9000.0)
    cpu["provenance"], gpu["provenance"] = {"device": "cpu: 1 threads"}, {"device": "cuda: NVIDIA H200"}
    (mixed,) = build_tables([cpu, gpu])
    (row,) = mixed.rows
    assert row.cells[MEMORY].mean is None and row.cells[SPEED].mean is None
    assert row.cells["a"].mean == 83.0  # scores do not depend on the device: they stay
    assert any("2 devices (cpu: 1 threads; cuda: NVIDIA H200)" in note for note in mixed.notes)
    gpu["provenance"] = {"device": "cpu: 1 threads"}
    (one,) = build_tables([cpu, gpu])
    assert one.rows[0].cells[MEMORY].mean == 900 and one.rows[0].cells[SPEED].mean == 5250.0 and not one.notes

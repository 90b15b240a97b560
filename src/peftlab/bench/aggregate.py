"""From run records to the survey's table: one row per method, columns per task plus the average.

A cell is the mean ± sample standard deviation (n - 1) over seeds. The average column averages the
tasks within each seed that has every task, then takes mean ± std over those seeds. The trainable %
column is the mean over the row's runs, the peak memory column the largest peak among them, the adapter's
size on disk the mean over the runs that recorded it, training tokens per second mean ± std over runs. The
best cell of each column is marked (ties all marked): the highest score, or the lowest where the task's metric
is lower-is-better (a loss; the records say which); the lowest trainable %, peak memory and adapter size, the
highest speed. The average
column is left empty where its tasks disagree on the direction. A run that scores several tasks (an
instruction-tuning run scored on MMLU and on a forgetting loss) gives each its own column.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from peftlab.core.registry import FAMILIES

AVERAGE = "avg"
TRAINABLE = "trainable %"
MEMORY = "peak MiB"
ADAPTER = "adapter MiB"  # the saved adapter's files on disk (full fine-tuning: the whole model)
SPEED = "train tokens/s"
LOWER_IS_BETTER = (TRAINABLE, MEMORY, ADAPTER)


@dataclass
class Cell:
    mean: float | None
    std: float | None = None
    n: int = 0
    best: bool = False

    @classmethod
    def of(cls, values: list[float]) -> Cell:
        if not values:
            return cls(None)
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class Row:
    family: str
    label: str
    method: str
    cells: dict[str, Cell] = field(default_factory=dict)
    knobs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Table:
    model: str
    metric_names: dict[str, str]
    tasks: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    greater_is_better: dict[str, bool] = field(default_factory=dict)  # per task; missing: True

    @property
    def columns(self) -> list[str]:
        return [*self.tasks, AVERAGE, TRAINABLE, MEMORY, ADAPTER, SPEED]


def ok_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [record for record in records if record.get("status") == "ok"]


def build_tables(records: list[dict[str, Any]]) -> list[Table]:
    """One table per model, from the successful records."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in ok_records(records):
        by_model[record["spec"]["model"]].append(record)
    return [build_table(model, by_model[model]) for model in sorted(by_model)]


def record_columns(record: dict[str, Any]) -> list[tuple[str, str, float | None, bool]]:
    """``(column, metric, score, greater_is_better)`` of a record: one column per scored task where the run
    scores several (``task_scores``: e.g. MMLU and the forgetting loss after Alpaca, ``alpaca mmlu-subset``),
    else one for its task."""
    task, several = record["spec"]["task"], record.get("task_scores") or {}
    if len(several) > 1:
        return [(f"{task} {name}", info["metric"], info["score"], bool(info["greater_is_better"]))
                for name, info in several.items()]
    return [(task, record.get("primary_metric", "score"), record.get("score"), bool(record.get("greater_is_better", True)))]


def build_table(model: str, records: list[dict[str, Any]]) -> Table:
    columns = {column: (metric, direction) for record in records
               for column, metric, _, direction in record_columns(record)}
    tasks = sorted(columns)
    metric_names = {column: metric for column, (metric, _) in columns.items()}
    directions = {column: direction for column, (_, direction) in columns.items()}
    by_row: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_row[record["spec"]["label"]].append(record)
    rows = [_row(label, by_row[label], tasks) for label in by_row]
    rows.sort(key=lambda row: (_family_rank(row.family), row.method != row.label, row.method, row.label))
    notes = sorted({record["model_note"] for record in records if record.get("model_note")})
    notes += sorted({f"`{record['spec']['label']}` trainable %: {record['parameters']['note']}" for record in records
                     if (record.get("parameters") or {}).get("note")})
    notes += costs_on_one_device(rows, records)
    table = Table(model, metric_names, tasks, rows, notes, directions)
    if greater_is_better(table, AVERAGE) is None:  # accuracy and a loss: their mean means nothing
        for row in rows:
            row.cells[AVERAGE] = Cell(None)
    mark_best(table)
    return table


def costs_on_one_device(rows: list[Row], records: list[dict[str, Any]]) -> list[str]:
    """Peak memory and tokens/s compare only within one device: where the records ran on several, those columns
    are left out of the table (each run's stay in the Runs table beside its device); the note says why."""
    devices = sorted({str((record.get("provenance") or {}).get("device") or "not recorded") for record in records})
    if len(devices) < 2:
        return []
    for row in rows:
        row.cells[MEMORY], row.cells[SPEED] = Cell(None), Cell(None)
    return [f"{MEMORY} and {SPEED} left out: these runs ran on {len(devices)} devices ({'; '.join(devices)}), and "
            f"a table never mixes devices in its memory and time columns; each run's are in the Runs table"]


def _family_rank(family: str) -> int:
    return FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)


def _row(label: str, records: list[dict[str, Any]], tasks: list[str]) -> Row:
    first = records[0]["spec"]
    row = Row(first["family"], label, first["method"], knobs=dict(first.get("knobs") or {}))
    per_seed: dict[int, dict[str, float]] = defaultdict(dict)
    for task in tasks:
        scores = {}
        for record in records:
            for column, _, score, _ in record_columns(record):
                if column == task and score is not None:
                    scores[record["spec"]["seed"]] = float(score)
        for seed, score in scores.items():
            per_seed[seed][task] = score
        row.cells[task] = Cell.of(list(scores.values()))
    averages = [statistics.fmean(s[t] for t in tasks) for s in per_seed.values() if len(s) == len(tasks)]
    row.cells[AVERAGE] = Cell.of(averages)
    shares = [float(r["parameters"]["trainable_percent"]) for r in records]
    row.cells[TRAINABLE] = Cell(statistics.fmean(shares), None, len(shares))
    peaks = [float(r["memory"]["peak_bytes"]) / 2**20 for r in records if r.get("memory", {}).get("peak_bytes")]
    row.cells[MEMORY] = Cell(max(peaks), None, len(peaks)) if peaks else Cell(None)
    sizes = [float(r["adapter_bytes"]) / 2**20 for r in records if r.get("adapter_bytes")]
    row.cells[ADAPTER] = Cell(statistics.fmean(sizes), None, len(sizes)) if sizes else Cell(None)
    speeds = [float(r["train_tokens_per_second"]) for r in records if r.get("train_tokens_per_second")]
    row.cells[SPEED] = Cell.of(speeds)
    return row


def greater_is_better(table: Table, column: str) -> bool | None:
    """Whether a column's best value is its highest; None for an average over tasks that disagree."""
    if column in LOWER_IS_BETTER:
        return False
    if column == AVERAGE:
        directions = {table.greater_is_better.get(task, True) for task in table.tasks}
        return directions.pop() if len(directions) == 1 else None
    return table.greater_is_better.get(column, True)


def mark_best(table: Table) -> None:
    for column in table.columns:
        cells = [row.cells[column] for row in table.rows if row.cells[column].mean is not None]
        direction = greater_is_better(table, column)
        if not cells or direction is None:
            continue
        pick = max if direction else min
        best = pick(cell.mean for cell in cells)
        for cell in cells:
            cell.best = math.isclose(cell.mean, best, rel_tol=1e-12, abs_tol=1e-12)


def format_cell(cell: Cell, column: str, plus_minus: str = " ± ") -> str:
    """``85.2 ± 1.3`` for scores, three significant digits for trainable % and the adapter's MiB, whole MiB for
    peak memory, whole tokens per second."""
    if cell.mean is None:
        return "–"
    spec = {TRAINABLE: ".3g", MEMORY: ".0f", ADAPTER: ".3g", SPEED: ".0f"}.get(column, ".1f")
    text = format(cell.mean, spec)
    if cell.std is not None:
        text += plus_minus + format(cell.std, spec)
    return text

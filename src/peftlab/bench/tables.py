"""The report's tables as data (a header and rows of text), and the two ways they are written: Markdown and HTML.

Each table is built once, as a :class:`Grid`, so ``report.md`` and ``report.html`` show the same headers and the
same numbers: the score table per model, its reference comparison, memory by component, and every run.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from peftlab.bench.aggregate import Table, format_cell
from peftlab.bench.memory import COMPONENTS
from peftlab.bench.references import reference_rows


@dataclass(frozen=True)
class Column:
    title: str
    numeric: bool = False  # right-aligned


@dataclass(frozen=True)
class Entry:
    text: str
    code: bool = False  # a method's name: `lora`, <code>lora</code>
    bold: bool = False  # the best in its column


@dataclass(frozen=True)
class Grid:
    columns: list[Column]
    rows: list[list[Entry]]


# -- the tables -----------------------------------------------------------------------------------------
def score_grid(table: Table) -> Grid:
    """One row per method; a task's column names its metric, e.g. ``cola (matthews_correlation)``; the family
    is written once, on its first row."""
    titles = [*(f"{task} ({table.metric_names[task]})" for task in table.tasks), *table.columns[len(table.tasks):]]
    columns = [Column("family"), Column("method"), *(Column(title, numeric=True) for title in titles)]
    rows, previous = [], None
    for row in table.rows:
        family = row.family if row.family != previous else ""
        previous = row.family
        cells = [Entry(text, bold=row.cells[c].best and text != "–")
                 for c in table.columns for text in [format_cell(row.cells[c], c)]]
        rows.append([Entry(family), Entry(row.label, code=True), *cells])
    return Grid(columns, rows)


def reference_grid(table: Table, task: str, references: dict[str, Any]) -> Grid | None:
    """Each method's score on ``task`` beside its converged reference; None when no method has one."""
    here = {row.label: row.cells[task].mean for row in table.rows if row.cells[task].mean is not None}
    rows = reference_rows(table.model, task, here, references)
    if not rows:
        return None
    columns = [Column("method"), Column("here", numeric=True), Column("converged", numeric=True), Column("")]
    return Grid(columns, [[Entry(label, code=True), *map(Entry, rest)] for label, *rest in rows])


def memory_grid(table: Table, records: list[dict[str, Any]]) -> Grid:
    """``measured / predicted`` MiB per component, for each method whose run measured a breakdown."""
    rows = []
    for row in table.rows:
        chosen = [r for r in records if r["spec"]["model"] == table.model and r["spec"]["label"] == row.label
                  and r.get("memory", {}).get("breakdown")]
        if chosen:
            parts = chosen[0]["memory"]["breakdown"]
            rows.append([Entry(row.label, code=True),
                         *(Entry(f"{_mib(parts[c]['measured'])} / {_mib(parts[c]['predicted'])}") for c in COMPONENTS)])
    return Grid([Column("method"), *(Column(c, numeric=True) for c in COMPONENTS)], rows)


def runs_grid(records: list[dict[str, Any]]) -> Grid:
    """One row per run record, failed runs with the first line of their error."""
    titles = ("run", "status", "score", "trainable %", "peak MiB", "train tokens/s", "wall s", "device")
    rows = []
    for record in records:
        score = record.get("score")
        peak = record.get("memory", {}).get("peak_bytes")
        status = record["status"] if record["status"] == "ok" else f"{record['status']}: {_one_line(record.get('error'))}"
        rows.append([Entry(text) for text in (
            record.get("run_id", ""), status, "–" if score is None else f"{score:.2f}",
            _number(record.get("parameters", {}).get("trainable_percent"), ".3g"),
            "–" if not peak else f"{peak / 2**20:.0f}", _number(record.get("train_tokens_per_second"), ".0f"),
            _number(record.get("wall_seconds"), ".1f"), record.get("provenance", {}).get("device", ""))])
    return Grid([Column(title, numeric=title not in ("run", "status", "device")) for title in titles], rows)


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"


def _number(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _one_line(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()[:200].replace("|", "/")


# -- writing them ---------------------------------------------------------------------------------------
def markdown(grid: Grid) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    def text(entry: Entry) -> str:
        code = f"`{entry.text}`" if entry.code else entry.text
        return f"**{code}**" if entry.bold else code

    rule = "|" + "".join("---:|" if column.numeric else "---|" for column in grid.columns)
    return "\n".join([line([c.title for c in grid.columns]), rule, *(line(list(map(text, row))) for row in grid.rows)])


def html_table(grid: Grid) -> str:
    """A ``<table>`` with its header in ``<thead>``; numeric columns carry ``class="num"`` (right-aligned)."""
    def cell(tag: str, content: str, column: Column) -> str:
        return f"<{tag} class='num'>{content}</{tag}>" if column.numeric else f"<{tag}>{content}</{tag}>"

    def content(entry: Entry) -> str:
        text = html.escape(entry.text)
        code = f"<code>{text}</code>" if entry.code else text
        return f"<b>{code}</b>" if entry.bold else code

    header = "".join(cell("th", html.escape(column.title), column) for column in grid.columns)
    body = "".join("<tr>" + "".join(cell("td", content(entry), column)
                                    for entry, column in zip(row, grid.columns, strict=True)) + "</tr>"
                   for row in grid.rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"

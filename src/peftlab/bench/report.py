"""``peftlab report DIR``: the survey-style tables (Markdown, CSV, LaTeX), PNG plots and one HTML page.

Reads whatever run records ``DIR/runs/`` holds (from any number of shards) and writes, atomically:
``report.md``, ``results.csv``, ``results.tex``, ``*.png`` and ``report.html`` (images inlined).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.bench import plots, tables
from peftlab.bench.aggregate import Table, build_tables, format_cell
from peftlab.bench.records import read_records, runs_dir, unreadable_records
from peftlab.bench.references import load_references
from peftlab.bench.suite import slug
from peftlab.core.atomic import write_files_together
from peftlab.core.errors import UserError, few
from peftlab.core.outputs import OutputError, OutputKind, claim_output


REPORT_FILES = ("report.md", "results.csv", "results.tex", "report.html", "score_vs_trainable-*.png",
                "score_vs_memory-*.png", "memory-*.png", "ablation-*.png")
REPORT_OUTPUT = OutputKind(command="peftlab report", flag="DIR", owns=REPORT_FILES)
SCORES_NOTE = "Scores: fractions (accuracy, F1, correlations) ×100, BLEU and losses as they are (mean ± std over seeds)"
LEGEND = (f"{SCORES_NOTE}; best per column in bold (highest score, lowest for losses; lowest trainable % and peak "
          "memory). Peak memory: CUDA max allocated on GPU, peak RSS of the run's process on CPU.")
MEMORY_TITLE = "Memory by component (one training step, MiB): measured / predicted"


class ReportError(UserError):
    pass


@dataclass
class Report:
    tables: list[Table]
    records: list[dict[str, Any]]
    figures: dict[str, dict[str, bytes]] = field(default_factory=dict)  # model -> file name -> PNG
    unreadable: dict[str, str] = field(default_factory=dict)  # record file -> why it was left out


def build_report(output: str | Path) -> Report:
    records, unreadable = read_records(output), unreadable_records(output)
    if not records:
        left_out = f" ({len(unreadable)} unreadable: {unreadable_text(unreadable)})" if unreadable else ""
        raise ReportError(f"no run records in {runs_dir(output)}{left_out}; run `peftlab bench --suite NAME "
                          f"--output {output}`")
    tables = build_tables(records)
    report = Report(tables, records, unreadable=unreadable)
    for table in tables:
        name = slug(table.model)
        figures = {f"score_vs_trainable-{name}.png": plots.score_vs_trainable(table),
                   f"score_vs_memory-{name}.png": plots.score_vs_memory(table),
                   f"memory-{name}.png": plots.memory_by_component(table, records)}
        for knob in sorted({knob for row in table.rows for knob in row.knobs}):
            figures[f"ablation-{name}-{slug(knob)}.png"] = plots.score_vs_knob(table, knob)
        report.figures[table.model] = {key: png for key, png in figures.items() if png is not None}
    return report


def write_report(output: str | Path, overwrite: bool = True) -> list[Path]:
    """Write every report file into ``output`` (staged, then renamed in together); returns their paths. Without
    ``overwrite``, report files already there are refused before anything is written."""
    output = Path(output)
    if output.exists():
        claim_output(output, REPORT_OUTPUT, resume=True)  # the run records' folder: a file, or not writable
    report = build_report(output)
    contents: dict[str, bytes | str] = {name: png for figures in report.figures.values() for name, png in figures.items()}
    contents.update({"report.md": markdown(report), "results.csv": csv_text(report.tables),
                     "results.tex": latex(report.tables), "report.html": html_page(report)})
    existing = [name for name in contents if (output / name).exists()]
    if existing and not overwrite:
        raise OutputError(f"{output} already holds a report ({few(existing)}); pass --overwrite "
                          f"to replace it")
    files = {output / name: content if isinstance(content, bytes) else content.encode("utf-8")
             for name, content in contents.items()}
    write_files_together(files)
    return list(files)


# -- Markdown ----------------------------------------------------------------------------------------
def _bold(text: str, best: bool, template: str) -> str:
    return template.format(text) if best and text != "–" else text


def unreadable_text(unreadable: dict[str, str]) -> str:
    return few([f"{name} ({why})" for name, why in unreadable.items()], limit=3)


def summary(records: list[dict[str, Any]], unreadable: dict[str, str] | None = None) -> str:
    """Which suites, devices and commits the records come from, how many runs succeeded, which were unreadable."""
    def values(pick) -> str:
        found = sorted({str(pick(r)) for r in records if pick(r)})
        return ", ".join(found[:3]) + (f" (+{len(found) - 3} more)" if len(found) > 3 else "") if found else "–"

    ok = sum(record["status"] == "ok" for record in records)
    lost = f", {len(unreadable)} unreadable record(s) left out: {unreadable_text(unreadable)}" if unreadable else ""
    return (f"Suite: {values(lambda r: r['spec'].get('suite'))} · runs: {ok} ok, {len(records) - ok} failed{lost} · "
            f"device: {values(lambda r: r.get('provenance', {}).get('device'))} · "
            f"commit: {values(lambda r: (r.get('provenance', {}).get('git_commit') or '')[:10])}")


def markdown(report: Report) -> str:
    parts = ["# peftlab assessment", "", summary(report.records, report.unreadable), "", LEGEND]
    for table in report.tables:
        parts += ["", f"## {table.model}", "", *[f"> {note}" for note in table.notes], "",
                  tables.markdown(tables.score_grid(table))]
        for title, grid in reference_grids(table):
            parts += ["", f"### {title}", "", tables.markdown(grid)]
        figures = list(report.figures.get(table.model, {}))
        parts += [f"\n![{fig}]({fig})" for fig in figures if fig.startswith("score_vs_")]
        memory = tables.memory_grid(table, report.records)
        if memory.rows:  # no run measured a breakdown (bench --no-memory-breakdown): no empty table
            parts += ["", f"### {MEMORY_TITLE}", "", tables.markdown(memory)]
        parts += [f"\n![{fig}]({fig})" for fig in figures if not fig.startswith("score_vs_")]
    parts += ["", "## Runs", "", tables.markdown(tables.runs_grid(report.records))]
    return "\n".join(parts) + "\n"


def reference_grids(table: Table) -> list[tuple[str, tables.Grid]]:
    """Per task with any converged reference (bench/references.py): its heading and each method's two scores."""
    references = load_references()
    found = [(task, tables.reference_grid(table, task, references)) for task in table.tasks]
    return [(f"{task}: beside the converged reference ({references['source']})", grid)
            for task, grid in found if grid is not None]


# -- CSV and LaTeX --------------------------------------------------------------------------------------
def csv_text(tables: list[Table]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "family", "method", "column", "metric", "mean", "std", "n", "best"])
    for table in tables:
        for row in table.rows:
            for column in table.columns:
                cell = row.cells[column]
                writer.writerow([table.model, row.family, row.label, column, table.metric_names.get(column, ""),
                                 "" if cell.mean is None else repr(cell.mean),
                                 "" if cell.std is None else repr(cell.std), cell.n, int(cell.best)])
    return buffer.getvalue()


def _latex_escape(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text).replace("~", r"\textasciitilde{}")


def latex(tables: list[Table]) -> str:
    parts = []
    for table in tables:
        columns = [_latex_escape(c) for c in table.columns]
        parts += [r"\begin{table}[t]", r"\centering", r"\small",
                  r"\begin{tabular}{ll" + "r" * len(columns) + "}", r"\toprule",
                  "Family & Method & " + " & ".join(columns) + r" \\", r"\midrule"]
        previous = None
        for row in table.rows:
            if previous is not None and row.family != previous:
                parts.append(r"\midrule")
            family = _latex_escape(row.family) if row.family != previous else ""
            previous = row.family
            cells = [_bold(format_cell(row.cells[c], c, r" $\pm$ "), row.cells[c].best, r"\textbf{{{}}}")
                     for c in table.columns]
            parts.append(" & ".join([family, _latex_escape(row.label), *cells]) + r" \\")
        parts += [r"\bottomrule", r"\end{tabular}",
                  rf"\caption{{{_latex_escape(table.model)}: fractions (accuracy, F1, correlations) $\times$100, "
                  r"BLEU and losses as they are; mean $\pm$ std over seeds; best in bold.}",
                  r"\end{table}", ""]
    return "\n".join(parts)


# -- HTML -----------------------------------------------------------------------------------------------
STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
         ".num{text-align:right}td.num{white-space:nowrap}blockquote{color:#555;margin:0.3em 1em}img{max-width:100%}")


def html_page(report: Report) -> str:
    """The Markdown report as one self-contained page: the same sections and tables, the figures inlined."""
    body = ["<h1>peftlab assessment</h1>", _paragraph(summary(report.records, report.unreadable)), _paragraph(LEGEND)]
    for table in report.tables:
        figures = report.figures.get(table.model, {})
        body += [f"<h2>{html.escape(table.model)}</h2>", *(f"<blockquote>{_inline_code(note)}</blockquote>"
                                                             for note in table.notes),
                 tables.html_table(tables.score_grid(table))]
        for title, grid in reference_grids(table):
            body += [f"<h3>{html.escape(title)}</h3>", tables.html_table(grid)]
        body += [_figure(name, png) for name, png in figures.items() if name.startswith("score_vs_")]
        memory = tables.memory_grid(table, report.records)
        if memory.rows:
            body += [f"<h3>{html.escape(MEMORY_TITLE)}</h3>", tables.html_table(memory)]
        body += [_figure(name, png) for name, png in figures.items() if not name.startswith("score_vs_")]
    body += ["<h2>Runs</h2>", tables.html_table(tables.runs_grid(report.records))]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>peftlab report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def _inline_code(text: str) -> str:
    """Escaped text with the Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _paragraph(text: str) -> str:
    return f"<p>{_inline_code(text)}</p>"


def _figure(name: str, png: bytes) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}"></figure>'

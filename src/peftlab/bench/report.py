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

from peftlab.bench import plots
from peftlab.bench.aggregate import Table, build_tables, format_cell
from peftlab.bench.memory import COMPONENTS
from peftlab.bench.records import read_records, runs_dir, unreadable_records
from peftlab.bench.references import load_references, reference_rows
from peftlab.bench.suite import slug
from peftlab.core.atomic import write_files_together
from peftlab.core.errors import UserError, few
from peftlab.core.outputs import OutputError, OutputKind, claim_output


REPORT_FILES = ("report.md", "results.csv", "results.tex", "report.html", "score_vs_trainable-*.png",
                "score_vs_memory-*.png", "memory-*.png", "ablation-*.png")
REPORT_OUTPUT = OutputKind(command="peftlab report", flag="DIR", owns=REPORT_FILES)
SCORES_NOTE = "Scores: fractions (accuracy, F1, correlations) ×100, BLEU and losses as they are (mean ± std over seeds)"


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
def markdown_table(table: Table) -> str:
    header = ["family", "method", *(f"{t} ({table.metric_names[t]})" for t in table.tasks), *table.columns[len(table.tasks):]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * len(table.columns)]
    previous = None
    for row in table.rows:
        family = row.family if row.family != previous else ""
        previous = row.family
        cells = [_bold(format_cell(row.cells[c], c), row.cells[c].best, "**{}**") for c in table.columns]
        lines.append("| " + " | ".join([family, f"`{row.label}`", *cells]) + " |")
    return "\n".join(lines)


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
    parts = ["# peftlab assessment", "", summary(report.records, report.unreadable), "",
             f"{SCORES_NOTE}; best per column in bold (highest score, lowest for losses; lowest trainable % "
             "and peak memory). Peak memory: CUDA max allocated on GPU, peak RSS of the run's process on CPU."]
    for table in report.tables:
        parts += ["", f"## {table.model}", "", *[f"> {note}" for note in table.notes], "", markdown_table(table)]
        parts += reference_section(table)
        figures = list(report.figures.get(table.model, {}))
        parts += [f"\n![{fig}]({fig})" for fig in figures if fig.startswith("score_vs_")]
        parts += ["", "### Memory by component (one training step, MiB): measured / predicted", "",
                  memory_table(table, report.records)]
        parts += [f"\n![{fig}]({fig})" for fig in figures if not fig.startswith("score_vs_")]
    parts += ["", "## Runs", "", runs_table(report.records)]
    return "\n".join(parts) + "\n"


def reference_section(table: Table) -> list[str]:
    """Per task, each method's score here beside its converged reference (bench/references.py), if any."""
    references, parts = load_references(), []
    for task in table.tasks:
        here = {row.label: row.cells[task].mean for row in table.rows if row.cells[task].mean is not None}
        rows = reference_rows(table.model, task, here, references)
        if rows:
            parts += ["", f"### {task}: beside the converged reference ({references['source']})", "",
                      "| method | here | converged | |", "|---|---:|---:|---|",
                      *["| " + " | ".join([f"`{rows_[0]}`", *rows_[1:]]) + " |" for rows_ in rows]]
    return parts


def memory_rows(table: Table, records: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """Per method with a measured breakdown: its label and ``measured / predicted`` MiB per component."""
    rows = []
    for row in table.rows:
        chosen = [r for r in records if r["spec"]["model"] == table.model and r["spec"]["label"] == row.label
                  and r.get("memory", {}).get("breakdown")]
        if chosen:
            parts = chosen[0]["memory"]["breakdown"]
            rows.append((row.label, [f"{_mib(parts[c]['measured'])} / {_mib(parts[c]['predicted'])}" for c in COMPONENTS]))
    return rows


def memory_table(table: Table, records: list[dict[str, Any]]) -> str:
    lines = ["| method | " + " | ".join(COMPONENTS) + " |", "|---|" + "---:|" * len(COMPONENTS)]
    lines += [f"| `{label}` | " + " | ".join(cells) + " |" for label, cells in memory_rows(table, records)]
    return "\n".join(lines)


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"


def runs_table(records: list[dict[str, Any]]) -> str:
    lines = ["| run | status | score | trainable % | peak MiB | train tokens/s | wall s | device |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for record in records:
        score = record.get("score")
        peak = record.get("memory", {}).get("peak_bytes")
        speed = record.get("train_tokens_per_second")
        status = record["status"] if record["status"] == "ok" else f"{record['status']}: {_one_line(record.get('error'))}"
        lines.append("| " + " | ".join([
            record.get("run_id", ""), status, "–" if score is None else f"{score:.2f}",
            _number(record.get("parameters", {}).get("trainable_percent"), ".3g"),
            "–" if not peak else f"{peak / 2**20:.0f}", _number(speed, ".0f"),
            _number(record.get("wall_seconds"), ".1f"), record.get("provenance", {}).get("device", "")]) + " |")
    return "\n".join(lines)


def _number(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _one_line(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()[:200].replace("|", "/")


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
def html_memory_table(table: Table, records: list[dict[str, Any]]) -> str:
    """The Markdown's memory-by-component table; empty when no run measured a breakdown."""
    rows = memory_rows(table, records)
    if not rows:
        return ""
    header = "".join(f"<th>{html.escape(name)}</th>" for name in ("method", *COMPONENTS))
    cells = "".join(f"<tr><td><code>{html.escape(label)}</code></td>"
                    + "".join(f"<td>{html.escape(cell)}</td>" for cell in parts) + "</tr>" for label, parts in rows)
    return (f"<h3>Memory by component (one training step, MiB): measured / predicted</h3>"
            f"<table><tr>{header}</tr>{cells}</table>")


def html_page(report: Report) -> str:
    body = ["<h1>peftlab assessment</h1>", f"<p>{html.escape(summary(report.records, report.unreadable))}</p>",
            f"<p>{SCORES_NOTE}; best per column in bold (highest score, lowest for losses).</p>"]
    for table in report.tables:
        body.append(f"<h2>{html.escape(table.model)}</h2>")
        body += [f"<p><em>{html.escape(note)}</em></p>" for note in table.notes]
        header = "".join(f"<th>{html.escape(c)}</th>" for c in ["family", "method", *table.columns])
        rows = []
        for row in table.rows:
            cells = "".join(_bold(html.escape(format_cell(row.cells[c], c)), row.cells[c].best, "<b>{}</b>")
                            .join(("<td>", "</td>")) for c in table.columns)
            rows.append(f"<tr><td>{html.escape(row.family)}</td><td><code>{html.escape(row.label)}</code></td>{cells}</tr>")
        body.append(f"<table><tr>{header}</tr>{''.join(rows)}</table>")
        body.append(html_memory_table(table, report.records))
        for name, png in report.figures.get(table.model, {}).items():
            encoded = base64.b64encode(png).decode("ascii")
            body.append(f'<figure><img alt="{name}" src="data:image/png;base64,{encoded}"></figure>')
    body.append("<h2>Runs</h2><pre>" + html.escape(runs_table(report.records)) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>peftlab report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")

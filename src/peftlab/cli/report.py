"""``peftlab report DIR``: tables (Markdown, CSV, LaTeX), plots and an HTML page from a sweep's run records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write the assessment report from the run records in DIR")
    parser.add_argument("output", type=Path, metavar="DIR",
                        help="a `peftlab bench --output` folder, or a folder of them (each gets its own report)")
    parser.add_argument("--overwrite", action="store_true", help="replace the report files already in DIR")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from peftlab.bench.report import write_report

    for folder in sweep_folders(arguments.output):
        for path in write_report(folder, overwrite=arguments.overwrite):
            print(path)
        warn_unreadable(folder)
    return 0


def sweep_folders(root: Path) -> list[Path]:
    """``root`` itself when it holds run records, else every folder below it that does (a published
    assessment keeps one per suite: ``records/<suite>/runs/``)."""
    from peftlab.bench.records import RUNS_FOLDER, runs_dir

    if runs_dir(root).is_dir():
        return [root]
    below = sorted(path.parent for path in root.glob(f"**/{RUNS_FOLDER}") if path.is_dir() and any(path.glob("*.json")))
    return below or [root]  # none: the report says there are no records, and how to make them


def warn_unreadable(output: Path) -> None:
    """Name the run records the report had to leave out (corrupt, truncated, not a run record)."""
    from peftlab.bench.records import runs_dir, unreadable_records
    from peftlab.bench.report import unreadable_text

    unreadable = unreadable_records(output)
    if unreadable:
        print(f"peftlab report: warning: {len(unreadable)} run record(s) in {runs_dir(output)} could not be read "
              f"and are left out of the report: {unreadable_text(unreadable)}; rerun `peftlab bench` on the "
              f"same --output to run them again", file=sys.stderr)

"""``peftlab report DIR``: tables (Markdown, CSV, LaTeX), plots and an HTML page from a sweep's run records."""

from __future__ import annotations

import argparse
from pathlib import Path

from peftlab.bench.report import write_report


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="write the assessment report from the run records in DIR")
    parser.add_argument("output", type=Path, metavar="DIR", help="a `peftlab bench --output` folder")
    parser.add_argument("--overwrite", action="store_true", help="replace the report files already in DIR")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    for path in write_report(arguments.output, overwrite=arguments.overwrite):
        print(path)
    return 0

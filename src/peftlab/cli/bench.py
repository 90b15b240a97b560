"""``peftlab bench``: run a suite (or this machine's shard of it), resuming, then write the report."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from peftlab.bench.builtin_suites import available_suites
from peftlab.tasks.base import DATA_ENV


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="run the survey's assessment: a suite of models x tasks x methods x seeds",
        description="Run a suite; finished runs are skipped, so rerunning the command resumes.")
    parser.add_argument("--suite", required=True,
                        help=f"built-in suite ({', '.join(available_suites())}) or a suite YAML file")
    parser.add_argument("--output", required=True, type=Path,
                        help="folder for run records and the report: new, empty, or an earlier sweep's (resumed)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: remove the earlier sweep's records, logs and report in --output first")
    parser.add_argument("--shard", default="1/1", metavar="K/N",
                        help="run only the K-th of N disjoint parts (e.g. one per SLURM array task)")
    parser.add_argument("--data-dir", type=Path, help=f"data root for the tasks (default: ${DATA_ENV})")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="fail a run that takes longer")
    parser.add_argument("--launch", metavar="COMMAND",
                        help="start each run with this launcher, e.g. 'torchrun --nproc-per-node 4' "
                             "or 'accelerate launch --num-processes 4' (default: one python process)")
    parser.add_argument("--pack", type=int, default=1, metavar="K",
                        help="train up to K runs at once on one frozen base, in one process (runs with the same "
                             "model, task, data and loop settings; seeds, methods that add their own layers, their "
                             "options and learning rates may differ); one record per run, with packed_with")
    parser.add_argument("--list", action="store_true", help="validate the suite and list its runs, run nothing")
    parser.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    parser.add_argument("--no-memory-breakdown", action="store_true",
                        help="skip each run's memory split by component (one more step on a fresh model)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from peftlab.bench import load_suite_checked
    from peftlab.bench.report import write_report
    from peftlab.bench.runner import BENCH_OUTPUT, Shard, is_sweep_folder, run_sweep
    from peftlab.bench.suite import SuiteError
    from peftlab.cli.report import warn_unreadable
    from peftlab.core.outputs import claim_output, remove_owned

    if arguments.pack < 1:
        raise SuiteError(f"--pack must be at least 1 (got {arguments.pack})")
    suite = load_suite_checked(arguments.suite)
    shard = Shard.parse(arguments.shard)
    runs = suite.runs()
    if arguments.list:
        for spec in shard.select(runs):
            print(spec.run_id)
        return 0
    resume = is_sweep_folder(arguments.output) and not arguments.overwrite
    claim_output(arguments.output, BENCH_OUTPUT, overwrite=arguments.overwrite, resume=resume)
    if arguments.overwrite and arguments.output.is_dir():
        remove_owned(arguments.output, BENCH_OUTPUT)
    if arguments.data_dir is not None:
        os.environ[DATA_ENV] = str(arguments.data_dir.resolve())
    result = run_sweep(runs, arguments.output, shard, timeout=arguments.timeout, launch=arguments.launch,
                       breakdown=not arguments.no_memory_breakdown, pack=arguments.pack)
    if not arguments.no_report:
        written = write_report(arguments.output)
        print(f"report: {', '.join(str(path) for path in written if path.suffix in ('.md', '.html'))}")
        warn_unreadable(arguments.output)
    print(f"done: {len(result.ran)} ran, {len(result.skipped)} skipped (finished), {len(result.failed)} failed")
    return 1 if result.failed else 0

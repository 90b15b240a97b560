"""``peftlab select``: search methods, their options and compositions under hard budgets
(:mod:`peftlab.search`); the search's modules are imported inside the handler, so ``--help`` stays light."""

from __future__ import annotations

import argparse

from peftlab.cli import CommandError

DESCRIPTION = """Choose a PEFT configuration for a model and task under hard budgets.

  peftlab select --model minilm-l6 --task sst2 --budget trainable=1% --output runs/select-sst2
  peftlab select ... --budget memory=3GiB --budget hours=2 --sampler random

Searches methods, their options (rank, targets, layers, bottleneck size, prompt length) and learning rate,
and compositions of adapters, prefixes and LoRA at chosen sizes and layers (UniPELT's and MAM's parts), with
Optuna: short runs first on a held-out part of the training split, promising ones trained further (Hyperband),
early stopping; then the best of the Pareto fronts retrained at full budget over --seeds and scored on dev.

Budgets are hard limits: a configuration over the trainable (task head included) or predicted memory budget
(weights + gradients + AdamW state) is rejected before it trains, and the study records why.

The study lives in OUTPUT/study.db, or in --storage (any SQLAlchemy URL): several processes with the same
arguments share one search (e.g. a SLURM array with --stage search, then one --stage finals). Run the same
command again to continue a killed search. Writes OUTPUT/pareto.json, recommended.yaml (a peftlab train
--config file), report.md, history.png, pareto.png and finals/."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("select", help="search methods and options under trainable/memory/time budgets",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an alias (minilm-l6), a local model folder, or a hub name")
    parser.add_argument("--task", required=True, help="a registered task (see `peftlab train --help`)")
    parser.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                        help="trainable=1%% (or a count), memory=3GiB, hours=2 (repeatable)")
    parser.add_argument("--output", required=True, metavar="DIR", help="the search's folder (continued when rerun)")
    parser.add_argument("--storage", metavar="URL", help="the study's database, a SQLAlchemy URL (default: "
                        "sqlite in DIR); workers on other machines give the same URL")
    parser.add_argument("--study-name", default="select", help="the study's name in the storage (default: select)")
    parser.add_argument("--trials", type=int, default=40, help="trials in the whole search, all workers together "
                        "(rejected and pruned ones count; default: 40)")
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                        help="tpe (default), or random: the baseline at the same compute")
    parser.add_argument("--methods", nargs="+", metavar="METHOD", help="search only these methods (default: all "
                        "in the space)")
    parser.add_argument("--stage", choices=("all", "search", "finals"), default="all",
                        help="search, then finals (default: all); one of them alone")
    parser.add_argument("--finalists", type=int, default=3, help="front members retrained at full budget (default: 3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the finals' seeds (default: 0 1 2)")
    parser.add_argument("--holdout", type=int, default=500, help="training examples held out to score trials on "
                        "(default: 500)")
    parser.add_argument("--patience", type=int, default=3, help="stop a trial after this many evaluations without "
                        "improvement on the held-out part (default: 3)")
    parser.add_argument("--epochs", type=int, default=1, help="the full budget of a run (default: 1)")
    parser.add_argument("--max-steps", type=int, help="the full budget in optimizer steps (overrides --epochs)")
    parser.add_argument("--eval-steps", type=int, default=50, help="evaluate (and let the pruner judge) every N "
                        "steps (default: 50)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int)
    parser.add_argument("--data-dir", help="the data root (default: $PEFTLAB_DATA)")
    parser.add_argument("--seed", type=int, default=0, help="the trials' training seed (default: 0)")
    parser.add_argument("--heartbeat", type=int, default=60, help="seconds between a worker's signs of life; a "
                        "trial silent for 3x this is taken as killed and run again (default: 60)")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in DIR (its study and outputs are "
                        "replaced; a study in --storage is not)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise CommandError("peftlab select searches with Optuna, which is not installed: pip install 'peftlab[select]'")
    from peftlab.search.budgets import parse_budgets
    from peftlab.search.command import SelectArgs, run_select, training_settings
    from peftlab.search.space import SPACES

    for name in ("trials", "finalists", "holdout", "patience", "eval_steps", "heartbeat"):
        if getattr(arguments, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(arguments, name)})")
    training = training_settings(
        model=arguments.model, task=arguments.task, epochs=arguments.epochs, max_steps=arguments.max_steps,
        eval_steps=arguments.eval_steps, batch_size=arguments.batch_size, max_length=arguments.max_length,
        max_train_samples=arguments.max_train_samples, data_dir=arguments.data_dir, holdout=arguments.holdout,
        seed=arguments.seed)
    run_select(SelectArgs(
        training=training, budgets=parse_budgets(arguments.budget), output=arguments.output,
        storage=arguments.storage, study_name=arguments.study_name, trials=arguments.trials,
        sampler=arguments.sampler, methods=tuple(arguments.methods or SPACES), patience=arguments.patience,
        finalists=arguments.finalists, seeds=tuple(arguments.seeds), stage=arguments.stage,
        heartbeat=arguments.heartbeat, overwrite=arguments.overwrite))
    return 0

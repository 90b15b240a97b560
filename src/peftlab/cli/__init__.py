"""The ``peftlab`` command: thin typed commands over the library, one module per command.

Each module in this package defines ``add_parser(subparsers)``, which registers its subcommand and
sets ``handler`` to a function taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from peftlab.core.errors import Interrupted, UserError


class CommandError(UserError):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftlab", description="Parameter-efficient fine-tuning, assessed.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    try:
        return int(arguments.handler(arguments) or 0)
    except UserError as error:
        print(f"peftlab {arguments.command}: error: {error}", file=sys.stderr)
        return 2
    except Interrupted as stop:  # the work is saved; the message says where and how to continue
        print(f"peftlab {arguments.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # before any work worth saving started (or a command that saves as it goes)
        print(f"peftlab {arguments.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The ``peftlab`` command: thin typed commands over the library, one module per command.

Each module in this package defines ``add_parser(subparsers)``, which registers its subcommand and
sets ``handler`` to a function taking the parsed arguments and returning an exit code. Building the parser
imports neither torch nor transformers (a command's module imports them inside its handler), so ``--help``
and ``--version`` answer at once; ``tests/cli/test_startup.py`` holds every command to that.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
from collections.abc import Sequence
from typing import Any

import peftlab
from peftlab.core.errors import Interrupted, UserError


class CommandError(UserError):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


class StopSignals:
    """SIGINT and SIGTERM while a command runs (``train`` handles them itself during its loop): each raises
    KeyboardInterrupt where the command is, so staged files are removed on the way out, and is remembered, so
    an error that the interrupt caused inside a library (a load cut short reads as a corrupt file) is reported
    as the interrupt it was."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def handle(self, number: int, frame: Any) -> None:
        self.received.append(number)
        raise KeyboardInterrupt

    def exit_code(self) -> int:
        return 128 + (self.received[0] if self.received else signal.SIGINT)

    def message(self) -> str:
        name = signal.Signals(self.received[0] if self.received else signal.SIGINT).name
        return f"stopped by {name}; nothing half-written was left (outputs are written whole or not at all)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftlab", description="Parameter-efficient fine-tuning, assessed.")
    parser.add_argument("--version", action="version", version=f"peftlab {peftlab.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    from peftlab.train.interrupt import STOP_SIGNALS, handling

    stop = StopSignals()
    with handling(STOP_SIGNALS, stop.handle):
        try:
            return int(arguments.handler(arguments) or 0)
        except BrokenPipeError:  # the reader went away (``peftlab methods | head``): nothing more to say
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (so the interpreter's final flush stays quiet)
            return 141
        except Interrupted as stopped:  # train saved its work; the message says where and how to continue
            print(f"peftlab {arguments.command}: {stopped}", file=sys.stderr)
            return stopped.exit_code
        except (KeyboardInterrupt, Exception) as error:
            if isinstance(error, KeyboardInterrupt) or stop.received:
                print(f"peftlab {arguments.command}: {stop.message()}", file=sys.stderr)
                return stop.exit_code()
            if isinstance(error, UserError):
                print(f"peftlab {arguments.command}: error: {error}", file=sys.stderr)
                return 2
            raise


if __name__ == "__main__":
    sys.exit(main())

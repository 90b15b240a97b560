"""``peftlab import --format peft SRC DST``: an HF peft adapter folder as a peftlab adapter folder.

(``peftlab.load_adapter`` also reads peft folders directly; importing gives a folder with peftlab's config.)
"""

from __future__ import annotations

import argparse

FORMATS = ("peft",)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("import", help="convert an adapter from another format (HF peft) to peftlab's")
    parser.add_argument("source", metavar="SRC", help="HF peft adapter folder (adapter_config.json + safetensors)")
    parser.add_argument("destination", metavar="DST",
                        help="folder to write: new or empty (with --overwrite, an adapter folder it replaces atomically)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an adapter folder at DST (only one holding what this command writes)")
    parser.add_argument("--format", choices=FORMATS, default="peft", help="source format (default: peft)")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from peftlab.core.serialization import read_adapter_config
    from peftlab.interop import import_peft

    destination = import_peft(arguments.source, arguments.destination, overwrite=arguments.overwrite)
    config = read_adapter_config(destination)
    print(f"wrote {destination}: {config.method} adapter (peftlab format)")
    return 0

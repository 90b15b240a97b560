"""``peftlab export --format peft SRC DST``: a peftlab adapter folder as an HF peft adapter folder."""

from __future__ import annotations

import argparse

FORMATS = ("peft",)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="write a peftlab adapter in another format (HF peft)")
    parser.add_argument("source", metavar="SRC", help="peftlab adapter folder")
    parser.add_argument("destination", metavar="DST",
                        help="folder to write: new or empty (with --overwrite, an adapter folder it replaces atomically)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an adapter folder at DST (only one holding what this command writes)")
    parser.add_argument("--format", choices=FORMATS, default="peft", help="target format (default: peft)")
    parser.add_argument("--lora-only", action="store_true",
                        help="leave out modules_to_save weights (trained heads, embeddings) that servers such as vLLM refuse")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from peftlab.interop import export_peft
    from peftlab.interop.serving import check_serving

    destination = export_peft(arguments.source, arguments.destination, lora_only=arguments.lora_only,
                              overwrite=arguments.overwrite)
    print(f"wrote {destination} (HF peft format; load with peft.PeftModel.from_pretrained(base, {str(destination)!r}))")
    report = check_serving(destination)
    if not report.servable:
        print(f"note: vLLM would not load it: {'; '.join(f.problem for f in report.findings)} (see peftlab check-serving)")
    return 0

"""``peftlab check-serving DIR``: will this adapter load in vLLM's LoRA loader; if not, why and the fix.

Exit code 0 when it loads, 1 when it will not (2 for a missing or corrupt folder).
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("check-serving", help="check that an adapter loads in vLLM's LoRA loader")
    parser.add_argument("adapter", metavar="DIR", help="adapter folder (HF peft or peftlab format)")
    parser.add_argument("--max-lora-rank", type=int,
                        help="the server's --max-lora-rank (default: vLLM's own default)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from peftlab.interop.serving import check_serving

    limits = {} if arguments.max_lora_rank is None else {"max_lora_rank": arguments.max_lora_rank}
    report = check_serving(arguments.adapter, **limits)
    print(json.dumps(report.to_dict(), indent=2) if arguments.json else report.text())
    return 0 if report.servable else 1

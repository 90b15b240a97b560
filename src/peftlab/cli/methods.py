"""``peftlab methods``: the taxonomy table (family, method, paper, mergeable, architectures)."""

from __future__ import annotations

import argparse
import json



def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("methods", help="list the PEFT methods by family")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.add_argument("--options", metavar="METHOD", help="show one method's options and their help")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from peftlab.core.registry import describe_all, get_method

    methods = describe_all()
    if arguments.options:
        spec = get_method(arguments.options)
        print(f"{spec.name} ({spec.family}): {spec.paper}\n{spec.summary}\n")
        for name, text in spec.config_class.field_help().items():
            print(f"  {name}: {text}")
        return 0
    if arguments.json:
        print(json.dumps(methods, indent=2))
        return 0
    print(markdown_table(methods))
    return 0


def markdown_table(methods: list[dict]) -> str:
    from peftlab.core.architectures import ARCHITECTURES

    rows = ["| family | method | paper | mergeable | architectures |", "|---|---|---|---|---|"]
    for item in methods:
        archs = ", ".join(ARCHITECTURES[a].label for a in item["architectures"])
        rows.append(
            f"| {item['family']} | `{item['name']}` | {item['paper']} | {'yes' if item['mergeable'] else 'no'} | {archs} |"
        )
    return "\n".join(rows)

"""``peftlab merge --model M --adapter DIR --output OUT``: a plain transformers model folder with the
adapter folded into its weights (loads with ``from_pretrained``, no peftlab or peft needed)."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("merge", help="fold an adapter into its base model and save a plain model")
    parser.add_argument("--model", required=True, help="base model: a local folder or an alias (see peftlab train)")
    parser.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder (peftlab or HF peft format)")
    parser.add_argument("--output", required=True, metavar="OUT",
                        help="model folder to write: new or empty (with --overwrite, a model folder it replaces atomically)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a model folder at --output (only one holding what merge writes)")
    parser.add_argument("--gguf-file", help="a GGUF file inside --model to read the base from")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest output change accepted between the adapted and the merged model")
    parser.add_argument("--no-verify", action="store_true", help="skip reloading the written folder to compare outputs")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from peftlab.interop.merged import merge_to_folder

    path, gguf_file = _resolve(arguments.model, arguments.gguf_file)
    merged = merge_to_folder(path, arguments.adapter, arguments.output, gguf_file=gguf_file,
                             tolerance=arguments.tolerance, verify=not arguments.no_verify,
                             overwrite=arguments.overwrite)
    check = "reloaded" if not arguments.no_verify else "in memory"
    print(f"wrote {merged.path}: {merged.layers} adapter layers merged; outputs match the adapted model "
          f"({check}, max |difference| {merged.max_abs_difference:.2g})")
    return 0


def _resolve(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """Model aliases (e.g. smollm2-135m) come from the training engine when it is installed."""
    try:
        from peftlab.train.models import resolve_model
    except ImportError:
        return model, gguf_file
    source = resolve_model(model)
    return source.path, gguf_file or source.gguf_file

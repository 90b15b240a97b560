"""Will this adapter load in vLLM's LoRA loader, and if not, why and what to do.

The checks follow what vLLM's loader does with a peft folder (``vllm/lora/peft_helper.py`` and
``lora_model.py``): ``adapter_config.json`` must give ``r``, ``lora_alpha`` and ``target_modules``; it
refuses ``modules_to_save``, DoRA, bias terms and ranks above the server's ``--max-lora-rank``; every
tensor must be a ``lora_A``/``lora_B`` (or ``lora_embedding_A``/``_B``) weight of a module whose last
name the model class lists as LoRA-capable; an embedding LoRA must match the base's vocabulary.
Architectures are data below; a model family vLLM serves without LoRA support gets "merge it".
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from peftlab.core.registry import get_method
from peftlab.core.serialization import WEIGHTS_NAME, AdapterFileError, read_adapter, read_config_json
from peftlab.interop.peft_format import PREFIX, UnsupportedPeftAdapter, is_peft_document, to_peft

# The ranks vLLM accepts for --max-lora-rank, and its default.
VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_RANK = 16
_LLAMA_LIKE = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                         "embed_tokens", "lm_head"})
# model_type -> module names vLLM's model class can put LoRA on (its packed modules unpacked).
VLLM_LORA_MODULES: dict[str, frozenset[str]] = {
    "llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE, "qwen3": _LLAMA_LIKE, "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE, "phi3": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "embed_tokens", "lm_head"}),
}
# Families vLLM serves, but whose model classes do not support LoRA.
VLLM_NO_LORA = frozenset({"gpt2", "bert", "roberta", "xlm-roberta", "t5", "mt5"})
EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "word_embeddings", "shared")
LORA_TENSOR = re.compile(r"(?P<module>.+)\.(lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)")


@dataclass(frozen=True)
class Finding:
    problem: str
    fix: str


@dataclass
class ServingReport:
    adapter: str
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def servable(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "servable": self.servable,
                "findings": [asdict(f) for f in self.findings], "notes": self.notes}

    def text(self) -> str:
        lines = [f"{self.adapter}: {'loads' if self.servable else 'will NOT load'} in vLLM's LoRA loader"]
        lines += [f"  - {f.problem}\n    fix: {f.fix}" for f in self.findings]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def check_serving(path: str | os.PathLike, max_lora_rank: int = VLLM_DEFAULT_MAX_RANK) -> ServingReport:
    """Check an adapter folder (peft or peftlab format) against vLLM's LoRA loader."""
    path = Path(path)
    report = ServingReport(str(path))
    document = read_config_json(path)
    merge_fix = f"merge it into the base and serve the merged model: peftlab merge --model BASE --adapter {path} --output OUT"
    if is_peft_document(document):
        shapes, base = _peft_tensor_shapes(path)
        base = base or _base_from_peft_config(document)
    else:
        stored = read_adapter(path)
        base = stored.base_model
        spec = get_method(stored.config.method)
        fix = merge_fix if spec.mergeable else "none in vLLM: serve it with transformers and peftlab on the base model"
        try:
            document, tensors = to_peft(stored)
        except UnsupportedPeftAdapter:
            report.findings.append(Finding(f"{spec.name!r} is not a LoRA adapter; vLLM loads LoRA only", fix))
            return report
        shapes = {name: tuple(t.shape) for name, t in tensors.items()}
        report.findings.append(Finding(
            "this folder is in peftlab's format; vLLM reads HF peft's (r, lora_alpha, target_modules)",
            f"peftlab export --format peft {path} OUT (the checks below are for that export)",
        ))
    _check_config(document, report, max_lora_rank, merge_fix, path)
    saved = tuple(f"{PREFIX}{m}." for m in document.get("modules_to_save") or [])
    _check_tensors({n: s for n, s in shapes.items() if not n.startswith(saved)}, base, report, merge_fix)
    return report


def _base_from_peft_config(document: dict[str, Any]) -> dict[str, Any]:
    """The base's model type from the base folder's config.json, when the adapter names a local one."""
    name = document.get("base_model_name_or_path")
    config = Path(name) / "config.json" if isinstance(name, str) and name else None
    if config is not None and config.is_file():
        try:
            found = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return {"model_type": found.get("model_type"), "vocab_size": found.get("vocab_size")}
    return {}


def _peft_tensor_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise AdapterFileError(f"{path} has no {WEIGHTS_NAME} (vLLM also reads safetensors first)")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            shapes = {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise AdapterFileError(f"{weights} is corrupt or truncated ({error})") from None
    try:
        base = json.loads(metadata.get("peftlab_base_model", "{}"))
    except json.JSONDecodeError:
        base = {}
    return shapes, base if isinstance(base, dict) else {}


def _check_config(document: dict[str, Any], report: ServingReport, max_rank: int, merge_fix: str, path: Path) -> None:
    peft_type = document.get("peft_type")
    if peft_type != "LORA":
        report.findings.append(Finding(f"peft_type {peft_type!r} is not LORA; vLLM loads LoRA adapters only", merge_fix))
        return
    missing = [name for name in ("r", "lora_alpha", "target_modules") if document.get(name) is None]
    if missing:
        report.findings.append(Finding(f"adapter_config.json lacks {', '.join(missing)}, which vLLM requires",
                                       f"re-export it: peftlab export --format peft {path} OUT"))
    saved = document.get("modules_to_save") or []
    if saved:
        embeddings = [m for m in saved if m.rsplit(".", 1)[-1] in EMBEDDING_MODULES]
        what = "trained embeddings (added tokens)" if embeddings else "modules trained in full"
        report.findings.append(Finding(
            f"{what} in modules_to_save ({', '.join(saved)}); vLLM refuses modules_to_save",
            f"{merge_fix}; or drop them and keep the LoRA part only (outputs then differ): "
            f"peftlab export --format peft --lora-only {path} OUT",
        ))
    if document.get("use_dora"):
        report.findings.append(Finding("DoRA (use_dora) is not supported by vLLM", merge_fix))
    if document.get("bias", "none") != "none" or document.get("lora_bias"):
        report.findings.append(Finding("the adapter trains bias terms; vLLM's LoRA has none", merge_fix))
    ranks = [document.get("r") or 0, *(document.get("rank_pattern") or {}).values()]
    rank = max(r for r in ranks if isinstance(r, int))
    if rank > max_rank:
        fitting = next((r for r in VLLM_RANKS if r >= rank), None)
        fix = (f"start vLLM with --max-lora-rank {fitting}" if fitting else merge_fix)
        report.findings.append(Finding(f"rank {rank} exceeds vLLM's --max-lora-rank {max_rank}", fix))


def _check_tensors(shapes: dict[str, tuple[int, ...]], base: dict[str, Any], report: ServingReport,
                   merge_fix: str) -> None:
    modules, strays = set(), []
    for name, shape in shapes.items():
        match = LORA_TENSOR.fullmatch(name[len(PREFIX):] if name.startswith(PREFIX) else name)
        if match is None:
            strays.append(name)
            continue
        modules.add(match["module"])
        vocab = base.get("vocab_size")
        if name.endswith("lora_embedding_A") and vocab and shape[1] != vocab:
            report.findings.append(Finding(
                f"embedding LoRA {name} has {shape[1]} rows but the base vocabulary has {vocab} (added tokens)",
                merge_fix))
    if strays:
        report.findings.append(Finding(
            f"tensors that are not LoRA A/B weights: {', '.join(strays[:4])}" + (" ..." if len(strays) > 4 else ""),
            merge_fix))
    model_type = base.get("model_type")
    if model_type in VLLM_NO_LORA:
        report.findings.append(Finding(f"vLLM's {model_type} models do not support LoRA adapters", merge_fix))
        return
    supported = VLLM_LORA_MODULES.get(model_type or "")
    if supported is None:
        report.notes.append(
            f"base model type {model_type or 'unknown'}: target modules not checked; vLLM accepts a module when "
            f"the model class lists its last name as LoRA-capable"
        )
        return
    unsupported = sorted({m.rsplit(".", 1)[-1] for m in modules} - supported)
    if unsupported:
        report.findings.append(Finding(
            f"vLLM cannot put LoRA on {', '.join(unsupported)} in {model_type} models "
            f"(it can on {', '.join(sorted(supported))})", merge_fix))

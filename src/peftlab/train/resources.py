"""Peak memory, the step measures of a log line, and the JSONL metrics log."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from peftlab.core.atomic import out_of_space_as_user_error, write_text_atomic
from peftlab.train.checkpoint import Progress


def peak_memory(device: torch.device) -> dict[str, Any]:
    """CUDA's peak allocated bytes on a GPU; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda_max_allocated"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_bytes": int(peak if sys.platform == "darwin" else peak * 1024), "peak_memory_kind": "cpu_peak_rss"}


def step_measures(accelerator: Any, progress: Progress, grad_norm: torch.Tensor | None) -> dict[str, float]:
    """A log line's real (non-pad) tokens per second of all processes since the run started, peak memory so far,
    and the last step's gradient norm before clipping (every process calls this: the sums are collectives)."""
    device = accelerator.device
    tokens = int(accelerator.reduce(torch.tensor(progress.train_tokens, device=device), reduction="sum"))
    measures = {"tokens_per_s": tokens / max(progress.train_time_s, 1e-9),
                "peak_memory_bytes": peak_memory(device)["peak_memory_bytes"]}
    if grad_norm is not None:
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP2
        measures["grad_norm"] = float(norm)
    return measures


def write_log_line(path: Path, record: dict[str, Any]) -> None:
    with out_of_space_as_user_error(path, replaced=False), open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def trim_log(path: Path, step: int) -> None:
    """On resume: drop what the interrupted run logged after the checkpoint it resumes from."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if record.get("step", 0) <= step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))

"""Peak memory and the JSONL metrics log."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import torch

from peftlab.core.atomic import out_of_space_as_user_error, write_text_atomic


def peak_memory(device: torch.device) -> dict[str, Any]:
    """CUDA's peak allocated bytes on a GPU; the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return {"peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)), "peak_memory_kind": "cuda_max_allocated"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_bytes": int(peak if sys.platform == "darwin" else peak * 1024), "peak_memory_kind": "cpu_peak_rss"}


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

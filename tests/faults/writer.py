"""A process that saves an adapter, a checkpoint-shaped folder and a results file over and over, for the
kill -9 tests. Save k writes the value k into every tensor and record, so a reader can tell a torn
write (values from two saves) from a whole one.

    python writer.py OUT [--die-at-replace N]

With ``--die-at-replace N`` the process SIGKILLs itself just before its N-th ``os.replace``: a kill at an
exact point of the atomic protocol (before the swap, between retiring the old folder and renaming the new).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import peftlab
from conftest import tiny_llama
from peftlab.core.atomic import atomic_directory, write_text_atomic


def die_at_replace(n: int) -> None:
    real = os.replace
    calls = {"count": 0}

    def replace(source, destination):
        calls["count"] += 1
        if calls["count"] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        real(source, destination)

    os.replace = replace


def main() -> None:
    out = Path(sys.argv[1])
    if "--die-at-replace" in sys.argv:
        die_at_replace(int(sys.argv[sys.argv.index("--die-at-replace") + 1]))
    model = peftlab.apply(tiny_llama().eval(), "lora", rank=4)
    start = json.loads((out / "results.json").read_text())["k"] + 1 if (out / "results.json").exists() else 1
    for k in range(start, start + 10_000):
        with torch.no_grad():
            for _, parameter in peftlab.adapter_parameters(model):
                parameter.fill_(float(k))
        peftlab.save_adapter(model, out / "adapter")
        with atomic_directory(out / "checkpoint") as staging:
            peftlab.save_adapter(model, staging / "adapter")
            save_file({"step": torch.tensor([k])}, str(staging / "optimizer.safetensors"))
            (staging / "state.json").write_text(json.dumps({"k": k}))
        write_text_atomic(out / "results.json", json.dumps({"k": k}))
        print(k, flush=True)


if __name__ == "__main__":
    main()

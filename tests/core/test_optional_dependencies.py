"""The library needs torch, transformers and safetensors only: bitsandbytes (the ``quant`` extra) is
imported when a quantized base is asked for, and its absence is then a clear error."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys

    class Missing:  # behaves as if bitsandbytes were not installed
        def find_spec(self, name, path=None, target=None):
            if name == "bitsandbytes" or name.startswith("bitsandbytes."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, Missing())
    import peftlab
    from conftest import tiny_llama

    model = peftlab.apply(tiny_llama(), "dora", rank=2)
    print("dora ok", peftlab.parameter_counts(model)[0] > 0)
    try:
        peftlab.apply(tiny_llama(), "qlora", rank=2)
    except ImportError as error:
        print("qlora:", error)
    print("bitsandbytes imported:", "bitsandbytes" in sys.modules)
""")


def test_peftlab_imports_and_adapts_without_bitsandbytes(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path), env={"PYTHONPATH": ":".join(sys.path)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "dora ok True" in lines
    assert any(line.startswith("qlora:") and "pip install 'peftlab[quant]'" in line for line in lines)
    assert "bitsandbytes imported: False" in lines

"""keep_freed_memory: a freed large block stays in the process for the next allocation (glibc only)."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="mallopt thresholds are glibc's")

# Allocates and frees a 256 MiB tensor (touched), then prints how much of it the process still holds.
PROBE = textwrap.dedent("""
    import os, sys, torch
    from peftlab.train.speedups.host_memory import keep_freed_memory
    if sys.argv[1] == "keep":
        assert keep_freed_memory() and keep_freed_memory()  # applying it twice is harmless
    def resident():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    before = resident()
    block = torch.ones(64 * 2**20)  # 256 MiB
    del block
    print((resident() - before) / 2**20)
""")


def _held_after_free_mib(mode: str) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this checkout's peftlab, as pytest imports it
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env)
    return float(result.stdout.strip().splitlines()[-1])


def test_a_freed_block_goes_back_to_the_system_by_default_and_stays_when_kept():
    assert _held_after_free_mib("system") < 64
    assert _held_after_free_mib("keep") > 192

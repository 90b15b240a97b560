"""Keep freed host memory in the process, so a CPU training step does not fault its tensors in anew.

glibc's malloc serves a request above its mmap threshold (128 KiB, raised as large blocks are freed, at
most to 32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``; it also trims the heap's
free top above a trim threshold. A training step allocates and frees hundreds of megabytes of activations
and gradients, so every step the kernel maps and zeroes those pages again. A method that allocates more
than the base model (an adapter's products, AdaLoRA's importance stacks) pays that more (measured in
``benchmarks/RESULTS-host-memory.md``).

:func:`keep_freed_memory` raises both thresholds (``mallopt``: ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``)
to 2 GiB, so a freed block stays in the heap for the next step's tensors: what jemalloc and tcmalloc do,
which PyTorch's CPU performance guide recommends preloading. The cost: the process holds on to its peak of
host memory until it exits. ``peftlab train`` calls it when it trains on the CPU
(``--no-keep-freed-memory`` leaves malloc as it is). Elsewhere (another C library, macOS, Windows) it does
nothing and returns False.
"""

from __future__ import annotations

import ctypes
import platform
import sys

# mallopt's parameter numbers (glibc malloc.h) and the largest value it takes (an int).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BELOW_BYTES = 2**31 - 1

_kept = False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks up to 2 GiB for reuse; True when that is in effect."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    _kept = bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BELOW_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BELOW_BYTES))
    return _kept

"""Interop tests build peft's BOFT with its CPU stand-in kernel (see ``peft_cases.peft_boft_on_cpu``)."""

import pytest

from interop.peft_cases import peft_boft_on_cpu


@pytest.fixture(autouse=True)
def _peft_boft_kernel():
    with peft_boft_on_cpu():
        yield

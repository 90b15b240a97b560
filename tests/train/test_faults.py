"""The helpers the training loop uses for NaN losses and out-of-memory errors (peftlab.train.faults)."""

from __future__ import annotations

import pytest
import torch

from peftlab.core.errors import UserError
from peftlab.train.faults import (
    NonFiniteLossError,
    OutOfMemoryError,
    check_finite_loss,
    is_out_of_memory,
    out_of_memory_message,
    raise_out_of_memory,
)


def test_a_finite_loss_passes():
    check_finite_loss(torch.tensor(2.5, requires_grad=True), step=3)
    check_finite_loss(0.0, step=0)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_loss_stops_with_the_step_the_checkpoint_and_the_fixes(value, tmp_path):
    with pytest.raises(NonFiniteLossError) as caught:
        check_finite_loss(torch.tensor(value), step=17, last_checkpoint=tmp_path / "checkpoint-16", learning_rate=3e-3)
    message = str(caught.value)
    assert f"became {value} at step 17" in message
    assert "checkpoint-16; resume from it" in message
    assert "Lower the learning rate (now 0.003)" in message and "clip gradients" in message
    assert isinstance(caught.value, UserError)


def test_without_a_checkpoint_it_says_so():
    with pytest.raises(NonFiniteLossError, match="no checkpoint was written yet"):
        check_finite_loss(float("nan"), step=1)


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1"),
    RuntimeError("MPS backend out of memory"),
    MemoryError(),
])
def test_allocation_failures_are_recognised(error):
    assert is_out_of_memory(error)


def test_other_errors_are_not_out_of_memory():
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not a runtime failure


def test_the_message_lists_the_settings_and_what_reduces_memory():
    message = out_of_memory_message(torch.OutOfMemoryError("CUDA out of memory"),
                                    {"batch_size": 32, "max_length": 512, "gradient_checkpointing": False})
    assert message.startswith("out of memory on the GPU with batch_size=32, max_length=512")
    for option in ("gradient_accumulation_steps", "shorter max_length", "gradient_checkpointing=true", "bf16", "qlora"):
        assert option in message
    already = out_of_memory_message(None, {"gradient_checkpointing": True})
    assert "gradient_checkpointing=true" not in already


def test_raise_out_of_memory_converts_only_allocation_failures():
    with pytest.raises(OutOfMemoryError, match="batch_size=8") as caught:
        raise_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"), {"batch_size": 8})
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    other = RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        raise_out_of_memory(other)

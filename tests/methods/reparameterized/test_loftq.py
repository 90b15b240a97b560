"""QLoRA's LoftQ start (arXiv 2310.08659) on the CPU: its start is closer to the float weight than QLoRA's zero
start, it equals a hand-written reference of the alternation and peft's own ``loftq_init`` (run on the CPU: it
places the weight on ``cuda``, which the test redirects), and the adapter saves, loads and merges like any QLoRA
adapter."""

from __future__ import annotations

import copy

import bitsandbytes.functional as bnbf
import pytest
import torch
from torch import nn

import peftlab
from conftest import tiny_gpt2, tiny_llama
from peftlab.core.probe import probe_output
from peftlab.core.quantized import base_weight
from peftlab.interop import export_peft
from peftlab.interop.peft_converters import UnsupportedPeftAdapter
from peftlab.methods.reparameterized._loftq import loftq_layer, start_error
from peftlab.methods.reparameterized.qlora import QLoRAConfig, QuantizationMismatchError, quantize_linear, \
    quantize_model

FP32 = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "compute_dtype": "float32"}


def reference_loftq(weight: torch.Tensor, rank: int, scaling: float, iterations: int):
    """The paper's Algorithm 1 written out with bitsandbytes' functions: NF4, blocks of 64, double quantisation."""
    weight = weight.double()
    a = torch.zeros(rank, weight.shape[1], dtype=torch.float64)
    b = torch.zeros(weight.shape[0], rank, dtype=torch.float64)
    for _ in range(iterations):
        codes, state = bnbf.quantize_4bit((weight - scaling * b @ a).float(), blocksize=64, compress_statistics=True,
                                          quant_type="nf4")
        quantized = bnbf.dequantize_4bit(codes, state).double()
        u, s, vh = torch.linalg.svd(weight - quantized, full_matrices=False)
        b = u[:, :rank] * torch.sqrt(s[:rank] / scaling)
        a = torch.sqrt(s[:rank] / scaling)[:, None] * vh[:rank]
    return quantized, a, b


def errors(linear: nn.Module, rank: int, alpha: float, iterations: int) -> tuple[float, float]:
    """(QLoRA's zero-start error, LoftQ's) for one float layer."""
    config = QLoRAConfig(rank=rank, alpha=alpha, compute_dtype="float32")
    weight = linear.weight.detach().clone()
    zero = start_error(weight, base_weight(quantize_linear(linear, config), torch.float32), None, alpha / rank)
    layer, factors = loftq_layer(linear, config, rank, alpha / rank, iterations)
    assert torch.equal(linear.weight, weight), "the float layer is left as it was"
    return zero, start_error(weight, base_weight(layer, torch.float32), factors, alpha / rank)


@pytest.mark.parametrize("iterations", [1, 5])
def test_start_error_is_below_the_zero_start(iterations):
    torch.manual_seed(0)
    gaussian = nn.Linear(1536, 576, bias=False)
    nn.init.normal_(gaussian.weight)
    llama = tiny_llama().model.layers[0].mlp.down_proj  # (32, 64)
    for name, linear, rank in (("576x1536 N(0,1), r=16", gaussian, 16), ("tiny LLaMA down_proj 32x64, r=4", llama, 4)):
        zero, loftq = errors(linear, rank, 16.0, iterations)
        print(f"\n{name}, alpha 16, T={iterations}: zero start {zero:.4f}, LoftQ {loftq:.4f}")
        assert loftq < zero


def test_matches_the_hand_written_reference():
    torch.manual_seed(1)
    linear = nn.Linear(128, 96, bias=False)
    for iterations in (1, 3):
        config = QLoRAConfig(rank=8, alpha=16.0, compute_dtype="float32")
        layer, (a, b) = loftq_layer(linear, config, 8, 2.0, iterations)
        quantized, a_ref, b_ref = reference_loftq(linear.weight.detach(), 8, 2.0, iterations)
        assert torch.equal(base_weight(layer, torch.float64), quantized)
        torch.testing.assert_close(b.double() @ a.double(), b_ref @ a_ref, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(a.double().abs(), a_ref.abs(), atol=1e-5, rtol=1e-4)


@pytest.fixture
def cuda_placements_on_the_cpu(monkeypatch):
    """peft's ``loftq_init`` moves the weight to ``cuda`` and quantizes it there with bitsandbytes, whose 4-bit
    functions also run on the CPU: every ``Tensor.to`` that names CUDA goes to the CPU instead, so peft's own
    code runs here unchanged (its arithmetic does not depend on the device)."""
    original = torch.Tensor.to

    def names_cuda(value) -> bool:
        return (isinstance(value, str) and value.startswith("cuda")) or \
            (isinstance(value, torch.device) and value.type == "cuda")

    def to(self, *args, **kwargs):
        args = tuple("cpu" if names_cuda(value) else value for value in args)
        if names_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)


@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("shape, rank", [((32, 64), 4), ((96, 128), 8)])
def test_the_start_is_peft_loftq_init(cuda_placements_on_the_cpu, shape, rank, iterations):
    """At ``alpha = rank`` (peft's ``B A`` carries no scale) and without double quantisation (peft quantizes
    without it), the same float weight gives peft's stored base, its factors (up to an SVD sign) and its start."""
    from peft.utils.loftq_utils import loftq_init

    torch.manual_seed(0)
    linear = nn.Linear(shape[1], shape[0], bias=False)
    weight = linear.weight.detach().clone()
    base_peft, a_peft, b_peft = loftq_init(weight.clone(), num_bits=4, reduced_rank=rank, num_iter=iterations)
    config = QLoRAConfig(rank=rank, alpha=float(rank), double_quant=False, compute_dtype="float32")
    layer, (a, b) = loftq_layer(linear, config, rank, 1.0, iterations)
    base = base_weight(layer, torch.float32)
    # ours subtracts s B A in float64, peft in float32: the quantizer's input differs in the last bit, never its codes
    torch.testing.assert_close(base, base_peft, atol=2e-7, rtol=0)
    torch.testing.assert_close(b @ a, b_peft @ a_peft, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.abs(), a_peft.abs(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(b.abs(), b_peft.abs(), atol=1e-5, rtol=1e-4)
    assert start_error(weight, base, (a, b), 1.0) == pytest.approx(start_error(weight, base_peft, (a_peft, b_peft), 1.0),
                                                                    rel=1e-5)


@pytest.mark.parametrize("builder", [tiny_llama, tiny_gpt2])
def test_the_adapted_model_starts_closer_to_the_float_one(builder):
    base = builder().eval()
    zero = peftlab.apply(copy.deepcopy(base), "qlora", **FP32)
    loftq = peftlab.apply(copy.deepcopy(base), "qlora", **FP32, init="loftq", loftq_iterations=2)
    expected = probe_output(base)
    assert (probe_output(loftq) - expected).norm() < (probe_output(zero) - expected).norm()
    layer = next(m for m in loftq.modules() if getattr(m, "loftq", False))
    assert layer.lora_B.abs().sum() > 0 and peftlab.peft_state(loftq).alters_base


def test_save_load_merge(tmp_path):
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "qlora", **FP32, init="loftq")
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.mul_(1.1)
    expected = probe_output(model)
    peftlab.save_adapter(model, tmp_path / "adapter")
    loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    torch.testing.assert_close(probe_output(loaded), expected, atol=0, rtol=0)
    assert peftlab.merge(loaded).max_abs_difference < 1e-4
    with pytest.raises(UnsupportedPeftAdapter, match="LoftQ"):
        export_peft(model, tmp_path / "peft")


def test_refusals():
    model = tiny_llama()
    quantize_model(model, QLoRAConfig())
    with pytest.raises(QuantizationMismatchError, match="float model"):
        peftlab.apply(model, "qlora", init="loftq")
    with pytest.raises(peftlab.ConfigError, match="loftq_iterations"):
        peftlab.make_config("qlora", init="loftq", loftq_iterations=0)
    with pytest.raises(peftlab.ConfigError, match="LoftQ"):
        peftlab.make_config("qdora", init="loftq")

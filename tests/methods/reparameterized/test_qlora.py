"""QLoRA: 4-bit storage measured from the stored tensors, training over a frozen quantized base, merge."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.pytorch_utils import Conv1D

import peftlab
from conftest import batch_for, dequantized_copy, tiny_gpt2, tiny_llama
from peftlab.core.probe import probe_output
from peftlab.methods.reparameterized.qlora import (
    QLoRAConfig,
    QuantizationMismatchError,
    QuantizedLoRALinear,
    base_weight_bytes,
    int8_merge_tolerance,
    load_quantized,
    quantize_linear,
    quantize_model,
)

FP32 = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "compute_dtype": "float32"}


def wide_llama() -> nn.Module:
    """Linear layers large enough that per-layer constants (code tables) do not dominate the bytes."""
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=4, pad_token_id=0))


def frozen_state(model):
    """Every base tensor, the 4-bit quantisation constants included."""
    state = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            quant = module.weight.quant_state
            state[f"{name}.absmax"] = quant.absmax.clone()
            state[f"{name}.absmax2"] = quant.state2.absmax.clone()
    return state


def train_and_check_the_base(model, optimizer, batch) -> None:
    """Four steps on one batch lower the loss and leave every frozen base tensor bit-identical."""
    frozen = frozen_state(model)
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for name, tensor in frozen_state(model).items():
        assert tensor.dtype == frozen[name].dtype and torch.equal(tensor, frozen[name]), f"{name} changed"


def test_nf4_base_weights_take_half_a_byte_per_weight():
    model = peftlab.apply(wide_llama(), "qlora", **FP32)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 7
    for layer in layers:  # the packed codes alone: two 4-bit codes per byte
        logical = layer.in_features * layer.out_features
        assert layer.weight.data.numel() * layer.weight.data.element_size() * 2 == logical
    stored, weights = base_weight_bytes(model)
    assert weights == sum(m.in_features * m.out_features for m in layers)
    # codes 0.5 + absmax 1/64 (8-bit) + nested absmax 4/(64*256) + per-layer tables and offset
    assert 0.5 < stored / weights < 0.53

    single = peftlab.apply(wide_llama(), "qlora", double_quant=False, **FP32)
    single_bytes, _ = base_weight_bytes(single)
    assert 0.56 < single_bytes / weights < 0.58  # fp32 absmax per 64 weights: 0.0625 bytes
    int8 = peftlab.apply(wide_llama(), "qlora", bits=8, **FP32)
    int8_bytes, _ = base_weight_bytes(int8)
    assert 1.0 < int8_bytes / weights < 1.02


def test_parameter_counts_use_logical_sizes():
    float_total = sum(p.numel() for p in tiny_llama().parameters())
    model = peftlab.apply(tiny_llama(), "qlora", **FP32)
    report = peftlab.parameter_report(model)
    lora = sum(p.numel() for _, p in peftlab.adapter_parameters(model))
    assert report.base == float_total and report.trainable == lora and report.total == float_total + lora


def test_forward_equals_the_dequantized_float_model():
    model = peftlab.apply(tiny_llama(), "qlora", **FP32)
    torch.testing.assert_close(probe_output(model), probe_output(dequantized_copy(model)), atol=1e-5, rtol=1e-5)
    # and quantisation is lossy but close: NF4 error on the base
    float_output = probe_output(tiny_llama())
    assert 0 < (probe_output(model) - float_output).abs().max() < 0.5


@pytest.mark.parametrize("options", [FP32, {**FP32, "compute_dtype": "bfloat16"}, {**FP32, "bits": 8}],
                         ids=["nf4-fp32", "nf4-bf16", "int8"])
def test_training_lowers_the_loss_and_leaves_the_quantized_base_bit_identical(options):
    model = peftlab.apply(tiny_llama(), "qlora", **options)
    optimizer = peftlab.make_optimizer(model, lr=1e-2)
    assert type(optimizer) is torch.optim.AdamW  # paged AdamW needs CUDA
    train_and_check_the_base(model, optimizer, batch_for(model))


@pytest.mark.filterwarnings("error::UserWarning")  # the base fingerprint matches the float base's
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_save_and_load_round_trip_the_lora_weights_only(tmp_path, build):
    model = peftlab.apply(build(), "qlora", **FP32)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.05)
    peftlab.save_adapter(model, tmp_path / "adapter")
    stored = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert set(stored) == {name for name, _ in peftlab.adapter_parameters(model)}
    loaded = peftlab.load_adapter(build(), tmp_path / "adapter")  # quantized again from the float base
    torch.testing.assert_close(probe_output(loaded), probe_output(model), atol=0, rtol=0)


def test_merge_gives_a_dequantized_model_and_unmerge_the_quantized_one():
    model = peftlab.apply(tiny_gpt2(), "qlora", **FP32)  # GPT-2: Conv1D layers come back as Conv1D
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.05)
    expected = probe_output(model)
    quantized = {name: m.base_layer for name, m in model.named_modules() if isinstance(m, QuantizedLoRALinear)}
    report = peftlab.merge(model)
    assert report.max_abs_difference < 1e-4  # same dequantized weights, same precision: rounding only
    for name, layer in model.named_modules():
        if isinstance(layer, QuantizedLoRALinear):
            assert type(layer.base_layer) is Conv1D and layer.base_layer.weight.dtype == torch.float32
    peftlab.unmerge(model)
    for name, layer in model.named_modules():
        if isinstance(layer, QuantizedLoRALinear):
            assert layer.base_layer is quantized[name]
    torch.testing.assert_close(probe_output(model), expected, atol=0, rtol=0)
    plain = peftlab.unload(model)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in plain.modules())
    torch.testing.assert_close(probe_output(plain), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float32])
def test_lora_math_runs_in_the_compute_dtype_and_trains_float32_factors(compute):
    torch.manual_seed(0)
    layer = QuantizedLoRALinear(quantize_linear(nn.Linear(64, 32), QLoRAConfig(compute_dtype=str(compute)[6:])),
                                rank=4, scaling=2.0, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 64, requires_grad=True)
    output = layer(x)
    base = layer.base_layer(x)
    hidden = torch.nn.functional.linear(x.to(compute), layer.lora_A.to(compute)) * 2.0  # Eq. 5, in the compute dtype
    expected = base + torch.nn.functional.linear(hidden, layer.lora_B.to(compute)).float()
    assert output.dtype == torch.float32
    torch.testing.assert_close(output, expected, atol=0, rtol=0)
    output.sum().backward()
    assert layer.lora_A.dtype == layer.lora_A.grad.dtype == layer.lora_B.grad.dtype == torch.float32
    assert layer.lora_A.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def plain_forward(layer, x):
    """The layer's forward as autograd records it without the one-product path: the base, then the LoRA."""
    return super(QuantizedLoRALinear, layer).adapted_forward(x)


def bf16_qlora_layer(bias: bool, dropout: float = 0.0) -> QuantizedLoRALinear:
    torch.manual_seed(0)
    layer = QuantizedLoRALinear(quantize_linear(nn.Linear(64, 48, bias=bias), QLoRAConfig()), rank=8, scaling=2.0,
                                dropout=dropout)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_training_forward_as_one_product_gives_the_plain_paths_numbers_bit_for_bit(bias, input_grad, dropout):
    layer = bf16_qlora_layer(bias, dropout)
    x = torch.randn(2, 5, 64, requires_grad=input_grad)
    grad = torch.randn(2, 5, 48)
    results = []
    for forward in (layer, lambda inputs: plain_forward(layer, inputs)):
        x.grad = layer.lora_A.grad = layer.lora_B.grad = None
        torch.manual_seed(1)  # the same dropout mask on both paths
        output = forward(x)
        output.backward(grad)
        results.append((output.grad_fn.name(), output, x.grad, layer.lora_A.grad, layer.lora_B.grad))
    (product_node, *product), (plain_node, *plain) = results
    assert product_node == "_FourBitLoRAProductBackward" != plain_node
    for got, expected in zip(product, plain):
        if expected is None:
            assert got is None
        else:
            assert got.dtype == expected.dtype and torch.equal(got, expected)
    if dropout:  # the dropout acted: without it the output differs
        with torch.no_grad():
            assert not torch.equal(product[0], plain_forward(layer.eval(), x))


def test_the_plain_path_runs_without_grad_and_when_compute_is_float32():
    layer = bf16_qlora_layer(bias=False, dropout=0.3).eval()
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(layer(x), plain_forward(layer, x))
    assert layer(x).grad_fn.name() == "_FourBitLoRAProductBackward"  # eval with grad: no dropout, one product
    torch.manual_seed(0)
    float_layer = QuantizedLoRALinear(quantize_linear(nn.Linear(64, 48), QLoRAConfig(compute_dtype="float32")),
                                      rank=8, scaling=2.0, dropout=0.0)
    assert float_layer(x).grad_fn.name() != "_FourBitLoRAProductBackward"


def test_merge_under_bfloat16_compute_needs_a_bfloat16_tolerance():
    """The merged model computes in float32, so it differs from the bfloat16-compute model by about what bfloat16
    rounding costs that model: measured on a float32-compute twin with the same weights (how far the rounding
    goes depends on the CPU's bfloat16 kernels: 0.0284 on an AMD EPYC, three times an estimate from 2^-8 alone)."""
    model = peftlab.apply(tiny_llama(), "qlora", **{**FP32, "compute_dtype": "bfloat16"})
    twin = peftlab.apply(tiny_llama(), "qlora", **FP32)
    with torch.no_grad():
        for (_, parameter), (_, twins) in zip(peftlab.adapter_parameters(model), peftlab.adapter_parameters(twin),
                                              strict=True):
            parameter.add_(0.05)
            twins.copy_(parameter)
    expected = probe_output(model)
    rounding = (expected - probe_output(twin)).abs().max().item()
    assert rounding > 1e-4  # bfloat16 compute does round
    with pytest.raises(peftlab.MergeError):
        peftlab.merge(model, tolerance=1e-6)
    assert not any(m.merged for m in model.modules() if isinstance(m, QuantizedLoRALinear)), "a refused merge is undone"
    report = peftlab.merge(model, tolerance=2 * rounding)
    assert 1e-6 < report.max_abs_difference <= 2 * rounding
    torch.testing.assert_close(probe_output(model), probe_output(twin), atol=1e-5, rtol=1e-4)  # float32 again


def test_merge_over_an_8_bit_base_needs_the_int8_tolerance_and_the_refusal_says_which():
    model = peftlab.apply(tiny_llama(), "qlora", **FP32, bits=8)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.05)
    expected = probe_output(model)
    tolerance = int8_merge_tolerance(model)
    # LLM.int8 rounds each layer's input to 8 bits (relative 2^-8 of the row's absmax); the merged float model
    # does not: one such rounding per 8-bit layer, 14 of them on the tiny LLaMA
    assert tolerance == pytest.approx(expected.abs().max().item() * 2**-8 * 14)
    with pytest.raises(peftlab.MergeError) as refusal:
        peftlab.merge(model)
    message = str(refusal.value)
    assert "(> tolerance 0.0001); the merge was undone" in message
    assert "8-bit (LLM.int8)" in message and f"tolerance={tolerance:.2g}" in message
    assert not any(m.merged for m in model.modules() if isinstance(m, QuantizedLoRALinear))
    torch.testing.assert_close(probe_output(model), expected, atol=0, rtol=0)

    report = peftlab.merge(model, tolerance=tolerance)
    assert 1e-3 < report.max_abs_difference <= tolerance  # measured: ~0.011
    assert all(type(m.base_layer) is nn.Linear for m in model.modules() if isinstance(m, QuantizedLoRALinear))
    peftlab.unmerge(model)
    assert all(isinstance(m.base_layer, bnb.nn.Linear8bitLt)
               for m in model.modules() if isinstance(m, QuantizedLoRALinear))
    torch.testing.assert_close(probe_output(model), expected, atol=0, rtol=0)


def test_a_refused_4_bit_merge_keeps_the_generic_advice():
    model = peftlab.apply(tiny_llama(), "qlora", **{**FP32, "compute_dtype": "bfloat16"})
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.05)
    assert int8_merge_tolerance(model) == 0.0
    with pytest.raises(peftlab.MergeError, match="Raise `tolerance` if this precision loss is acceptable"):
        peftlab.merge(model, tolerance=1e-7)


def test_quantize_an_already_loaded_model_and_load_one_in_4_bits(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    config = QLoRAConfig(**FP32)
    loaded = load_quantized(tmp_path / "base", config)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in loaded.modules()) == 14
    in_place = quantize_model(tiny_llama(), config)
    torch.testing.assert_close(probe_output(loaded), probe_output(in_place), atol=1e-5, rtol=0)
    model = peftlab.apply(loaded, config)
    assert sum(isinstance(m, QuantizedLoRALinear) for m in model.modules()) == 14
    with pytest.raises(QuantizationMismatchError, match="fp4"):
        peftlab.apply(load_quantized(tmp_path / "base", config), "qlora", quant_type="fp4")


@pytest.mark.cuda
@pytest.mark.parametrize("where", ["quantized-on-cuda", "quantized-on-cpu-then-moved"])
def test_on_cuda_nf4_trains_with_paged_adamw_keeps_the_base_and_merges(where):
    options = {**FP32, "compute_dtype": "bfloat16"}
    if where == "quantized-on-cuda":
        model = peftlab.apply(wide_llama().to("cuda"), "qlora", **options)
    else:
        model = peftlab.apply(wide_llama(), "qlora", **options).to("cuda")
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 7
    for layer in layers:
        assert layer.weight.device.type == "cuda" and layer.weight.quant_state.absmax.device.type == "cuda"
        assert layer.weight.data.numel() * layer.weight.data.element_size() * 2 == layer.in_features * layer.out_features
    bf16_tolerance = {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(probe_output(model), probe_output(dequantized_copy(model)), **bf16_tolerance)

    optimizer = peftlab.make_optimizer(model, lr=1e-2)
    assert isinstance(optimizer, bnb.optim.PagedAdamW)
    train_and_check_the_base(model, optimizer, {name: value.cuda() for name, value in batch_for(model).items()})

    expected = probe_output(model)
    tolerance = expected.abs().max().item() * 2**-8 * 2 * 4  # bf16 compute, as on CPU
    peftlab.merge(model, tolerance=tolerance)
    assert all(type(m.base_layer) is nn.Linear for m in model.modules() if isinstance(m, QuantizedLoRALinear))
    peftlab.unmerge(model)
    torch.testing.assert_close(probe_output(model), expected, atol=0, rtol=0)

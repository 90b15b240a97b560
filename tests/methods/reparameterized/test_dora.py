"""DoRA against its definition (arXiv 2402.09353): W' = m (W + s B A) / ||W + s B A||_c, y = W' x + b."""

import copy

import pytest
import torch

import peftlab
from conftest import batch_for, tiny_bert, tiny_gpt2, tiny_llama
from peftlab.core.config import ConfigError
from peftlab.core.probe import probe_output


def randomised(layer):
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_magnitude.mul_(torch.rand_like(layer.lora_magnitude) + 0.5)
    return layer


def dora_reference(x, weight_out_in, bias, layer, scale=2.0):
    """The paper's equation, written out: direction V = W + s B A, rows normalised, times the magnitude."""
    V = weight_out_in + scale * layer.lora_B @ layer.lora_A
    W_prime = layer.lora_magnitude[:, None] * V / V.norm(p=2, dim=1, keepdim=True)
    return x @ W_prime.T + (0 if bias is None else bias)


@pytest.mark.parametrize("builder, path", [
    (tiny_llama, "model.layers.0.self_attn.q_proj"),   # Linear, no bias
    (tiny_bert, "bert.encoder.layer.0.attention.self.value"),  # Linear with bias
    (tiny_gpt2, "transformer.h.0.attn.c_attn"),       # Conv1D: weight stored (in, out)
])
def test_dora_forward_matches_the_definition(builder, path):
    model = peftlab.apply(builder().eval(), "dora", rank=4, alpha=8.0)
    layer = randomised(model.get_submodule(path))
    base = layer.base_layer
    weight = base.weight.T if builder is tiny_gpt2 else base.weight
    x = torch.randn(2, 5, layer.in_features)
    torch.testing.assert_close(layer(x), dora_reference(x, weight, base.bias, layer), atol=1e-5, rtol=1e-5)


def test_magnitude_starts_as_the_row_norms_and_the_model_as_the_base():
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "dora", rank=4)
    layer = model.model.layers[1].self_attn.v_proj
    torch.testing.assert_close(layer.lora_magnitude, layer.base_layer.weight.norm(dim=1))
    assert layer.lora_magnitude.shape == (16,)
    torch.testing.assert_close(probe_output(model), probe_output(base), atol=1e-6, rtol=0)


def test_merged_weight_splits_into_the_trained_magnitude_and_the_normalised_direction():
    model = peftlab.apply(tiny_llama().eval(), "dora", rank=4, alpha=8.0)
    layers = [randomised(m) for m in model.modules() if hasattr(m, "lora_magnitude")]
    layer = layers[0]
    direction = layer.base_layer.weight + 2.0 * layer.lora_B @ layer.lora_A
    direction = (direction / direction.norm(dim=1, keepdim=True)).detach()
    peftlab.merge(model)
    merged = layer.base_layer.weight
    # magnitude: the row norms of the merged weight; direction: the rows divided by them
    torch.testing.assert_close(merged.norm(dim=1), layer.lora_magnitude.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged / merged.norm(dim=1, keepdim=True), direction, atol=1e-6, rtol=1e-5)


def test_norm_is_a_constant_in_backward_as_in_the_paper():
    model = peftlab.apply(tiny_llama().eval(), "dora", rank=4, alpha=8.0)
    layer = randomised(model.model.layers[0].self_attn.q_proj)
    x = torch.randn(3, 32)
    layer(x).square().sum().backward()
    got = layer.lora_A.grad.clone()
    A = layer.lora_A.detach().requires_grad_()
    V = layer.base_layer.weight + 2.0 * layer.lora_B.detach() @ A
    scale = layer.lora_magnitude.detach() / V.norm(dim=1).detach()
    (x @ (scale[:, None] * V).T).square().sum().backward()
    torch.testing.assert_close(got, A.grad, atol=1e-5, rtol=1e-4)


def test_residual_inits_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="kaiming"):
        peftlab.make_config("dora", init="pissa")


# -- QDoRA: DoRA over a 4-bit base ---------------------------------------------------------------------
FP32 = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "compute_dtype": "float32"}


def test_qdora_forward_uses_the_dequantized_weight_and_leaves_the_4bit_base_bit_identical():
    import bitsandbytes.functional as bnb_functional

    model = peftlab.apply(tiny_llama().eval(), "qdora", **FP32)
    layer = randomised(model.model.layers[0].self_attn.q_proj)
    packed = layer.base_layer.weight.data.clone()
    dequantized = bnb_functional.dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state)
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(layer(x), dora_reference(x, dequantized, None, layer), atol=1e-5, rtol=1e-5)
    optimizer = torch.optim.SGD(peftlab.parameter_groups(model, lr=0.05))
    model(**batch_for(model)).loss.backward()
    optimizer.step()
    assert torch.equal(layer.base_layer.weight.data, packed)


def test_qdora_with_the_default_bfloat16_compute_runs_dora_and_trains_the_magnitude():
    import bitsandbytes.functional as bnb_functional

    model = peftlab.apply(tiny_llama(), "qdora", rank=4, alpha=8.0, dropout=0.0)  # compute_dtype: bfloat16
    layer = randomised(model.model.layers[0].self_attn.q_proj)
    dequantized = bnb_functional.dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state)
    x = torch.randn(2, 3, 32)
    reference = dora_reference(x, dequantized, None, layer)
    output = layer(x)
    torch.testing.assert_close(output, reference, atol=0.03, rtol=0.02)  # the base matmul runs in bfloat16
    lora_only = layer.base_layer(x) + 2.0 * (x @ layer.lora_A.T) @ layer.lora_B.T
    assert (output - lora_only).abs().max() > 10 * (output - reference).abs().max()  # the magnitude acts
    model(**batch_for(model)).loss.backward()
    magnitudes = [p for n, p in model.named_parameters() if n.endswith("lora_magnitude")]  # all 7 linears x 2
    assert len(magnitudes) == 14 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in magnitudes)


def test_dora_over_an_already_quantized_model_merges_to_floats_and_unmerges_to_the_same_4bit_layers():
    from peftlab.core.quantized import is_4bit, quantize_model
    from peftlab.methods.reparameterized.dora import DoRALinear
    from peftlab.methods.reparameterized.qlora import QLoRAConfig

    quantized = quantize_model(tiny_llama().eval(), QLoRAConfig(compute_dtype="float32"))
    model = peftlab.apply(quantized, "dora", rank=4, alpha=8.0)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, DoRALinear) and is_4bit(m.base_layer)}
    assert len(layers) == 4  # q and v in both layers
    for layer in layers.values():
        randomised(layer)
    expected = probe_output(model)
    originals = {n: m.base_layer for n, m in layers.items()}
    peftlab.merge(model)
    assert all(type(m.base_layer) is torch.nn.Linear for m in layers.values())
    torch.testing.assert_close(probe_output(model), expected, atol=1e-4, rtol=1e-4)
    peftlab.unmerge(model)
    assert all(m.base_layer is originals[n] for n, m in layers.items())
    torch.testing.assert_close(probe_output(model), expected, atol=0, rtol=0)

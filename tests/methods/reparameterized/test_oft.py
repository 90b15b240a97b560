"""OFT against a hand-written reference: the Cayley rotation of the paper, block by block."""

import copy

import pytest
import torch
from torch import nn

import peftlab
from conftest import tiny_llama
from peftlab.core.config import ConfigError
from peftlab.methods.reparameterized.oft import OFTLinear


def oft_layers(model):
    return [m for m in model.modules() if isinstance(m, OFTLinear)]


def randomise(model, scale=0.2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))


def hand_skew(upper: torch.Tensor, b: int) -> torch.Tensor:
    """Q with Q[i, j] = upper[k] for the k-th (i < j) in row-major order, Q[j, i] = -upper[k]."""
    q = torch.zeros(b, b, dtype=torch.float64)
    k = 0
    for i in range(b):
        for j in range(i + 1, b):
            q[i, j], q[j, i] = upper[k], -upper[k]
            k += 1
    return q


def test_one_block_is_the_papers_dense_cayley_rotation():
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "oft", r=1, oft_block_size=0, target_modules=["q_proj"])
    randomise(model)
    layer = oft_layers(model)[0]
    assert layer.oft_R.shape == (1, 32 * 31 // 2)
    s = -hand_skew(layer.oft_R[0].detach().double(), 32)  # the paper's S: R = (I + S)(I - S)^-1
    eye = torch.eye(32, dtype=torch.float64)
    rotation = (eye + s) @ torch.linalg.inv(eye - s)
    torch.testing.assert_close(rotation.T @ rotation, eye)
    x = torch.randn(3, 5, 32)
    weight = layer.base_layer.weight.double()
    expected = x.double() @ (weight @ rotation.T).T  # y = (W R^T) x: the paper's R W in its (in x out) layout
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)


def test_every_block_is_orthogonal_and_acts_on_its_own_features():
    model = peftlab.apply(tiny_llama().eval(), "oft", oft_block_size=8, target_modules=["q_proj"])
    randomise(model, scale=1.0)
    layer = oft_layers(model)[0]
    blocks = layer.rotations().detach().double()
    assert blocks.shape == (4, 8, 8)
    eye = torch.eye(8, dtype=torch.float64).expand(4, 8, 8)
    torch.testing.assert_close(blocks.transpose(-1, -2) @ blocks, eye, atol=1e-5, rtol=0)
    dense = torch.block_diag(*blocks)
    x = torch.randn(6, 32)
    torch.testing.assert_close(layer.rotate(x).double(), x.double() @ dense, atol=1e-5, rtol=1e-5)


def test_the_neumann_series_is_peft_s_truncation_of_the_transposed_rotation():
    model = peftlab.apply(tiny_llama().eval(), "oft", oft_block_size=8, use_cayley_neumann=True,
                          num_cayley_neumann_terms=5, target_modules=["q_proj"])
    randomise(model, scale=0.01)
    layer = oft_layers(model)[0]
    q = hand_skew(layer.oft_R[1].detach().double(), 8)
    eye = torch.eye(8, dtype=torch.float64)
    series = eye + 2 * q + 2 * q @ q + 2 * q @ q @ q + q @ q @ q @ q
    torch.testing.assert_close(layer.rotations()[1].double(), series, atol=1e-6, rtol=0)
    exact = (eye - q) @ torch.linalg.inv(eye + q)
    torch.testing.assert_close(series, exact.T, atol=1e-5, rtol=0)


def test_block_share_trains_one_block_for_the_layer():
    model = peftlab.apply(tiny_llama().eval(), "oft", oft_block_size=8, block_share=True, target_modules=["q_proj"])
    randomise(model)
    layer = oft_layers(model)[0]
    assert layer.oft_R.shape == (1, 28)
    x = torch.randn(2, 32)
    block = layer.rotations()[0]
    torch.testing.assert_close(layer.rotate(x), x @ torch.block_diag(*[block] * 4))


def test_coft_keeps_q_in_its_ball_forward_and_after_each_step():
    eps = 1e-3
    model = peftlab.apply(tiny_llama().eval(), "oft", oft_block_size=8, coft=True, eps=eps, target_modules=["q_proj"])
    randomise(model)
    layer = oft_layers(model)[0]
    radius = eps / 4 ** 0.5
    skew_norms = 2 ** 0.5 * layer.oft_R.norm(dim=1)
    assert (skew_norms > radius).all()
    from peftlab.methods.reparameterized.oft import project_to_ball
    projected = project_to_ball(layer.oft_R.detach(), eps)
    torch.testing.assert_close(2 ** 0.5 * projected.norm(dim=1), torch.full((4,), radius))
    x = torch.randn(2, 32)
    before = layer(x)
    peftlab.training_hooks(model).after_optimizer_step(model, 0)
    torch.testing.assert_close(layer.oft_R.detach(), projected)
    torch.testing.assert_close(layer(x), before)  # the forward already used the projected Q


def test_module_dropout_sets_blocks_to_the_identity_in_training_only():
    model = peftlab.apply(tiny_llama(), "oft", oft_block_size=8, module_dropout=0.5, target_modules=["q_proj"])
    randomise(model)
    layer = oft_layers(model)[0]
    x = torch.eye(32)
    layer.train()
    dense = layer.rotate(x, dropout=True)
    identity_blocks = sum(torch.equal(dense[i:i + 8, i:i + 8], torch.eye(8)) for i in range(0, 32, 8))
    assert identity_blocks == 2
    layer.eval()
    torch.testing.assert_close(layer.rotate(x), torch.block_diag(*layer.rotations()))


def test_merge_and_unmerge_are_exact_even_for_the_non_orthogonal_series():
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "oft", oft_block_size=16, use_cayley_neumann=True,
                          num_cayley_neumann_terms=3)
    randomise(model, scale=0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = {"input_ids": torch.arange(12).reshape(2, 6)}
    expected = model(**inputs).logits
    peftlab.merge(model)
    torch.testing.assert_close(model(**inputs).logits, expected, atol=1e-4, rtol=1e-4)
    peftlab.unmerge(model)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, before[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("options", "message"), [
    ({"oft_block_size": 5}, r"oft_block_size=5 does not fit layer '.*q_proj', whose input has 32 features; "
                            r"choices for this layer: 2, 4, 8, 16, 32"),
    ({"r": 3, "oft_block_size": 0}, r"r=3 does not fit layer .* 32 features; choices for this layer: 1, 2, 4, 8, 16$"),
])
def test_a_block_size_that_does_not_divide_the_layer_names_it_and_the_choices(options, message):
    with pytest.raises(ConfigError, match=message):
        peftlab.apply(tiny_llama(), "oft", target_modules=["q_proj"], **options)


@pytest.mark.parametrize("options", [{"r": 4}, {"r": 0, "oft_block_size": 0}, {"eps": 0.0}, {"module_dropout": 1.0}])
def test_bad_options_are_refused_by_name(options):
    with pytest.raises(ConfigError, match="oft config field"):
        peftlab.apply(tiny_llama(), "oft", **options)


def test_outputs_at_initialisation_equal_the_base_for_every_variant():
    base = tiny_llama().eval()
    inputs = {"input_ids": torch.arange(12).reshape(2, 6)}
    for options in ({"block_share": True}, {"use_cayley_neumann": True}, {"coft": True}):
        model = peftlab.apply(copy.deepcopy(base), "oft", oft_block_size=8, **options)
        assert torch.equal(model(**inputs).logits, base(**inputs).logits), options
    assert isinstance(oft_layers(model)[0].base_layer, nn.Linear)

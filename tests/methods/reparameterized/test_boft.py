"""BOFT against a hand-written reference: dense butterfly factors P_i blockdiag(R_i) P_i^T, multiplied out."""

import copy

import pytest
import torch

import peftlab
from conftest import tiny_llama
from peftlab.core.config import ConfigError
from peftlab.methods.reparameterized.boft import BOFTLinear

F64 = torch.float64


def boft_layers(model):
    return [m for m in model.modules() if isinstance(m, BOFTLinear)]


def randomise(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def hand_permutation(n: int, b: int, i: int) -> torch.Tensor:
    """Factor i's matrix P (P[j, perm[j]] = 1): runs of b 2^i features, half-blocks of b/2, evens then odds."""
    perm = []
    run, half = b * 2 ** i, b // 2
    for start in range(0, n, run):
        pieces = [list(range(start + k * half, start + (k + 1) * half)) for k in range(run // half)]
        for k in list(range(0, len(pieces), 2)) + list(range(1, len(pieces), 2)):
            perm += pieces[k]
    matrix = torch.zeros(n, n, dtype=F64)
    matrix[torch.arange(n), torch.tensor(perm)] = 1
    return matrix


def hand_rotation(boft_r: torch.Tensor) -> torch.Tensor:
    """M = B_{m-1} ... B_0, B_i = P_i blockdiag(R_i1 ..) P_i^T, R = (I - S)(I + S)^-1, S = (A - A^T)/2."""
    factors, blocks, b, _ = boft_r.shape
    n = blocks * b
    eye = torch.eye(b, dtype=F64)
    m = torch.eye(n, dtype=F64)
    for i in range(factors):
        rotations = []
        for a in boft_r[i].double():
            s = (a - a.T) / 2
            rotations.append((eye - s) @ torch.linalg.inv(eye + s))
        p = hand_permutation(n, b, i) if i else torch.eye(n, dtype=F64)
        m = p @ torch.block_diag(*rotations) @ p.T @ m
    return m


@pytest.mark.parametrize(("factors", "size"), [(1, 4), (2, 4), (3, 2), (2, 8)])
def test_the_layer_is_the_scaled_weight_times_the_butterfly_product(factors, size):
    model = peftlab.apply(tiny_llama().eval(), "boft", boft_block_size=size, boft_n_butterfly_factor=factors,
                          target_modules=["down_proj"])  # 64 inputs
    randomise(model)
    layer = boft_layers(model)[0]
    m = hand_rotation(layer.boft_R.detach())
    torch.testing.assert_close(m.T @ m, torch.eye(64, dtype=F64))
    x = torch.randn(3, 64)
    weight = layer.base_layer.weight.double()
    expected = x.double() @ (layer.boft_s.detach().double() * (weight @ m.T)).T
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)


def test_each_factor_doubles_the_span_of_features_mixed():
    model = peftlab.apply(tiny_llama().eval(), "boft", boft_block_size=4, boft_n_butterfly_factor=3,
                          target_modules=["down_proj"])
    randomise(model)
    m = boft_layers(model)[0].rotation().detach()
    # 3 factors of 4 x 4 blocks: dense 16 x 16 diagonal blocks, nothing outside them
    mask = torch.block_diag(*[torch.ones(16, 16)] * 4).bool()
    assert (m[~mask] == 0).all() and (m[mask] != 0).float().mean() > 0.9


def test_the_scale_leaves_the_bias_alone():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=64)).eval()
    model = peftlab.apply(bert, "boft", boft_block_size=8, target_modules=["query"])
    layer = boft_layers(model)[0]
    with torch.no_grad():
        layer.boft_s.fill_(2.0)
    x = torch.randn(2, 32)
    base = layer.base_layer
    torch.testing.assert_close(layer(x), 2 * (base(x) - base.bias) + base.bias)


def test_merge_writes_diag_s_w_mt_and_unmerge_restores_w():
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "boft", boft_block_size=4, boft_n_butterfly_factor=2,
                          target_modules=["q_proj"])
    randomise(model)
    layer = boft_layers(model)[0]
    m = hand_rotation(layer.boft_R.detach())
    original = layer.base_layer.weight.detach().clone()
    expected = (layer.boft_s.detach().double() * (original.double() @ m.T)).float()
    peftlab.merge(model)
    torch.testing.assert_close(layer.base_layer.weight.detach(), expected, atol=1e-6, rtol=1e-5)
    peftlab.unmerge(model)
    torch.testing.assert_close(layer.base_layer.weight.detach(), original, atol=1e-6, rtol=1e-5)


def test_dropout_sets_some_blocks_of_one_factor_to_the_identity_in_training():
    model = peftlab.apply(tiny_llama(), "boft", boft_block_size=8, boft_dropout=0.5, target_modules=["q_proj"])
    randomise(model)
    layer = boft_layers(model)[0]
    x = torch.eye(32)
    dropped = layer.rotate(x, dropout=True)
    assert sum(torch.equal(dropped[i:i + 8, i:i + 8], torch.eye(8)) for i in range(0, 32, 8)) == 2
    torch.testing.assert_close(layer.rotate(x), layer.rotation())


@pytest.mark.parametrize(("options", "message"), [
    ({"boft_block_size": 6}, r"boft_block_size=6 does not fit layer '.*q_proj', whose input has 32 features; "
                             r"choices for this layer: 1, 2, 4, 8, 16, 32"),
    ({"boft_block_size": 16, "boft_n_butterfly_factor": 3},  # 3 factors need 4 blocks of the size per run
     r"boft_block_size=16 .* choices for this layer: 2, 4, 8$"),
    ({"boft_block_size": 0, "boft_block_num": 3}, r"boft_block_num=3 .* choices for this layer: 1, 2, 4, 8, 16, 32"),
])
def test_a_block_size_that_does_not_fit_the_layer_names_it_and_the_choices(options, message):
    with pytest.raises(ConfigError, match=message):
        peftlab.apply(tiny_llama(), "boft", target_modules=["q_proj"], **options)


@pytest.mark.parametrize("options", [{"boft_block_num": 4}, {"boft_n_butterfly_factor": 0}, {"boft_dropout": 1.0}])
def test_bad_options_are_refused_by_name(options):
    with pytest.raises(ConfigError, match="boft config field"):
        peftlab.apply(tiny_llama(), "boft", **options)

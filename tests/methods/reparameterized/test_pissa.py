"""PiSSA (arXiv 2404.02948) and OLoRA (arXiv 2406.01775) initialisations of LoRA, against hand-written
SVD / QR references; the model starts as the base, and a saved adapter loads onto the untouched base."""

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import peftlab
from conftest import FAMILY_BUILDERS, tiny_gpt2, tiny_llama
from peftlab.core.probe import probe_output
from peftlab.core.serialization import load_adapter_state_dict
from peftlab.methods.reparameterized._lora_init import InitError


def relative_close(actual, expected, tolerance=1e-5):
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= tolerance * max(scale, 1.0)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_initial_model_equals_the_base_model(init, architecture):
    base = FAMILY_BUILDERS[architecture]().eval()
    model = peftlab.apply(copy.deepcopy(base), "lora", rank=4, alpha=8.0, init=init)
    relative_close(probe_output(model), probe_output(base))


def test_pissa_factors_are_the_principal_singular_triplets():
    base = tiny_llama()
    W = base.model.layers[0].self_attn.v_proj.weight.detach().double().numpy()  # (16, 32)
    model = peftlab.apply(base, "lora", rank=4, alpha=8.0, init="pissa")
    layer = model.model.layers[0].self_attn.v_proj
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    principal = U[:, :4] @ np.diag(S[:4]) @ Vt[:4]
    s = 8.0 / 4
    BA = (layer.lora_B @ layer.lora_A).detach().double().numpy()
    np.testing.assert_allclose(s * BA, principal, atol=1e-5)
    np.testing.assert_allclose(layer.base_layer.weight.detach().double().numpy(), W - principal, atol=1e-5)
    # A = sqrt(S_r / s) V_r^T and B = U_r sqrt(S_r / s): both Gram matrices are diag(S_r) / s
    A, B = layer.lora_A.detach().double().numpy(), layer.lora_B.detach().double().numpy()
    np.testing.assert_allclose(A @ A.T, np.diag(S[:4]) / s, atol=1e-5)
    np.testing.assert_allclose(B.T @ B, np.diag(S[:4]) / s, atol=1e-5)


def test_olora_factors_are_the_leading_qr_factors():
    base = tiny_gpt2()
    W = base.transformer.h[0].attn.c_attn.weight.detach().T.double().numpy()  # Conv1D: (out, in) = (96, 32)
    model = peftlab.apply(base, "lora", rank=4, alpha=4.0, init="olora")
    layer = model.transformer.h[0].attn.c_attn
    A, B = layer.lora_A.detach().double().numpy(), layer.lora_B.detach().double().numpy()
    np.testing.assert_allclose(B.T @ B, np.eye(4), atol=1e-5)  # orthonormal columns of Q
    np.testing.assert_allclose(np.tril(A[:, :4], -1), 0, atol=1e-6)  # rows of the upper-triangular R
    Q, R = np.linalg.qr(W)
    np.testing.assert_allclose(np.abs(B), np.abs(Q[:, :4]), atol=1e-5)  # up to the sign of each column
    np.testing.assert_allclose(layer.base_layer.weight.detach().T.double().numpy(), W - B @ A, atol=1e-5)


def test_saved_adapter_loads_on_the_untouched_base_and_converts_to_plain_lora(tmp_path):
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "lora", rank=4, alpha=8.0, init="pissa")
    with torch.no_grad():
        for _, p in peftlab.adapter_parameters(model):
            p.add_(0.05 * torch.randn_like(p))
    peftlab.save_adapter(model, tmp_path / "adapter")
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert {name.rsplit(".", 1)[1] for name in tensors} == {"lora_A", "lora_B", "lora_A_init", "lora_B_init"}
    loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    torch.testing.assert_close(probe_output(loaded), probe_output(model), atol=0, rtol=0)
    # the stored initial factors convert it to a plain update of the untouched base: s (B A - B0 A0)
    prefix = "model.layers.0.self_attn.q_proj."
    t = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    delta = 2.0 * (t["lora_B"] @ t["lora_A"] - t["lora_B_init"] @ t["lora_A_init"])
    adapted = model.model.layers[0].self_attn.q_proj
    relative_close(base.model.layers[0].self_attn.q_proj.weight + delta,
                   adapted.base_layer.weight + adapted.delta_weight().detach())


def test_loading_other_initial_factors_refits_the_residual(tmp_path):
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "lora", rank=2, alpha=2.0, init="pissa")
    peftlab.save_adapter(model, tmp_path / "adapter")
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    tensors = {k: (-v if k.endswith(("lora_A", "lora_A_init")) else v) for k, v in tensors.items()}
    fresh = peftlab.apply(copy.deepcopy(base), "lora", rank=2, alpha=2.0, init="pissa")
    load_adapter_state_dict(fresh, tensors)  # B0 A0 flips sign: the base must become W + s B0 A0, the model W
    layer = fresh.model.layers[0].self_attn.q_proj
    W = base.model.layers[0].self_attn.q_proj.weight
    relative_close(layer.base_layer.weight, W - layer.scaling * (layer.lora_B_init @ layer.lora_A_init))
    relative_close(probe_output(fresh), probe_output(base))


def test_merge_then_unmerge_restores_the_residual():
    model = peftlab.apply(tiny_llama().eval(), "lora", rank=4, init="olora")
    layer = model.model.layers[0].self_attn.q_proj
    residual = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B.add_(0.1)
    expected = probe_output(model)
    peftlab.merge(model)
    relative_close(probe_output(model), expected)
    peftlab.unmerge(model)
    torch.testing.assert_close(layer.base_layer.weight, residual, atol=1e-6, rtol=1e-6)


def test_rank_above_the_weight_is_refused():
    with pytest.raises(InitError, match="lower `rank`"):
        peftlab.apply(tiny_llama(), "lora", rank=20, init="pissa", target_modules=("v_proj",))


def test_unknown_init_names_the_choices():
    with pytest.raises(peftlab.ConfigError, match="pissa"):
        peftlab.make_config("lora", init="svd")


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_taking_the_adapter_off_unmerged_gives_the_original_base_back(init):
    base = tiny_gpt2().eval()
    model = peftlab.apply(copy.deepcopy(base), "lora", rank=4, init=init)
    plain = peftlab.unload(model, merge_first=False)
    for (name, restored), original in zip(plain.named_parameters(), base.parameters()):
        relative_close(restored, original)
    relative_close(probe_output(plain), probe_output(base))

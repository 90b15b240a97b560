"""LoRA-FA (Zhang et al. 2023, arXiv 2308.03303): A frozen at its random init, only B trained, and the
activation memory that saves (backward keeps the r-dimensional A x, not the input x)."""

import copy

import torch
from safetensors.torch import load_file
from torch import nn

import peftlab
from conftest import batch_for, tiny_llama

H, FF, L = 32, 64, 2  # the tiny LLaMA's hidden size, feed-forward size and layers


def saved_activation_bytes(model: nn.Module, batch: dict) -> int:
    """Bytes of the distinct tensors autograd keeps for backward, weights and buffers excluded."""
    state = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in state:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    return sum(kept.values())


def test_only_b_trains_and_a_is_a_frozen_saved_buffer(tmp_path):
    model = peftlab.apply(tiny_llama(), "lora_fa", rank=4)
    layer = model.model.layers[0].self_attn.q_proj
    assert "lora_A" in dict(layer.named_buffers()) and "lora_A" not in dict(layer.named_parameters())
    assert {n.rsplit(".", 1)[1] for n, _ in peftlab.adapter_parameters(model)} == {"lora_B"}
    a_before = layer.lora_A.clone()
    with torch.no_grad():
        layer.lora_B.normal_()
    optimizer = torch.optim.SGD(peftlab.parameter_groups(model, lr=0.1))
    model(**batch_for(model)).loss.backward()
    optimizer.step()
    assert torch.equal(layer.lora_A, a_before) and layer.lora_A.grad is None
    peftlab.save_adapter(model, tmp_path / "adapter")
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert torch.equal(saved["model.layers.0.self_attn.q_proj.lora_A"], a_before)


def test_forward_is_lora_with_the_frozen_a():
    model = peftlab.apply(tiny_llama().eval(), "lora_fa", rank=4, alpha=8.0)
    layer = model.model.layers[1].self_attn.v_proj
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 3, 32)
    expected = x @ layer.base_layer.weight.T + 2.0 * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)


def test_backward_keeps_less_activation_memory_than_lora_by_the_inputs_of_the_adapted_layers():
    base = tiny_llama()
    batch = batch_for(base, batch=2, length=10)
    options = {"rank": 4, "target_modules": ("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj")}
    lora = saved_activation_bytes(peftlab.apply(copy.deepcopy(base), "lora", **options), batch)
    lora_fa = saved_activation_bytes(peftlab.apply(copy.deepcopy(base), "lora_fa", **options), batch)
    # LoRA keeps each distinct adapted input for A's gradient; LoRA-FA keeps none of them. Per layer: the
    # normed hidden state (shared by q and v), the one shared by gate and up, and down_proj's input.
    tokens, fp32 = 2 * 10, 4
    assert lora - lora_fa == L * tokens * (H + H + FF) * fp32

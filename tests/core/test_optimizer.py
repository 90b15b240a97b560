"""``make_optimizer``'s AdamW: fused where torch has the kernel, the same update as the per-tensor loop."""

import copy

import torch
from torch import nn

import peftlab
from conftest import tiny_llama
from peftlab.core.method_hooks import adamw


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor) -> None:
    model(input_ids=inputs, labels=inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_make_optimizer_is_fused_adamw_on_cpu_and_matches_the_loop() -> None:
    torch.manual_seed(0)
    model = tiny_llama()
    peftlab.apply(model, "lora", rank=4, dropout=0.0, target_modules=("q_proj", "v_proj"))
    reference = copy.deepcopy(model)
    optimizer = peftlab.make_optimizer(model, lr=1e-2)
    looped = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0, foreach=False)
    assert optimizer.defaults["fused"] is True
    inputs = torch.randint(0, model.config.vocab_size, (2, 8))
    for _ in range(3):
        _step(model, optimizer, inputs)
        _step(reference, looped, inputs)
    trained = dict(model.named_parameters())
    for name, parameter in reference.named_parameters():
        torch.testing.assert_close(trained[name], parameter, rtol=1e-5, atol=1e-6)
    assert all(p.abs().sum() > 0 for name, p in trained.items() if "lora_B" in name)  # it did train


def test_adamw_falls_back_to_the_loop_where_no_fused_kernel_applies() -> None:
    meta = nn.Parameter(torch.zeros(3, device="meta"))
    assert not adamw([{"params": [meta], "lr": 1e-3}]).defaults.get("fused")
    cpu = nn.Parameter(torch.zeros(3))
    assert adamw([{"params": [cpu], "lr": 1e-3}]).defaults["fused"] is True


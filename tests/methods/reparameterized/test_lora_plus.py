"""LoRA+ (Hayou et al. 2024, arXiv 2402.12354): B learns ratio times faster than A."""

import torch

import peftlab
from conftest import batch_for, tiny_bert, tiny_llama


def test_parameter_groups_give_b_the_learning_rate_ratio():
    model = peftlab.apply(tiny_llama(), "lora_plus", rank=4, lr_ratio=16.0)
    groups = peftlab.parameter_groups(model, lr=1e-4, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    assert by_name["lora_B"]["lr"] / by_name["lora_A"]["lr"] == 16.0
    assert by_name["lora_A"]["lr"] == 1e-4 and all(g["weight_decay"] == 0.01 for g in groups)
    layers = [m for m in model.modules() if hasattr(m, "lora_B")]
    assert {id(p) for p in by_name["lora_B"]["params"]} == {id(m.lora_B) for m in layers}
    assert {id(p) for p in by_name["lora_A"]["params"]} == {id(m.lora_A) for m in layers}


def test_every_trained_parameter_is_in_exactly_one_group():
    model = peftlab.apply(tiny_bert(), "lora_plus", rank=4, modules_to_save=("classifier",))
    grouped = [id(p) for g in peftlab.parameter_groups(model, lr=1e-3) for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for _, p in peftlab.adapter_parameters(model))
    head = model.classifier.weight
    group_a = next(g for g in peftlab.parameter_groups(model, lr=1e-3) if g["name"] == "lora_A")
    assert any(p is head for p in group_a["params"])  # anything that is not B trains at the base rate


def test_first_adam_step_moves_b_ratio_times_further_than_a():
    model = peftlab.apply(tiny_llama(), "lora_plus", rank=4, lr_ratio=8.0)
    with torch.no_grad():  # B = 0 would give A no gradient on the first step
        for m in model.modules():
            if hasattr(m, "lora_B"):
                m.lora_B.normal_(std=0.1)
    layer = model.model.layers[0].self_attn.q_proj
    a0, b0 = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    optimizer = torch.optim.Adam(peftlab.parameter_groups(model, lr=1e-3))
    model(**batch_for(model)).loss.backward()
    optimizer.step()
    # Adam's first step moves every coordinate by about lr (sign of the gradient)
    torch.testing.assert_close((layer.lora_A - a0).abs().max().item(), 1e-3, rtol=1e-2, atol=0)
    torch.testing.assert_close((layer.lora_B - b0).abs().max().item(), 8e-3, rtol=1e-2, atol=0)


def test_lora_plus_is_plain_lora_in_the_forward():
    lora = peftlab.apply(tiny_llama().eval(), "lora", rank=4, alpha=8.0)
    plus = peftlab.apply(tiny_llama().eval(), "lora_plus", rank=4, alpha=8.0)
    x = torch.randn(2, 32)
    for a, b in zip((lora.model.layers[0].self_attn.q_proj,), (plus.model.layers[0].self_attn.q_proj,)):
        with torch.no_grad():
            b.lora_A.copy_(a.lora_A)
            a.lora_B.normal_()
            b.lora_B.copy_(a.lora_B)
        torch.testing.assert_close(a(x), b(x))

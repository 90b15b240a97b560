"""A pruned AdaLoRA crosses to and from HF peft with the same outputs (1e-5).

peft saves a pruned AdaLoRA cut to its kept ranks, with ``rank_pattern`` in the config and no ``ranknum``;
its model keeps ``ranknum = init_r`` in every module, so the scale is ``lora_alpha / init_r`` however
many ranks a module kept. Requires peft (the `interop` extra)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import peftlab
from conftest import batch_for, tiny_llama
from peftlab.core.probe import probe_inputs, probe_output
from peftlab.interop import export_peft, import_peft
from peftlab.methods.reparameterized.adalora import rank_pattern

peft = pytest.importorskip("peft")

TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj"]
SCHEDULE = {"total_step": 6, "tinit": 1, "tfinal": 2, "deltaT": 1}


def partly_pruned(ranks: dict[str, int], init_rank: int) -> bool:
    return any(0 < rank < init_rank for rank in ranks.values())


@pytest.fixture(scope="module")
def peft_pruned(tmp_path_factory):
    """A peft AdaLoRA trained through its own ``update_and_allocate`` until ranks are pruned, then saved."""
    base = tiny_llama().eval()
    torch.manual_seed(0)
    config = peft.AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, target_modules=TARGETS, **SCHEDULE)
    theirs = peft.get_peft_model(copy.deepcopy(base), config)
    optimizer = torch.optim.AdamW([p for p in theirs.parameters() if p.requires_grad], lr=1e-2)
    for step in range(SCHEDULE["total_step"]):
        theirs(**batch_for(theirs, seed=step % 3)).loss.backward()
        optimizer.step()
        theirs.base_model.update_and_allocate(step)
        optimizer.zero_grad()
    theirs.eval()
    ranks = {key.split(".lora_E")[0]: sum(kept) for key, kept in theirs.peft_config["default"].rank_pattern.items()}
    assert partly_pruned(ranks, 4), f"the schedule must leave some module with 1-3 of its 4 ranks: {ranks}"
    folder = tmp_path_factory.mktemp("peft") / "adapter"
    theirs.save_pretrained(folder)
    inputs = probe_inputs(base)
    with torch.no_grad():
        expected = theirs(**inputs).logits.float()
    return base, folder, inputs, expected, ranks


def test_the_saved_peft_adapter_is_cut_to_its_kept_ranks_without_ranknum(peft_pruned):
    _, folder, _, _, _ = peft_pruned
    from safetensors.torch import load_file

    names = load_file(folder / "adapter_model.safetensors")
    assert not any("ranknum" in name for name in names)
    assert any(tensor.shape[0] not in (0, 4) for name, tensor in names.items() if name.endswith("lora_A"))


def test_a_pruned_peft_adapter_loads_directly_with_peft_outputs(peft_pruned):
    base, folder, inputs, expected, ranks = peft_pruned
    ours = peftlab.load_adapter(copy.deepcopy(base), folder)
    torch.testing.assert_close(probe_output(ours, inputs), expected, atol=1e-5, rtol=0)
    assert rank_pattern(ours) == ranks


def test_a_pruned_peft_adapter_imports_with_peft_outputs_and_its_rank_positions(peft_pruned, tmp_path):
    base, folder, inputs, expected, ranks = peft_pruned
    import_peft(folder, tmp_path / "ours")
    ours = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "ours")
    torch.testing.assert_close(probe_output(ours, inputs), expected, atol=1e-5, rtol=0)
    pattern = json.loads((folder / "adapter_config.json").read_text())["rank_pattern"]
    for name, module in ours.named_modules():
        if f"{name}.lora_E" in pattern:
            assert module.rank_mask.tolist() == pattern[f"{name}.lora_E"], name

    export_peft(tmp_path / "ours", tmp_path / "back")  # and back to peft: the same file layout and outputs
    assert json.loads((tmp_path / "back" / "adapter_config.json").read_text())["rank_pattern"] == pattern
    again = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "back").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits.float(), expected, atol=1e-5, rtol=0)


def test_a_pruned_peftlab_adalora_exports_to_peft_with_the_same_outputs(tmp_path):
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), "adalora", total_steps=6, init_rank=4, target_rank=2, alpha=8.0,
                          t_init=1, t_final=2, target_modules=TARGETS)
    hooks = peftlab.training_hooks(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(6):
        (model(**batch_for(model, seed=step % 3)).loss + hooks.regularization(model)).backward()
        optimizer.step()
        hooks.after_optimizer_step(model, step)
        optimizer.zero_grad()
    model.eval()
    assert partly_pruned(rank_pattern(model), 4), rank_pattern(model)

    peftlab.save_adapter(model, tmp_path / "ours")
    export_peft(tmp_path / "ours", tmp_path / "peft")
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert {key.removesuffix(".lora_E"): sum(kept) for key, kept in document["rank_pattern"].items()} == \
        rank_pattern(model)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    inputs = probe_inputs(base)
    expected = probe_output(model, inputs)
    with torch.no_grad():
        torch.testing.assert_close(theirs(**inputs).logits.float(), expected, atol=1e-5, rtol=0)
    back = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    assert rank_pattern(back) == rank_pattern(model)
    torch.testing.assert_close(probe_output(back, inputs), expected, atol=1e-5, rtol=0)

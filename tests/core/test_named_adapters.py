"""Several named adapters on one base (issue 32): trained apart, loaded together, switched, switched off,
deleted, saved in HF peft's layout, and a mixed batch whose rows use different adapters."""

from __future__ import annotations

import pytest
import torch

import peftlab
from peftlab.core.errors import UserError
from peftlab.core.injection import AlreadyAdaptedError
from peftlab.core.layers import AdapterModule
from peftlab.core.serialization import read_adapter_tensors
from conftest import FAMILY_BUILDERS, batch_for, tiny_bert, tiny_llama

METHODS = {"a": ("lora", {"rank": 4}), "b": ("ia3", {})}  # two methods, so "any mix" is exercised


def trained(builder, method: str, options: dict, seed: int):
    """``method`` trained alone for three steps on its own batch."""
    model = peftlab.apply(builder(), method, **options)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    for step in range(3):
        loss = model(**batch_for(model, batch=2, seed=seed + step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(params=sorted(FAMILY_BUILDERS))
def two_trained(request, tmp_path):
    """(builder, {name: adapter folder}, {name: the model it was trained on})."""
    builder = FAMILY_BUILDERS[request.param]
    folders, alone = {}, {}
    for seed, (name, (method, options)) in enumerate(METHODS.items(), start=1):
        alone[name] = trained(builder, method, options, seed=10 * seed)
        folders[name] = peftlab.save_adapter(alone[name], tmp_path / name)
    return builder, folders, alone


def loaded_together(builder, folders):
    model = builder().eval()
    for name, folder in folders.items():
        peftlab.load_adapter(model, folder, adapter_name=name)
    return model


def test_adapters_trained_apart_switch_disable_and_delete_on_one_base(two_trained):
    builder, folders, alone = two_trained
    model = loaded_together(builder, folders)
    inputs = batch_for(model, batch=3, seed=99)
    bare = logits(builder().eval(), inputs)
    assert peftlab.list_adapters(model) == ["a", "b"] and peftlab.active_adapters(model) == ["a"]
    torch.testing.assert_close(logits(model, inputs), logits(alone["a"], inputs))
    peftlab.set_adapter(model, "b")
    torch.testing.assert_close(logits(model, inputs), logits(alone["b"], inputs))
    assert not torch.allclose(logits(alone["a"], inputs), logits(alone["b"], inputs))
    with peftlab.disable_adapters(model):
        torch.testing.assert_close(logits(model, inputs), bare)
    torch.testing.assert_close(logits(model, inputs), logits(alone["b"], inputs))

    peftlab.delete_adapter(model, "b")  # the adapter in use: the remaining one takes over
    assert peftlab.list_adapters(model) == ["a"] and peftlab.active_adapters(model) == ["a"]
    assert {m.adapter_name for m in model.modules() if isinstance(m, AdapterModule)} == {"a"}
    torch.testing.assert_close(logits(model, inputs), logits(alone["a"], inputs))
    peftlab.delete_adapter(model, "a")
    assert peftlab.list_adapters(model) == [] and not any(isinstance(m, AdapterModule) for m in model.modules())
    torch.testing.assert_close(logits(model, inputs), bare)
    assert "generate" not in vars(model)


def test_only_the_adapter_in_use_trains_and_its_names_are_as_if_alone(two_trained):
    builder, folders, _ = two_trained
    model = loaded_together(builder, folders)
    peftlab.set_adapter(model, "b")
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    in_use = dict(peftlab.adapter_parameters(model))
    assert trainable == {id(p) for p in in_use.values()}
    assert set(in_use) == set(read_adapter_tensors(folders["b"]))  # no base_layer hop through a's layers


def test_a_mixed_batch_gives_each_row_what_its_adapter_gives_alone(two_trained):
    builder, folders, _ = two_trained
    model = loaded_together(builder, folders)
    inputs = batch_for(model, batch=4, seed=5)
    rows = ["a", "__base__", "b", "a"]
    mixed = logits(model, {**inputs, "adapter_names": rows})
    for index, name in enumerate(rows):
        row = {key: value[index:index + 1] for key, value in inputs.items()}
        if name == "__base__":
            with peftlab.disable_adapters(model):
                expected = logits(model, row)
        else:
            peftlab.set_adapter(model, name)
            expected = logits(model, row)
        torch.testing.assert_close(mixed[index:index + 1], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("beams", [1, 2])
def test_generate_with_a_mixed_batch_matches_each_prompt_alone(tmp_path, beams):
    folders = {name: peftlab.save_adapter(trained(tiny_llama, method, options, seed=7 * i), tmp_path / name)
               for i, (name, (method, options)) in enumerate(METHODS.items(), start=1)}
    model = loaded_together(tiny_llama, folders)
    prompts = torch.randint(3, 96, (3, 5), generator=torch.Generator().manual_seed(3))
    settings = {"max_new_tokens": 4, "do_sample": False, "num_beams": beams, "pad_token_id": 0}
    rows = ["b", "a", "__base__"]
    mixed = model.generate(prompts, adapter_names=rows, **settings)
    for index, name in enumerate(rows):
        if name == "__base__":
            with peftlab.disable_adapters(model):
                alone = model.generate(prompts[index:index + 1], **settings)
        else:
            peftlab.set_adapter(model, name)
            alone = model.generate(prompts[index:index + 1], **settings)
        assert torch.equal(mixed[index:index + 1], alone)


def test_several_adapters_save_in_peft_layout_and_load_back(two_trained, tmp_path):
    builder, folders, alone = two_trained
    model = loaded_together(builder, folders)
    peftlab.load_adapter(model, folders["a"], adapter_name="default")
    saved = peftlab.save_adapter(model, tmp_path / "all")
    assert (saved / "adapter_config.json").is_file() and (saved / "a" / "adapter_config.json").is_file()
    assert (saved / "b" / "adapter_model.safetensors").is_file()
    assert peftlab.active_adapters(model) == ["a"]  # saving switched and switched back
    inputs = batch_for(model, batch=2, seed=8)
    for name, folder in (("default", saved), ("a", saved / "a"), ("b", saved / "b")):
        reference = alone["a" if name == "default" else name]
        torch.testing.assert_close(logits(peftlab.load_adapter(builder().eval(), folder), inputs),
                                   logits(reference, inputs))


def test_a_folder_of_named_adapters_says_how_to_load_them(tmp_path):
    model = peftlab.apply(tiny_llama(), "lora", adapter_name="x")
    peftlab.save_adapter(model, tmp_path / "out")
    with pytest.raises(peftlab.AdapterFileError, match=r"named adapters in subfolders \(x\).*adapter_name='NAME'"):
        peftlab.load_adapter(tiny_llama(), tmp_path / "out")


def test_merge_folds_the_adapter_in_use_and_unload_drops_the_others(two_trained):
    builder, folders, alone = two_trained
    model = loaded_together(builder, folders)
    inputs = batch_for(model, batch=2, seed=4)
    peftlab.merge(model)
    with pytest.raises(UserError, match="merged"):
        peftlab.set_adapter(model, "b")
    peftlab.unmerge(model)
    peftlab.unload(model)
    assert not any(isinstance(m, AdapterModule) for m in model.modules())
    torch.testing.assert_close(logits(model, inputs), logits(alone["a"], inputs), atol=1e-5, rtol=1e-4)


def test_adapters_that_cannot_share_a_base_are_refused_and_the_model_is_left_as_it_was():
    model = peftlab.apply(tiny_llama(), "lora", adapter_name="a")
    before = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(AlreadyAdaptedError, match=r"'p' \(prompt_tuning\) cannot share the base.*hooks"):
        peftlab.apply(model, "prompt_tuning", adapter_name="p")
    with pytest.raises(AlreadyAdaptedError, match=r"'bias' \(bitfit\).*own parameters"):
        peftlab.apply(model, "bitfit", adapter_name="bias")
    assert peftlab.list_adapters(model) == ["a"]
    assert {name: p for name, p in model.named_parameters()}.keys() == before.keys()


def test_bad_names_and_bad_mixed_batches_get_clear_errors():
    model = peftlab.apply(tiny_llama(), "lora", adapter_name="a")
    with pytest.raises(AlreadyAdaptedError, match="already carries 'lora' as adapter 'a'"):
        peftlab.apply(model, "lora", adapter_name="a")
    with pytest.raises(ValueError, match="reserved"):
        peftlab.apply(model, "lora", adapter_name="__base__")
    with pytest.raises(peftlab.AdapterNameError, match="no adapter named 'z'.*'a'"):
        peftlab.set_adapter(model, "z")
    inputs = batch_for(model, batch=2)
    with pytest.raises(peftlab.MixedBatchError, match="one name per row"):
        model(**inputs, adapter_names=["a", "a", "a"])
    with pytest.raises(peftlab.MixedBatchError, match="a list"):
        model(**inputs, adapter_names="a")
    prompted = peftlab.apply(tiny_llama(), "prompt_tuning")
    with pytest.raises(UserError, match="cannot be switched off"):
        prompted(**inputs, adapter_names=["default", "__base__"])
    with pytest.raises(UserError, match="cannot be switched off"):
        with peftlab.disable_adapters(prompted):
            pass


def test_a_parallel_adapter_refuses_to_split_a_batch_by_rows():
    model = peftlab.apply(tiny_llama(), "parallel_adapter", adapter_name="p")
    peftlab.apply(model, "lora", adapter_name="l")
    inputs = batch_for(model, batch=2)
    with pytest.raises(peftlab.MixedBatchError, match="ParallelAdapter layers share one input"):
        model(**inputs, adapter_names=["p", "l"])
    model(**inputs, adapter_names=["l", "__base__"])  # rows that do not use it are fine


def test_a_residual_init_that_changes_the_base_cannot_share_it():
    model = peftlab.apply(tiny_llama(), "lora", adapter_name="a")
    with pytest.raises(AlreadyAdaptedError, match="residual init such as PiSSA"):
        peftlab.apply(model, "lora", adapter_name="pissa", init="pissa")
    bare, reference = tiny_llama(), peftlab.apply(tiny_llama(), "lora", adapter_name="a")
    inputs = batch_for(bare, batch=2)
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs))  # the base's weights restored
    assert peftlab.list_adapters(model) == ["a"]


def test_hotswap_replaces_the_weights_in_place_without_recompiling(tmp_path):
    first = peftlab.save_adapter(trained(tiny_llama, "lora", {"rank": 4}, seed=1), tmp_path / "first")
    second_model = trained(tiny_llama, "lora", {"rank": 4}, seed=2)
    second = peftlab.save_adapter(second_model, tmp_path / "second")
    model = peftlab.load_adapter(tiny_llama().eval(), first)
    modules_before = [id(m) for m in model.modules()]
    compiled = torch.compile(model, backend="eager")
    inputs = {"input_ids": batch_for(model, batch=2)["input_ids"]}
    with torch.no_grad():
        compiled(**inputs)
        peftlab.hotswap_adapter(model, second)
        with torch.compiler.set_stance("fail_on_recompile"):
            swapped = compiled(**inputs).logits
    assert [id(m) for m in model.modules()] == modules_before
    torch.testing.assert_close(swapped, logits(second_model, inputs))


def test_hotswap_refuses_another_shape_or_setting(tmp_path):
    model = peftlab.apply(tiny_llama(), "lora", rank=4)
    other_rank = peftlab.save_adapter(peftlab.apply(tiny_llama(), "lora", rank=8), tmp_path / "r8")
    other_alpha = peftlab.save_adapter(peftlab.apply(tiny_llama(), "lora", rank=4, alpha=4), tmp_path / "a4")
    with pytest.raises(peftlab.AdapterFileError, match=r"rank: 4 -> 8"):
        peftlab.hotswap_adapter(model, other_rank)
    with pytest.raises(peftlab.AdapterFileError, match=r"alpha: 16.0 -> 4.0"):
        peftlab.hotswap_adapter(model, other_alpha)
    with pytest.raises(peftlab.AdapterFileError, match="no adapter named 'x'"):
        peftlab.hotswap_adapter(model, other_alpha, adapter_name="x")


def test_each_adapter_trains_and_saves_its_own_head(tmp_path):
    """modules_to_save beside named adapters: a trained copy per adapter (as peft's ModulesToSaveWrapper), the
    bare base keeping its own, and a mixed batch giving each row its adapter's head."""
    model = tiny_bert().eval()
    bare = tiny_bert().eval()
    for seed, name in enumerate(("a", "b")):
        peftlab.apply(model, "lora", adapter_name=name, rank=4, modules_to_save=["classifier"])
        peftlab.set_adapter(model, name)
        torch.manual_seed(seed)
        with torch.no_grad():
            for parameter_name, parameter in peftlab.adapter_parameters(model):
                if parameter_name.startswith("classifier."):
                    parameter.normal_()
    inputs = {key: value for key, value in batch_for(model, batch=3, seed=2).items() if key != "labels"}
    expected = {}
    for name in ("a", "b"):
        peftlab.set_adapter(model, name)
        assert {n for n, _ in peftlab.adapter_parameters(model)} >= {"classifier.weight", "classifier.bias"}
        expected[name] = logits(model, inputs)
        alone = peftlab.load_adapter(tiny_bert().eval(), peftlab.save_adapter(model, tmp_path / name) / name)
        torch.testing.assert_close(logits(alone, inputs), expected[name])
    with peftlab.disable_adapters(model):
        torch.testing.assert_close(logits(model, inputs), logits(bare, inputs))
    mixed = logits(model, {**inputs, "adapter_names": ["b", "__base__", "a"]})
    torch.testing.assert_close(mixed, torch.cat([expected["b"][:1], logits(bare, inputs)[1:2], expected["a"][2:]]))
    peftlab.unload(model)  # merges the adapter in use: its head takes the module's place
    torch.testing.assert_close(logits(model, inputs), expected["b"])
    assert type(model.classifier) is torch.nn.Linear

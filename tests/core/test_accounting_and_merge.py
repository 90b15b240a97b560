import pytest
import torch

import peftlab
from conftest import tiny_bert, tiny_llama
from peftlab.core.layers import AdapterLayer


def test_report_counts_trainable_against_the_base_model():
    base = tiny_llama()
    base_total = sum(p.numel() for p in base.parameters())
    model = peftlab.apply(base, "lora", rank=4)
    report = peftlab.parameter_report(model)
    assert report.base == base_total
    assert report.total == base_total + report.trainable
    assert report.trainable_percent == pytest.approx(100 * report.trainable / base_total)
    assert peftlab.parameter_counts(model) == (report.trainable, report.total)


def test_plain_model_counts_its_trainable_parameters():
    model = tiny_bert()
    total = sum(p.numel() for p in model.parameters())
    assert peftlab.parameter_counts(model) == (total, total)


def test_modules_to_save_train_and_are_counted():
    model = peftlab.apply(tiny_bert(), "lora", rank=4, modules_to_save=["classifier"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    named = dict(peftlab.adapter_parameters(model))  # a trained copy of the head, named as the head itself
    assert {"classifier.weight", "classifier.bias"} <= set(named) and {id(p) for p in named.values()} == trainable
    report = peftlab.parameter_report(model)
    assert report.base == sum(p.numel() for p in tiny_bert().parameters())


def test_merge_refuses_a_non_mergeable_method():
    model = peftlab.apply(tiny_llama(), "adapter", bottleneck_size=4)
    with pytest.raises(peftlab.MergeError, match="cannot be merged exactly"):
        peftlab.merge(model)


def test_merge_that_changes_outputs_is_undone_and_refused(monkeypatch):
    model = peftlab.apply(tiny_llama().eval(), "lora", rank=4)
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.normal_(0, 0.1)
    weights = {n: p.clone() for n, p in model.named_parameters()}
    layer_type = type(next(m for m in model.modules() if isinstance(m, AdapterLayer)))
    monkeypatch.setattr(layer_type, "delta_weight", lambda self: 2 * (self.lora_B @ self.lora_A) * self.scaling)
    with pytest.raises(peftlab.MergeError, match="merge was undone"):
        peftlab.merge(model)
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter, weights[name])
    assert not any(m.merged for m in model.modules() if isinstance(m, AdapterLayer))


def test_applying_twice_is_refused():
    model = peftlab.apply(tiny_llama(), "lora")
    with pytest.raises(peftlab.core.injection.AlreadyAdaptedError, match="already carries 'lora'"):
        peftlab.apply(model, "ia3")


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown method 'loraa'.*lora"):
        peftlab.apply(tiny_llama(), "loraa")


def test_method_files_sit_in_their_family_folder():
    for spec in peftlab.all_methods():
        module = spec.inject.__module__
        assert module.split(".")[2] == spec.family, f"{spec.name} registers family {spec.family} from {module}"


def test_a_method_that_counts_differently_says_so_in_the_report():
    propetl = peftlab.parameter_report(peftlab.apply(tiny_llama(), "propetl"))
    assert propetl.note == "masks counted at 1 bit per entry, as the paper counts them"
    assert str(propetl).endswith(f"({propetl.note})") and propetl.as_dict()["note"] == propetl.note
    mam = peftlab.parameter_report(peftlab.apply(tiny_llama(), "mam"))
    assert "reparameterisation MLP" in mam.note
    assert peftlab.parameter_report(peftlab.apply(tiny_llama(), "prefix_tuning", reparameterize=False)).note == ""
    assert peftlab.parameter_report(peftlab.apply(tiny_llama(), "lora")).note == ""


def _aten_calls(model, inputs) -> dict[str, int]:
    with torch.inference_mode(), torch.profiler.profile() as profiler:
        model(**inputs)
    return {event.key: event.count for event in profiler.key_averages() if event.key.startswith("aten::")}


@pytest.mark.parametrize("method", ["lora", "ia3", "dora", "vera", "loha", "lokr"])
def test_merged_model_runs_exactly_the_base_models_operations(method):
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8, 9, 10]])}
    base = tiny_llama().eval()
    expected = _aten_calls(base, inputs)
    model = peftlab.apply(tiny_llama(), method).eval()
    with torch.no_grad():
        for _, parameter in peftlab.adapter_parameters(model):
            parameter.add_(0.01)
    assert _aten_calls(model, inputs) != expected  # unmerged, the adapter adds its own work
    peftlab.merge(model)
    assert _aten_calls(model, inputs) == expected

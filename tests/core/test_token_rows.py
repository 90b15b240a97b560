"""``token_indices`` is one setting of every method (core/token_rows.py): beside any method the chosen rows train,
save and load with the adapter; a method that trains the whole embedding refuses it."""

import copy
import importlib

import pytest
import torch

import peftlab
from conftest import tiny_llama
from peftlab.core.probe import probe_output
from peftlab.core.token_rows import TokenRowsError

INDICES = [53, 67]  # in the probe input
BESIDE = [m for m in peftlab.list_methods() if m not in ("full", "trainable_tokens")]


@pytest.mark.parametrize("method", BESIDE)
def test_token_rows_train_save_and_load_beside_every_method(method, tmp_path):
    case = importlib.import_module(f"contract_cases.{method}")
    base = tiny_llama().eval()
    model = peftlab.apply(copy.deepcopy(base), method, **case.OPTIONS, token_indices=INDICES)
    trained = dict(peftlab.adapter_parameters(model))
    assert trained["model.embed_tokens.token_rows"].shape == (2, 32)
    assert peftlab.parameter_counts(model)[0] == case.expected_trainable("llama", base) + 2 * 32
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in trained.values():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))
    expected = probe_output(model)
    peftlab.save_adapter(model, tmp_path / "a")
    loaded = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "a")
    assert peftlab.peft_state(loaded).config.token_indices == tuple(INDICES)
    torch.testing.assert_close(probe_output(loaded), expected, atol=0, rtol=0)


def test_full_fine_tuning_refuses_token_indices_and_leaves_the_model_as_it_was():
    model = tiny_llama()
    with pytest.raises(TokenRowsError, match="already trains the whole input embedding"):
        peftlab.apply(model, "full", token_indices=INDICES)
    assert not peftlab.list_adapters(model) and type(model.model.embed_tokens) is torch.nn.Embedding

"""Tiny seeded models of the four architecture families the survey assesses; nothing is downloaded."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    RobertaConfig,
    RobertaForSequenceClassification,
    T5Config,
    T5ForConditionalGeneration,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

VOCAB = 96


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        initializer_range=0.3)
    return BertForSequenceClassification(config)


def tiny_roberta() -> nn.Module:
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=64, num_labels=2, pad_token_id=1,
                           initializer_range=0.3)
    return RobertaForSequenceClassification(config)


def tiny_t5() -> nn.Module:
    torch.manual_seed(0)
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(config)


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def tiny_gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(config)


BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "bert": tiny_bert,
    "roberta": tiny_roberta,
    "t5": tiny_t5,
    "llama": tiny_llama,
    "gpt2": tiny_gpt2,
}
# The four families every method must support (RoBERTa shares BERT's module names).
FAMILY_BUILDERS = {name: BUILDERS[name] for name in ("bert", "t5", "llama", "gpt2")}


def batch_for(model: nn.Module, batch: int = 2, length: int = 10, seed: int = 1) -> dict[str, torch.Tensor]:
    """A fixed training batch with labels for any of the tiny models."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, length), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    model_type = model.config.model_type
    if model_type in ("bert", "roberta"):
        inputs["labels"] = torch.tensor([0, 1] * (batch // 2) + [0] * (batch % 2))
    elif model_type == "t5":
        inputs["labels"] = torch.randint(3, VOCAB, (batch, 6), generator=generator)
    else:
        inputs["labels"] = ids.clone()
    return inputs


def dequantized_copy(model: nn.Module) -> nn.Module:
    """``model`` with each adapter layer's quantized base replaced by its dequantized float layer."""
    from peftlab.core.layers import AdapterLayer
    from peftlab.core.quantized import dequantize_linear, is_quantized

    reference = copy.deepcopy(model)
    for module in reference.modules():
        if isinstance(module, AdapterLayer) and is_quantized(module.base_layer):
            module.base_layer = dequantize_linear(module.base_layer)
    return reference


def assert_same_nonzero_grads(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """The same parameters received gradients, none of them all zero, and equal up to rounding."""
    assert got.keys() == expected.keys()
    for name, grad in expected.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def perturb_both(ours: nn.Module, theirs: nn.Module, peft_name: Callable[[str], str],
                 scale: float) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """Move peftlab's adapter parameters by seeded noise and copy them to peft's (``peft_name`` maps the names);
    returns the (ours, peft's) parameter pairs."""
    import peftlab

    named = dict(theirs.named_parameters())
    generator = torch.Generator().manual_seed(0)
    pairs = []
    with torch.no_grad():
        for name, parameter in peftlab.adapter_parameters(ours):
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator).to(parameter.dtype))
            named[peft_name(name)].copy_(parameter)
            pairs.append((parameter, named[peft_name(name)]))
    return pairs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` run only where a CUDA device is."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(params=sorted(FAMILY_BUILDERS))
def architecture(request) -> str:
    return request.param


def count_fast_dropouts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the tensors ``peftlab.train.speedups.fast_dropout`` drops from, call by call, with its size
    threshold off so that tiny models' tensors take it too."""
    from peftlab.train.speedups import fast_dropout

    calls: list[int] = []
    original = fast_dropout.dropout

    def counted(x: torch.Tensor, p: float) -> torch.Tensor:
        calls.append(x.numel())
        return original(x, p)

    monkeypatch.setattr(fast_dropout, "dropout", counted)
    monkeypatch.setattr(fast_dropout, "MIN_ELEMENTS", 0)
    return calls


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """peftlab's cache (tokenised data, converted weights) in a folder of the session's, never the user's."""
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path_factory.getbasetemp() / "peftlab-cache"))

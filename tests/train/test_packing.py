"""Packed causal-LM batches train as the padded ones do: the same loss and the same gradients, on a tiny
LLaMA and GPT-2, plain and chunked loss; methods whose attention would see across examples are refused;
the loop packs decoder text tasks (and nothing else) and trains the same adapter either way."""

import json

import pytest
import torch

import peftlab
from conftest import BUILDERS, VOCAB
from peftlab.train import TrainArgs, run_training
from peftlab.train.encoding import IGNORE, collate
from peftlab.train.packing import collate_packed, pack_rows, packing_problem
from peftlab.train.speedups.losses import lm_loss

LENGTHS = (13, 4, 9, 5, 13, 3)  # with a longest of 13, the six pack into four rows


def features(lengths=LENGTHS, seed=3):
    """Decoder features: a prompt (labels -100) then a target, as ``train.encoding`` writes them."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for length in lengths:
        ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
        prompt = length // 3
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [IGNORE] * prompt + ids[prompt:]})
    return out


def loss_and_grads(model, batch, chunked):
    model.zero_grad(set_to_none=True)
    loss = lm_loss(model, batch) if chunked else model(**batch, use_cache=False).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_rows_hold_every_example_once_within_the_capacity():
    lengths = [7, 1, 3, 7, 2, 5, 4, 6]
    rows = pack_rows(lengths, 7)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 7 for row in rows)
    assert len(rows) == 5  # 7 | 7 | 6+1 | 5+2 | 4+3
    assert pack_rows([9, 2], 4) == [[0], [1]]  # an example over the capacity gets its own row


def test_packed_batch_has_fewer_positions_restarting_positions_and_no_mask():
    batch = collate_packed(features(), pad_id=0)
    assert set(batch) == {"input_ids", "position_ids", "labels"}
    assert batch["input_ids"].shape == (4, 13)  # padded: (6, 13)
    first_row = batch["position_ids"][0].tolist()
    assert first_row == list(range(13))
    assert (batch["labels"] != IGNORE).sum() == sum(len(f["labels"]) - f["labels"].count(IGNORE) - (f["labels"][0] != IGNORE)
                                                   for f in features())


@pytest.mark.parametrize("chunked", [False, True], ids=["plain", "chunked"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_packed_equals_padded_in_loss_and_gradients(family, chunked):
    options = {"target_modules": ("all_linear",)} if family == "llama" else {}
    model = peftlab.apply(BUILDERS[family](), "lora", rank=4, **options)
    for name, parameter in model.named_parameters():  # B off zero, so every LoRA factor gets a gradient
        if name.endswith("lora_B"):
            torch.nn.init.normal_(parameter, std=0.1)
    assert packing_problem(model, "decoder", writes_text=True) is None
    model.eval()  # no dropout (GPT-2 has some): the two layouts would draw different masks
    padded = collate(features(), pad_id=0)
    expected_loss, expected = loss_and_grads(model, padded, chunked)
    loss, got = loss_and_grads(model, collate_packed(features(), pad_id=0), chunked)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert got.keys() == expected.keys() and len(got) > 0
    for name in expected:
        assert expected[name].abs().sum() > 0, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_cache_would_mix_the_examples_so_the_probe_needs_none():
    """What ``use_cache=False`` guards against: with a cache transformers reads a row as one sequence."""
    model = BUILDERS["llama"]().eval()
    batch = collate_packed(features((6, 5)), pad_id=0)
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        cached = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=True).logits
    assert (packed - cached).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning", "mam", "lora", "ia3"])
def test_each_method_either_packs_exactly_or_is_refused(method):
    model = peftlab.apply(BUILDERS["llama"](), method)
    problem = packing_problem(model, "decoder", writes_text=True)
    if method == "prompt_tuning":
        assert problem is not None and "virtual tokens" in problem
        return
    if problem is not None:
        return
    model.eval()  # no dropout: the two layouts draw different masks
    expected_loss, expected = loss_and_grads(model, collate(features(), pad_id=0), chunked=False)
    loss, got = loss_and_grads(model, collate_packed(features(), pad_id=0), chunked=False)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_probe_refuses_a_model_whose_attention_crosses_examples():
    model = BUILDERS["llama"]()
    model.config._attn_implementation = "eager"
    original = model.forward

    def ignores_positions(*args, position_ids=None, **kwargs):  # as a model that reads every row as one sequence
        return original(*args, **kwargs)

    model.forward = ignores_positions
    problem = packing_problem(model, "decoder", writes_text=True)
    assert problem is not None and "across examples" in problem
    assert packing_problem(BUILDERS["bert"](), "encoder", writes_text=False) is not None


def test_loop_packs_decoder_text_tasks_and_trains_the_same_adapter(tiny_models, data_root, tmp_path):
    from safetensors.torch import load_file

    common = dict(model=str(tiny_models["llama"]), task="alpaca", method="lora", data_dir=str(data_root),
                  max_train_samples=12, max_eval_samples=4, batch_size=6, max_steps=2, progress=False,
                  learning_rate=1e-2, group_by_length=False)
    packed = run_training(TrainArgs(**common, output_dir=str(tmp_path / "packed")))
    padded = run_training(TrainArgs(**common, output_dir=str(tmp_path / "padded"), pack=False))
    assert packed["packed"] and packed["not_packed"] is None
    assert not padded["packed"] and padded["not_packed"] == "--no-pack"
    assert packed["train_tokens"] == padded["train_tokens"]
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())
               if r["type"] == "train"] for run in ("packed", "padded")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    trained, expected = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("packed", "padded"))
    for name in expected:
        torch.testing.assert_close(trained[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_loop_does_not_pack_classification(tiny_models, data_root):
    metrics = run_training(TrainArgs(model=str(tiny_models["bert"]), task="sst2", method="lora",
                                     data_dir=str(data_root), max_train_samples=8, max_eval_samples=4,
                                     batch_size=4, max_steps=1, progress=False))
    assert not metrics["packed"] and "decoder-only" in metrics["not_packed"]

"""Prefix-tuning against a hand-written attention, plus folding, saving and the errors it promises."""

import copy
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import OPTConfig, OPTForCausalLM

import peftlab
from conftest import BUILDERS, FAMILY_BUILDERS, batch_for, tiny_gpt2, tiny_t5
from peftlab.core.probe import probe_output
from peftlab.methods.additive.prefix_tuning import fold, prefix_encoder, prefix_parameter_counts
from peftlab.methods.shared.prefix_attention import PrefixAttentionError

P, HEADS, HEAD = 3, 4, 8
OPTIONS = {"num_virtual_tokens": P, "mlp_hidden_size": 16}


def adapted(family, implementation="sdpa", **options):
    model = BUILDERS[family]()
    model.set_attn_implementation(implementation)
    return peftlab.apply(model, "prefix_tuning", **{**OPTIONS, **options}).eval()


def capture(module):
    """Record the hidden states a module receives and what it returns."""
    seen = {}
    module.register_forward_pre_hook(lambda m, args, kwargs: seen.update(hidden=kwargs.get("hidden_states", args[0] if args else None)), with_kwargs=True)
    module.register_forward_hook(lambda m, args, output: seen.update(output=output[0]))
    return seen


def heads(x, count=HEADS):  # (B, T, count * D) -> (B, count, T, D)
    return x.view(x.shape[0], x.shape[1], count, HEAD).transpose(1, 2)


def site_prefix(model, site, kv_heads=HEADS):
    """Keys and values of one site, read by hand from the folded matrix P_theta (keys first, then values)."""
    width = 2 * kv_heads * HEAD
    columns = prefix_encoder(model).folded_prefixes()[:, site * width:(site + 1) * width]
    keys, values = columns[:, :kv_heads * HEAD], columns[:, kv_heads * HEAD:]
    return heads(keys[None], kv_heads), heads(values[None], kv_heads)  # (1, kv_heads, P, D)


def reference(q, k, v, prefix_keys, prefix_values, scale, bias):
    """softmax(q [Pk; K]^T * scale + [0; bias]) [Pv; V], with ``bias`` holding the mask (and T5's positions)."""
    batch = q.shape[0]
    keys = torch.cat([prefix_keys.expand(batch, -1, -1, -1), k], dim=2)
    values = torch.cat([prefix_values.expand(batch, -1, -1, -1), v], dim=2)
    bias = torch.cat([torch.zeros(*bias.shape[:-1], P), bias], dim=-1)
    weights = torch.softmax(q @ keys.transpose(-1, -2) * scale + bias, dim=-1)
    out = weights @ values  # (B, H, T, D)
    return out.transpose(1, 2).reshape(batch, q.shape[2], HEADS * HEAD)


def padding_bias(mask):  # (B, T) of 0/1 -> additive (B, 1, 1, T)
    return torch.where(mask.bool(), 0.0, float("-inf"))[:, None, None, :]


RIGHT_PADDED_IDS = torch.tensor([[5, 6, 7, 8, 0, 0], [9, 10, 11, 12, 13, 14]])
MASK = (RIGHT_PADDED_IDS != 0).long()


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_bert_layer_matches_hand_written_prefix_attention(implementation):
    model = adapted("bert", implementation)
    attention = model.bert.encoder.layer[0].attention.self
    seen = capture(attention)
    with torch.no_grad():
        model(input_ids=RIGHT_PADDED_IDS, attention_mask=MASK)
        h = seen["hidden"]
        q, k, v = heads(attention.query(h)), heads(attention.key(h)), heads(attention.value(h))
        expected = reference(q, k, v, *site_prefix(model, 0), 1 / math.sqrt(HEAD), padding_bias(MASK))
    torch.testing.assert_close(seen["output"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_gpt2_layer_matches_hand_written_causal_prefix_attention(implementation):
    model = adapted("gpt2", implementation)
    attention = model.transformer.h[0].attn
    seen = capture(attention)
    ids = RIGHT_PADDED_IDS[1:]
    with torch.no_grad():
        model(input_ids=ids)
        q, k, v = (heads(x) for x in attention.c_attn(seen["hidden"]).split(HEADS * HEAD, dim=2))
        causal = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)[None, None]
        expected = attention.c_proj(reference(q, k, v, *site_prefix(model, 0), 1 / math.sqrt(HEAD), causal))
    torch.testing.assert_close(seen["output"], expected, atol=1e-5, rtol=1e-5)


def rotary(x, positions, theta):
    """RoPE by hand on ``(B, heads, T, D)``: each pair (x_i, x_{i + D/2}) turned by ``position * theta^(-2i/D)``."""
    inverse_frequencies = theta ** (-torch.arange(0, HEAD, 2, dtype=torch.float32) / HEAD)
    angles = positions[:, None, :, None].float() * inverse_frequencies  # (B, 1, T, D/2)
    cos, sin = angles.cos().repeat(1, 1, 1, 2), angles.sin().repeat(1, 1, 1, 2)
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


@pytest.mark.parametrize("positions", ["unshifted", "after_prefix"])
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_llama_layer_matches_hand_written_grouped_query_prefix_attention(implementation, positions):
    """2 key/value heads serve 4 query heads; rotary turns the real queries and keys at their positions
    (0..n-1, or P..P+n-1 as HF peft numbers them) and never the prefix keys, which like peft's
    ``past_key_values`` are used as stored."""
    model = adapted("llama", implementation, positions=positions)
    attention = model.model.layers[0].self_attn
    seen = capture(attention)
    kv_heads, length = 2, RIGHT_PADDED_IDS.shape[1]
    with torch.no_grad():
        model(input_ids=RIGHT_PADDED_IDS, attention_mask=MASK)
        h = seen["hidden"]
        at = torch.arange(length)[None].expand(2, -1) + (P if positions == "after_prefix" else 0)
        theta = model.config.rope_parameters["rope_theta"]
        q = rotary(heads(attention.q_proj(h)), at, theta)
        k = rotary(heads(attention.k_proj(h), kv_heads), at, theta)
        v = heads(attention.v_proj(h), kv_heads)
        prefix_keys, prefix_values = site_prefix(model, 0, kv_heads)
        groups = HEADS // kv_heads  # query head i reads key/value head i // groups
        k, v, prefix_keys, prefix_values = (
            x.repeat_interleave(groups, dim=1) for x in (k, v, prefix_keys, prefix_values)
        )
        causal = torch.full((length, length), float("-inf")).triu(1)[None, None]
        bias = causal + padding_bias(MASK)
        expected = attention.o_proj(reference(q, k, v, prefix_keys, prefix_values, 1 / math.sqrt(HEAD), bias))
    torch.testing.assert_close(seen["output"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [True, False])
def test_llama_sdpa_on_cpu_groups_key_value_heads_and_matches_eager(monkeypatch, padded):
    """The prefix brings a mask, under which transformers' sdpa repeats the key/value heads; on CPU the
    prefixed attention groups them instead, with the same outputs and gradients as eager attention."""
    import transformers.integrations.sdpa_attention as sdpa_module

    def refuse(*args, **kwargs):
        raise AssertionError("the key/value heads were repeated")

    ids, mask = (RIGHT_PADDED_IDS, MASK) if padded else (RIGHT_PADDED_IDS[1:], None)
    results = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = adapted("llama", implementation).train()
        with monkeypatch.context() as patch:
            if implementation == "sdpa":
                patch.setattr(sdpa_module, "repeat_kv", refuse)
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        results[implementation] = loss, [p.grad for p in model.parameters() if p.requires_grad]
    torch.testing.assert_close(results["sdpa"][0], results["eager"][0])
    for sdpa_grad, eager_grad in zip(results["sdpa"][1], results["eager"][1]):
        torch.testing.assert_close(sdpa_grad, eager_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_t5_layer_matches_hand_written_prefix_attention_with_position_bias(implementation):
    model = adapted("t5", implementation)
    attention = model.encoder.block[0].layer[0].SelfAttention
    seen = capture(attention)
    with torch.no_grad():
        model(input_ids=RIGHT_PADDED_IDS, attention_mask=MASK, decoder_input_ids=torch.zeros(2, 1, dtype=torch.long))
        h, length = seen["hidden"], RIGHT_PADDED_IDS.shape[1]
        q, k, v = heads(attention.q(h)), heads(attention.k(h)), heads(attention.v(h))
        bias = attention.compute_bias(length, length) + padding_bias(MASK)  # T5 does not scale q k^T
        expected = attention.o(reference(q, k, v, *site_prefix(model, 0), 1.0, bias))
    torch.testing.assert_close(seen["output"], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILY_BUILDERS))
def test_folding_keeps_outputs_bit_for_bit_and_leaves_only_the_prefix(family):
    model = adapted(family)
    batch = batch_for(model)
    with torch.no_grad():
        before = model(**batch).logits
    counts = prefix_parameter_counts(model)
    fold(model)
    with torch.no_grad():
        after = model(**batch).logits
    assert torch.equal(before, after)
    names = [name for name, _ in peftlab.adapter_parameters(model)]
    assert names == ["prefix_encoder.prefixes"]
    assert peftlab.parameter_counts(model)[0] == counts["folded_prefix"]
    assert prefix_parameter_counts(model) == {"folded_prefix": counts["folded_prefix"],
                                              "reparameterization": counts["folded_prefix"]}


def test_counts_report_the_folded_prefix_and_the_reparameterisation():
    model = adapted("bert")
    sites, width, hidden, mlp = 2, 2 * HEADS * HEAD, 32, 16  # two layers, keys + values of 4 x 8
    reparameterization = P * hidden + (hidden * mlp + mlp) + (mlp * sites * width + sites * width)
    assert prefix_parameter_counts(model) == {"folded_prefix": P * sites * width,
                                              "reparameterization": reparameterization}
    assert peftlab.parameter_counts(model)[0] == P * sites * width  # the survey's count


def test_saved_adapter_holds_only_the_folded_prefix(tmp_path):
    model = adapted("llama")
    peftlab.save_adapter(model, tmp_path / "adapter")
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert list(tensors) == ["prefix_encoder.prefixes"]
    assert tensors["prefix_encoder.prefixes"].shape == (P, 2 * 2 * 2 * HEAD)  # 2 layers, k + v, 2 kv heads
    assert not prefix_encoder(model).folded, "saving must not fold the model being trained"


def test_keep_reparameterization_saves_the_mlp_and_resumes_it(tmp_path):
    model = adapted("t5", keep_reparameterization=True)
    peftlab.save_adapter(model, tmp_path / "adapter")
    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert set(tensors) == {"prefix_encoder.embedding", "prefix_encoder.mlp_in.weight", "prefix_encoder.mlp_in.bias",
                            "prefix_encoder.mlp_out.weight", "prefix_encoder.mlp_out.bias"}
    loaded = peftlab.load_adapter(tiny_t5(), tmp_path / "adapter")
    assert not prefix_encoder(loaded).folded
    torch.testing.assert_close(probe_output(loaded), probe_output(model), atol=0, rtol=0)


def test_cross_attention_option_prefixes_t5_cross_attention_too():
    model = adapted("t5", cross_attention=True)
    assert peftlab.parameter_counts(model)[0] == P * 2 * HEADS * HEAD * 6  # encoder, decoder, cross: 2 each
    ids = RIGHT_PADDED_IDS
    cached = model.generate(input_ids=ids, attention_mask=MASK, max_new_tokens=5, do_sample=False)
    uncached = model.generate(input_ids=ids, attention_mask=MASK, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    with pytest.raises(PrefixAttentionError, match="cross_attention"):
        peftlab.apply(BUILDERS["llama"](), "prefix_tuning", cross_attention=True)


def test_decoder_only_option_leaves_t5_encoder_untouched_and_trains_the_decoder_prefixes():
    base = tiny_t5().eval()
    model = peftlab.apply(copy.deepcopy(base), "prefix_tuning", encoder_self_attention=False, **OPTIONS).eval()
    assert peftlab.parameter_counts(model)[0] == P * 2 * HEADS * HEAD * 2  # the decoder's 2 layers, keys and values
    assert [site.name.split(".")[0] for site in prefix_encoder(model).sites] == ["decoder", "decoder"]
    ids = RIGHT_PADDED_IDS
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(input_ids=ids, attention_mask=MASK).last_hidden_state,
                                   base.encoder(input_ids=ids, attention_mask=MASK).last_hidden_state, atol=0, rtol=0)
    model.zero_grad()
    model(input_ids=ids, attention_mask=MASK, labels=ids[:, :4].clone()).loss.backward()
    gradient = prefix_encoder(model).embedding.grad
    assert gradient is not None and gradient.abs().sum() > 0
    with pytest.raises(PrefixAttentionError, match="encoder_self_attention=True"):
        peftlab.apply(BUILDERS["llama"](), "prefix_tuning", encoder_self_attention=False)


def test_unsupported_attention_is_a_clear_error():
    gpt2 = tiny_gpt2()
    gpt2.config.reorder_and_upcast_attn = True
    for block in gpt2.transformer.h:
        block.attn.reorder_and_upcast_attn = True
    with pytest.raises(PrefixAttentionError, match="reorder_and_upcast_attn"):
        peftlab.apply(gpt2, "prefix_tuning")
    opt = OPTForCausalLM(OPTConfig(vocab_size=96, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                   num_attention_heads=2, max_position_embeddings=32, word_embed_proj_dim=16))
    with pytest.raises(PrefixAttentionError, match="'opt'"):
        peftlab.apply(opt, "prefix_tuning")


@pytest.mark.parametrize("reparameterize", [True, False])
def test_a_tensor_site_index_selects_what_the_int_index_slices(reparameterize):
    encoder = prefix_encoder(adapted("llama", reparameterize=reparameterize))
    assert encoder.uniform
    query = torch.zeros(1, HEADS, 3, HEAD)
    for index in range(len(encoder.sites)):
        by_tensor = encoder.key_values(torch.tensor([index]), query)
        for selected, sliced in zip(by_tensor, encoder.key_values(index, query)):
            assert torch.equal(selected, sliced)


def test_unload_restores_the_base_attention():
    base = BUILDERS["llama"]().eval()
    model = peftlab.apply(copy.deepcopy(base), "prefix_tuning", **OPTIONS)
    assert set(model.state_dict()) - set(base.state_dict()) == {f"prefix_encoder.{name}" for name, _ in
                                                                  prefix_encoder(model).named_parameters()}
    peftlab.unload(model, merge_first=False)
    assert "prefix_encoder" not in dict(model.named_children())
    assert all(layer.self_attn.config is model.config for layer in model.model.layers)
    assert not any(name.endswith("prefix_index") for name, _ in model.named_buffers())
    torch.testing.assert_close(probe_output(model), probe_output(base), atol=0, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_after_prefix_positions_are_the_unshifted_model_given_positions_shifted_by_p(family):
    shifted = adapted(family, positions="after_prefix", reparameterize=False)
    plain = adapted(family, reparameterize=False)  # the same seeded base
    with torch.no_grad():
        prefix_encoder(plain).prefixes.copy_(prefix_encoder(shifted).prefixes)
    batch = {k: v for k, v in batch_for(shifted).items() if k != "labels"}
    length = batch["input_ids"].shape[1]
    positions = torch.arange(length)[None].expand(batch["input_ids"].shape[0], -1)
    with torch.no_grad():
        moved = shifted(**batch).logits
        torch.testing.assert_close(moved, plain(**batch, position_ids=positions + P).logits, atol=0, rtol=0)
        torch.testing.assert_close(shifted(**batch, position_ids=positions).logits, moved, atol=0, rtol=0)
        assert not torch.allclose(moved, plain(**batch).logits), "moving the positions must change the outputs"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_after_prefix_generation_with_the_cache_matches_the_full_forward(family):
    model = adapted(family, positions="after_prefix")
    ids = torch.randint(5, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, pad_token_id=0)
        full = model(input_ids=out.sequences).logits
    for step, scores in enumerate(out.scores):
        torch.testing.assert_close(scores, full[:, ids.shape[1] - 1 + step], atol=1e-5, rtol=0)


def test_after_prefix_on_t5_is_refused_with_the_reason():
    with pytest.raises(peftlab.core.errors.UserError, match="positions='unshifted'"):
        peftlab.apply(tiny_t5(), "prefix_tuning", positions="after_prefix")

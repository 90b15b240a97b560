"""Tiny seeded mixture-of-experts models (experts as 3-D parameters), built from their config classes."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GptOssConfig, GptOssForCausalLM, MixtralConfig, MixtralForCausalLM, Qwen3MoeConfig, \
    Qwen3MoeForCausalLM

VOCAB = 96


def tiny_mixtral() -> nn.Module:
    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                           max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return MixtralForCausalLM(config)


def tiny_qwen3_moe() -> nn.Module:
    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                            num_experts=4, num_experts_per_tok=2, max_position_embeddings=64, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2)
    return Qwen3MoeForCausalLM(config)


def tiny_gpt_oss() -> nn.Module:
    """Experts stored transposed, ``(E, in, out)`` (``is_transposed``)."""
    torch.manual_seed(0)
    config = GptOssConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=4,
                          num_experts_per_tok=2, max_position_embeddings=64, pad_token_id=0,
                          layer_types=["full_attention", "full_attention"],
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = GptOssForCausalLM(config)
    with torch.no_grad():  # its init leaves the expert stacks and sinks at zero
        for name, parameter in model.named_parameters():
            if "experts" in name or "sinks" in name:
                parameter.normal_(0.0, 0.2)
    return model


MOE_BUILDERS = {"mixtral": tiny_mixtral, "qwen3_moe": tiny_qwen3_moe, "gpt_oss": tiny_gpt_oss}

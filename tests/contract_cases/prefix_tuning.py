from contract_cases.dims import H, L

P = 3
OPTIONS = {"num_virtual_tokens": P, "mlp_hidden_size": 16}
# Random prefixes take softmax mass from the real tokens: outputs differ from the base at initialisation.
STARTS_AS_BASE = False

# The survey's count is the folded prefix, P x (keys + values) per prefixed attention layer.
KV_WIDTH = {
    "bert": 2 * H,  # 4 heads x 8 for keys and for values
    "t5": 2 * H,
    "llama": 2 * 16,  # 2 key/value heads x 8
    "gpt2": 2 * H,
}
LAYERS = {"bert": L, "t5": 2 * L, "llama": L, "gpt2": L}  # T5: encoder + decoder self-attention


def expected_trainable(arch, base):
    return P * KV_WIDTH[arch] * LAYERS[arch]

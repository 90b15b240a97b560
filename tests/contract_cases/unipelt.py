from contract_cases.dims import ATTENTION_QV, FEED_FORWARD_OUTPUT, H
from contract_cases.prefix_tuning import KV_WIDTH, LAYERS

P = 3
OPTIONS = {
    "adapter": {"bottleneck_size": 8, "placement": "pfeiffer"},
    "prefix": {"num_virtual_tokens": P, "mlp_hidden_size": 16},
    "lora": {"rank": 4, "alpha": 8.0},
}
STARTS_AS_BASE = False  # random prefixes take softmax mass from the real tokens


def expected_trainable(arch, base):
    # each gate is a linear map to one value: (features + 1) parameters
    lora = sum(4 * (i + o) + (i + 1) for i, o in ATTENTION_QV[arch])  # A, B, gate on the layer input
    adapter = sum(2 * o * 8 + 8 + o + (o + 1) for _, o in FEED_FORWARD_OUTPUT[arch])  # down, up, gate on h
    prefix = P * KV_WIDTH[arch] * LAYERS[arch] + (H + 1) * LAYERS[arch]  # folded prefix, gate on attention input
    return lora + adapter + prefix

from contract_cases.dims import FEED_FORWARD_OUTPUT
from contract_cases.prefix_tuning import KV_WIDTH, LAYERS

P = 3
OPTIONS = {
    "prefix": {"num_virtual_tokens": P, "mlp_hidden_size": 16},
    "adapter": {"bottleneck_size": 8, "scaling": 2.0},
}
STARTS_AS_BASE = False  # random prefixes take softmax mass from the real tokens


def expected_trainable(arch, base):
    prefix = P * KV_WIDTH[arch] * LAYERS[arch]  # the folded prefix, as prefix-tuning counts it
    adapters = sum(2 * o * 8 + 8 + o for _, o in FEED_FORWARD_OUTPUT[arch])  # down + up per feed-forward
    return prefix + adapters

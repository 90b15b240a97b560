from contract_cases.dims import ATTENTION_KV, FEED_FORWARD_OUTPUT

OPTIONS: dict = {}


def expected_trainable(arch, base):
    # keys/values: one scale per output feature; feed-forward down-projection: one per input feature
    return sum(o for _, o in ATTENTION_KV[arch]) + sum(i for i, _ in FEED_FORWARD_OUTPUT[arch])

from contract_cases.dims import FEED_FORWARD_OUTPUT

OPTIONS = {"bottleneck_size": 8, "scaling": 2.0}


def expected_trainable(arch, base):
    # one adapter per feed-forward block: down (d x 8 + 8) and up (8 x d + d), d = the hidden size
    return sum(2 * o * 8 + 8 + o for _, o in FEED_FORWARD_OUTPUT[arch])

from contract_cases.dims import ATTENTION_OUTPUT, FEED_FORWARD_OUTPUT

OPTIONS = {"bottleneck_size": 8}


def expected_trainable(arch, base):
    # after each attention and feed-forward output: down (d x 8 + 8) and up (8 x d + d)
    return sum(2 * o * 8 + 8 + o for _, o in ATTENTION_OUTPUT[arch] + FEED_FORWARD_OUTPUT[arch])

import math

from contract_cases.dims import FEED_FORWARD_OUTPUT, H

OPTIONS = {"prototype": "adapter", "bottleneck_size": 8}


def expected_trainable(arch, base):
    # one shared bottleneck prototype (every feed-forward output has width H): down H x 8 + 8, up 8 x H + H;
    # each adapted layer masks both weight matrices, counted at 1 bit (1/32 of a parameter) per entry
    prototype = 2 * H * 8 + 8 + H
    mask_entries = len(FEED_FORWARD_OUTPUT[arch]) * 2 * H * 8
    return prototype + math.ceil(mask_entries / 32)

OPTIONS: dict = {}
FROZEN_BASE = False


def expected_trainable(arch, base):
    return sum(p.numel() for p in base.parameters())

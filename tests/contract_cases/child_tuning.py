from contract_cases.dims import ALL_LINEAR

OPTIONS = {"variant": "D", "reserve_p": 0.25}
FROZEN_BASE = False  # the child network is made of base weights


def expected_trainable(arch, base):
    with_bias = arch in ("bert", "gpt2")  # T5 and LLaMA linear layers have no bias
    parent = sum(i * o + (o if with_bias else 0) for i, o in ALL_LINEAR[arch])
    return round(0.25 * parent)

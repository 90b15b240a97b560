from contract_cases.dims import ATTENTION_QV

OPTIONS = {"rank": 4, "alpha": 8.0}


def expected_trainable(arch, base):
    return sum(4 * o for _, o in ATTENTION_QV[arch])  # only B (out x 4); A is frozen

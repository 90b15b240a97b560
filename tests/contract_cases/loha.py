from contract_cases.dims import ATTENTION_QV

OPTIONS = {"rank": 4, "alpha": 4.0}


def expected_trainable(arch, base):
    return sum(2 * 4 * (i + o) for i, o in ATTENTION_QV[arch])  # two (out x 4)(4 x in) factor pairs

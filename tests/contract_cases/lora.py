from contract_cases.dims import ATTENTION_QV

OPTIONS = {"rank": 4, "alpha": 8.0}


def expected_trainable(arch, base):
    return sum(4 * (i + o) for i, o in ATTENTION_QV[arch])

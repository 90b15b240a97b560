from contract_cases.dims import ATTENTION_QV

OPTIONS = {"r": 4}


def expected_trainable(arch, base):
    return sum(i * 4 for i, _ in ATTENTION_QV[arch])  # r = 4 reflection vectors of the input size per layer

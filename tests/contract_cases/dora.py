from contract_cases.dims import ATTENTION_QV

OPTIONS = {"rank": 4, "alpha": 8.0}


def expected_trainable(arch, base):
    # LoRA's A (4 x in) and B (out x 4), plus one magnitude per output unit
    return sum(4 * (i + o) + o for i, o in ATTENTION_QV[arch])

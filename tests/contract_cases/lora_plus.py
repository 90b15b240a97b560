from contract_cases.dims import ATTENTION_QV

OPTIONS = {"rank": 4, "alpha": 8.0, "lr_ratio": 16.0}


def expected_trainable(arch, base):
    return sum(4 * (i + o) for i, o in ATTENTION_QV[arch])  # same structure as LoRA: A (4 x in), B (out x 4)

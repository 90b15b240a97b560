from contract_cases.dims import ALL_LINEAR

OPTIONS = {"total_steps": 10, "init_rank": 3, "target_rank": 2, "alpha": 6.0}


def expected_trainable(arch, base):
    # every triplet active at initialisation: a column of P, a singular value, a row of Q
    return sum(3 * (i + o + 1) for i, o in ALL_LINEAR[arch])

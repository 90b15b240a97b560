from contract_cases.dims import H

INDICES = (13, 42, 53, 67)  # in the contract batch (13, 42) and the probe input (53, 67)
OPTIONS: dict = {"token_indices": INDICES}


def expected_trainable(arch, base):
    return len(INDICES) * H  # the chosen rows; a tied head (GPT-2, T5) shares them

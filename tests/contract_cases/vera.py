from contract_cases.dims import ATTENTION_QV

# d_initial 1.0 (not 0.1): with the tiny GPT-2's small weights, one SGD step at d = 0.1 moves the loss by
# less than float32 resolution; the behaviour checked is the same.
OPTIONS = {"rank": 8, "d_initial": 1.0}


def expected_trainable(arch, base):
    return sum(8 + o for _, o in ATTENTION_QV[arch])  # d (r = 8) and b (out) per layer; A and B are frozen

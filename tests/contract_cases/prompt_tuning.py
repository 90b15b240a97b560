from contract_cases.dims import H

P = 4
OPTIONS = {"num_virtual_tokens": P}
# The prepended prompt changes every output: prompt tuning cannot start equal to the base.
STARTS_AS_BASE = False


def expected_trainable(arch, base):
    # P virtual-token embeddings of the hidden size (T5: on the encoder input only)
    return P * H

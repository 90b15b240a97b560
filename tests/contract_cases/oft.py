from contract_cases.dims import ATTENTION_QV

OPTIONS = {"oft_block_size": 8}


def expected_trainable(arch, base):
    # in / 8 blocks per layer, each the 8 * 7 / 2 = 28 upper entries of a skew-symmetric matrix
    return sum((i // 8) * 28 for i, _ in ATTENTION_QV[arch])

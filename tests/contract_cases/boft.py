from contract_cases.dims import ATTENTION_QV

OPTIONS = {"boft_block_size": 4, "boft_n_butterfly_factor": 2}


def expected_trainable(arch, base):
    # 2 factors x (in / 4) full 4 x 4 blocks, and the output scale s (out)
    return sum(2 * (i // 4) * 16 + o for i, o in ATTENTION_QV[arch])

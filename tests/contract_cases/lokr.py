from contract_cases.dims import ATTENTION_QV

OPTIONS = {"rank": 4, "alpha": 4.0}

# Factor pairs nearest the square root, worked out by hand: 16 = 4 x 4, 32 = 4 x 8, 96 = 8 x 12.
FACTORS = {16: (4, 4), 32: (4, 8), 96: (8, 12)}


def per_layer(i, o, rank=4):
    (l, k), (m, n) = FACTORS[o], FACTORS[i]
    second = rank * (k + n) if rank < max(k, n) / 2 else k * n  # W2 low-rank when r < max(k, n) / 2
    return l * m + second


def expected_trainable(arch, base):
    # 32 -> 32: W1 4x4 + full W2 8x8 = 80; 32 -> 16: 4x4 + full 4x8 = 48;
    # 32 -> 96 (GPT-2's fused qkv): W1 8x4 + low-rank W2 (12x4)(4x8) = 32 + 80 = 112
    return sum(per_layer(i, o) for i, o in ATTENTION_QV[arch])

from contract_cases.dims import ALL_LINEAR

# float32 compute: the merge check then compares the same dequantized weights in the same precision
OPTIONS = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "compute_dtype": "float32"}
STARTS_AS_BASE = False  # the base is quantized: outputs start at the 4-bit base's, not the float one's


def expected_trainable(arch, base):
    return sum(4 * (i + o) + o for i, o in ALL_LINEAR[arch])  # LoRA's A and B plus a magnitude per output

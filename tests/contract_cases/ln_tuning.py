from contract_cases.dims import H, L

OPTIONS: dict = {}


def expected_trainable(arch, base):
    if arch == "bert":
        return 2 * H + L * 2 * 2 * H  # embedding LayerNorm, two LayerNorms per layer (weight and bias)
    if arch == "t5":
        return (2 * L + 1 + 3 * L + 1) * H  # T5LayerNorm (weight only): 2 per encoder block, 3 per decoder, 2 final
    if arch == "llama":
        return (2 * L + 1) * H  # two LlamaRMSNorms per layer and the final one
    return (2 * L + 1) * 2 * H  # GPT-2: ln_1, ln_2 per layer and ln_f, weight and bias

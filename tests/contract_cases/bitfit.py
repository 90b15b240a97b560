from contract_cases.dims import ALL_LINEAR, FF, H, L

OPTIONS: dict = {}


def expected_trainable(arch, base):
    if arch == "bert":
        per_layer = 4 * H + H + FF + H + H  # q k v o, attention LayerNorm, intermediate, output, LayerNorm
        return H + L * per_layer + H + 2  # embedding LayerNorm, layers, pooler, classifier
    if arch == "gpt2":
        per_layer = 3 * H + H + 4 * H + H + 2 * H  # c_attn, c_proj, c_fc, c_proj, two LayerNorms
        return L * per_layer + H  # final LayerNorm
    # T5 and LLaMA have no biases: one zero bias is added per linear layer
    return sum(o for _, o in ALL_LINEAR[arch])

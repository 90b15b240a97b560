"""The LoRA family against HF peft's implementations (an independent reference; peft 0.21 installed):
the same weights, copied under peft's names, give the same outputs. The name map is the one the
peft-format export uses: peftlab ``<module>.<name>`` <-> peft ``base_model.model.<module>.<name>[.default][.weight]``."""

import copy

import pytest
import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, VeraConfig, get_peft_model

import peftlab
from conftest import tiny_gpt2, tiny_llama
from peftlab.core.probe import probe_inputs, probe_output

TARGETS = ["q_proj", "v_proj"]
CASES = {
    "lora_rslora": ("lora", {"rank": 4, "alpha": 8.0, "scaling_rule": "rslora"},
                    LoraConfig(r=4, lora_alpha=8.0, use_rslora=True, target_modules=TARGETS)),
    "dora": ("dora", {"rank": 4, "alpha": 8.0}, LoraConfig(r=4, lora_alpha=8.0, use_dora=True, target_modules=TARGETS)),
    "vera": ("vera", {"rank": 8, "projection_seed": 5},
             VeraConfig(r=8, projection_prng_key=5, target_modules=TARGETS)),
    "loha": ("loha", {"rank": 4, "alpha": 8.0}, LoHaConfig(r=4, alpha=8.0, target_modules=TARGETS)),
    "lokr": ("lokr", {"rank": 2, "alpha": 4.0}, LoKrConfig(r=2, alpha=4.0, target_modules=TARGETS)),
}


def peft_name(name: str) -> str:
    """peftlab name -> the name of the same tensor in a peft model's ``named_parameters``."""
    module, weight = name.rsplit(".", 1)
    suffix = {"lora_A": "lora_A.default.weight", "lora_B": "lora_B.default.weight",
              "lora_magnitude": "lora_magnitude_vector.default.weight"}.get(weight, f"{weight}.default")
    return f"base_model.model.{module}.{suffix}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_weights_give_peft_outputs(case):
    method, options, peft_config = CASES[case]
    base = tiny_llama().eval()
    ours = peftlab.apply(copy.deepcopy(base), method, **options)
    theirs = get_peft_model(copy.deepcopy(base), peft_config).eval()
    named = dict(theirs.named_parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peftlab.adapter_parameters(ours):
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
            named[peft_name(name)].copy_(parameter)
    with torch.no_grad():
        expected = theirs(**probe_inputs(base)).logits
    torch.testing.assert_close(probe_output(ours), expected, atol=1e-5, rtol=1e-5)


# peft 0.21's OLoRA ignores fan_in_fan_out (it factors GPT-2's stored (in, out) Conv1D weight), so OLoRA is
# compared on LLaMA's nn.Linear; PiSSA on GPT-2's Conv1D, which peft transposes.
@pytest.mark.parametrize("init, builder, target", [("pissa", tiny_gpt2, "c_attn"), ("olora", tiny_llama, "q_proj")])
def test_residual_inits_match_peft(init, builder, target):
    base = builder().eval()
    ours = peftlab.apply(copy.deepcopy(base), "lora", rank=4, alpha=8.0, init=init, target_modules=(target,))
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, lora_alpha=8.0, init_lora_weights=init,
                                                           target_modules=[target], fan_in_fan_out=builder is tiny_gpt2))
    layers = [(n, m) for n, m in ours.named_modules() if hasattr(m, "lora_A_init")]
    assert len(layers) == 2
    for name, layer in layers:
        peft_layer = theirs.get_submodule(f"base_model.model.{name}")
        ours_product = layer.lora_B @ layer.lora_A
        theirs_product = peft_layer.lora_B.default.weight @ peft_layer.lora_A.default.weight
        torch.testing.assert_close(ours_product, theirs_product, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.base_layer.weight, peft_layer.base_layer.weight, atol=1e-5, rtol=1e-4)

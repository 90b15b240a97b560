"""OFT, BOFT and HRA against HF peft 0.21's implementations (an independent reference): the same weights,
copied under peft's names, give the same outputs and the same gradients, as test_against_peft.py does for the
LoRA family. peftlab ``<module>.<name>`` <-> peft ``base_model.model.<module>.<name>.default[.weight]``."""

import copy
import warnings

import pytest
import torch
from peft import BOFTConfig, HRAConfig, OFTConfig, get_peft_model

import peftlab
from conftest import tiny_llama
from interop.peft_cases import peft_boft_on_cpu
from peftlab.core.probe import probe_inputs
from peftlab.methods.reparameterized.boft import butterfly_permutation

TARGETS = ["q_proj", "v_proj", "down_proj"]
CASES = {
    "oft_exact": ("oft", {"oft_block_size": 8},
                  OFTConfig(oft_block_size=8, use_cayley_neumann=False, target_modules=TARGETS)),
    "oft_neumann": ("oft", {"oft_block_size": 8, "use_cayley_neumann": True},
                    OFTConfig(oft_block_size=8, target_modules=TARGETS)),
    "oft_neumann_3_terms": ("oft", {"oft_block_size": 4, "use_cayley_neumann": True, "num_cayley_neumann_terms": 3},
                            OFTConfig(oft_block_size=4, num_cayley_neumann_terms=3, target_modules=TARGETS)),
    "oft_r_block_share": ("oft", {"r": 2, "oft_block_size": 0, "block_share": True},
                          OFTConfig(r=2, oft_block_size=0, block_share=True, use_cayley_neumann=False,
                                    target_modules=TARGETS)),
    "oft_coft": ("oft", {"oft_block_size": 8, "coft": True, "eps": 0.05},
                 OFTConfig(oft_block_size=8, coft=True, eps=0.05, use_cayley_neumann=False, target_modules=TARGETS)),
    "hra": ("hra", {"r": 4}, HRAConfig(r=4, target_modules=TARGETS)),
    "hra_odd_r": ("hra", {"r": 3}, HRAConfig(r=3, target_modules=TARGETS)),
    "hra_gram_schmidt": ("hra", {"r": 4, "apply_GS": True}, HRAConfig(r=4, apply_GS=True, target_modules=TARGETS)),
    "boft_one_factor": ("boft", {"boft_block_size": 4}, BOFTConfig(boft_block_size=4, target_modules=TARGETS)),
    "boft_two_factors": ("boft", {"boft_block_size": 4, "boft_n_butterfly_factor": 2},
                         BOFTConfig(boft_block_size=4, boft_n_butterfly_factor=2, target_modules=TARGETS)),
    "boft_block_num_three_factors": ("boft", {"boft_block_size": 0, "boft_block_num": 4, "boft_n_butterfly_factor": 3},
                                     BOFTConfig(boft_block_size=0, boft_block_num=4, boft_n_butterfly_factor=3,
                                                target_modules=TARGETS)),
}
PEFT_NAMES = {"oft_R": "oft_R.default.weight"}


def peft_name(name: str) -> str:
    module, weight = name.rsplit(".", 1)
    return f"base_model.model.{module}.{PEFT_NAMES.get(weight, weight + '.default')}"


def outputs_and_gradients(model, inputs, names):
    logits = model(**inputs).logits
    (logits.float() ** 2).mean().backward()
    named = dict(model.named_parameters())
    return logits.detach(), {name: named[name].grad.clone() for name in names}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_weights_give_peft_outputs_and_gradients(case):
    method, options, peft_config = CASES[case]
    base = tiny_llama().eval()
    with warnings.catch_warnings():  # HRA with odd r or Gram-Schmidt: it does not start as the base (nor peft's)
        warnings.simplefilter("ignore", UserWarning)
        ours = peftlab.apply(copy.deepcopy(base), method, target_modules=TARGETS, **options)
    with peft_boft_on_cpu():  # peft's BOFT keeps its butterfly factors on CPU only with a stand-in kernel
        theirs = get_peft_model(copy.deepcopy(base), copy.deepcopy(peft_config))
    named = dict(theirs.named_parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peftlab.adapter_parameters(ours):
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
            named[peft_name(name)].copy_(parameter)
    inputs = probe_inputs(base)
    ours_names = [name for name, _ in peftlab.adapter_parameters(ours)]
    with peft_boft_on_cpu():
        expected, expected_grads = outputs_and_gradients(theirs, inputs, [peft_name(n) for n in ours_names])
    got, grads = outputs_and_gradients(ours, inputs, ours_names)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for name in ours_names:
        torch.testing.assert_close(grads[name], expected_grads[peft_name(name)], atol=1e-8, rtol=1e-4)  # |grad| ~ 1e-4


@pytest.mark.parametrize(("features", "size", "factors"), [(32, 4, 2), (32, 4, 3), (64, 8, 2), (64, 2, 4), (48, 2, 3)])
def test_butterfly_permutations_are_peft_s(features, size, factors):
    from peft.tuners.boft.layer import BOFTLayer

    for i in range(factors):
        theirs = BOFTLayer.block_butterfly_perm(None, features, (features // size) // 2 ** i, size // 2, factors - 1)
        assert torch.equal(butterfly_permutation(features, size, i), theirs), i


def test_coft_trains_as_peft_s_projection_in_the_forward():
    """peft projects ``oft_R`` in place at each forward; peftlab projects in its forward (functionally) and after
    each optimizer step (training hooks): the same parameters after a few steps."""
    _, options, peft_config = CASES["oft_coft"]
    base = tiny_llama().eval()
    ours = peftlab.apply(copy.deepcopy(base), "oft", target_modules=TARGETS, **options)
    theirs = get_peft_model(copy.deepcopy(base), copy.deepcopy(peft_config))
    named = dict(theirs.named_parameters())
    pairs = [(parameter, named[peft_name(name)]) for name, parameter in peftlab.adapter_parameters(ours)]
    hooks = peftlab.training_hooks(ours)
    inputs = probe_inputs(base)
    optimizers = [torch.optim.SGD([p for p, _ in pairs], lr=50.0), torch.optim.SGD([p for _, p in pairs], lr=50.0)]
    for step in range(3):
        for model, optimizer in zip((ours, theirs), optimizers):
            optimizer.zero_grad()
            (model(**inputs).logits ** 2).mean().backward()
            optimizer.step()
        hooks.after_optimizer_step(ours, step)
    with torch.no_grad():
        theirs(**inputs)  # peft's last projection happens in its next forward
    assert any(p.abs().max() > 0 for p, _ in pairs)
    for ours_parameter, theirs_parameter in pairs:
        torch.testing.assert_close(ours_parameter, theirs_parameter, atol=1e-7, rtol=1e-5)

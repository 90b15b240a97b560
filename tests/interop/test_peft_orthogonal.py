"""OFT, BOFT and HRA options beyond the round-trip cases: each variant exported loads in peft with the same
outputs, comes back with the same config, and GPT-2's Conv1D adapters, which peft cannot wrap, are refused."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

import peftlab
from conftest import FAMILY_BUILDERS
from interop.test_peft_roundtrip import peft_output, perturb
from peftlab.core.probe import probe_inputs, probe_output
from peftlab.interop import export_peft
from peftlab.interop.peft_converters import UnsupportedPeftAdapter

peft = pytest.importorskip("peft")

VARIANTS = [
    ("oft", {"r": 4, "oft_block_size": 0, "block_share": True}),
    ("oft", {"oft_block_size": 16, "use_cayley_neumann": True, "num_cayley_neumann_terms": 7}),
    ("oft", {"oft_block_size": 8, "coft": True, "eps": 0.05}),
    ("hra", {"r": 5, "apply_GS": True}),
    ("boft", {"boft_block_size": 0, "boft_block_num": 4, "boft_n_butterfly_factor": 3}),
]


@pytest.mark.parametrize(("method", "options"), VARIANTS, ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_a_variant_exports_to_peft_and_back_with_the_same_outputs(method, options, tmp_path):
    base = FAMILY_BUILDERS["llama"]().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # HRA with Gram-Schmidt does not start as the base
        ours = peftlab.apply(copy.deepcopy(base), method, target_modules=["q_proj", "down_proj"], **options)
    perturb(p for _, p in peftlab.adapter_parameters(ours))
    export_peft(ours, tmp_path / "peft")
    document = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert all(document[name] == value for name, value in options.items())
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    inputs = probe_inputs(base)
    expected = probe_output(ours, inputs)
    torch.testing.assert_close(peft_output(theirs, inputs), expected, atol=1e-5, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        back = peftlab.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    assert peftlab.peft_state(back).config.to_dict() == {**peftlab.peft_state(ours).config.to_dict(),
                                                         "target_modules": [r"model\.layers\.0\.mlp\.down_proj",
                                                                            r"model\.layers\.0\.self_attn\.q_proj",
                                                                            r"model\.layers\.1\.mlp\.down_proj",
                                                                            r"model\.layers\.1\.self_attn\.q_proj"]}
    torch.testing.assert_close(probe_output(back, inputs), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["oft", "hra", "boft"])
def test_gpt2_s_conv1d_adapters_have_no_peft_form(method, tmp_path):
    model = peftlab.apply(FAMILY_BUILDERS["gpt2"]().eval(), method)
    with pytest.raises(UnsupportedPeftAdapter, match="cannot wrap GPT-2's Conv1D layers.*peftlab merge"):
        export_peft(model, tmp_path / "peft")

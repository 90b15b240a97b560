"""OFT <-> peft ``OFT``: peftlab's ``oft_R`` (rows x b(b-1)/2, the upper entries of each skew block) is
peft's ``<module>.oft_R.weight``; the options keep peft's names."""

from __future__ import annotations

from typing import Any

from peftlab.core.config import MethodConfig
from peftlab.interop.peft_converters import Grouped, PeftConverter, UnsupportedPeftAdapter, peft_field, register_converter
from peftlab.interop.peft_methods._orthogonal import common_fields, config_for, refuse_common


def _oft_to_peft(config: MethodConfig, grouped: Grouped, base: dict[str, Any]) -> tuple[dict[str, Any], Grouped]:
    document = {**common_fields(config, grouped, base), "r": config.r, "oft_block_size": config.oft_block_size,
                "module_dropout": config.module_dropout, "coft": config.coft, "eps": config.eps,
                "block_share": config.block_share, "use_cayley_neumann": config.use_cayley_neumann,
                "num_cayley_neumann_terms": config.num_cayley_neumann_terms}
    return document, {module: {"oft_R.weight": weights["oft_R"]} for module, weights in grouped.items()}


def _oft_from_peft(document: dict[str, Any], grouped: Grouped) -> tuple[MethodConfig, Grouped]:
    refuse_common(document)
    if "oft_block_size" not in document:
        raise UnsupportedPeftAdapter("this OFT adapter predates peft 0.14's OFT (no oft_block_size); peft itself "
                                     "refuses it: retrain it with a newer peft")
    options = {
        "r": peft_field(document, "r", int, 0), "oft_block_size": peft_field(document, "oft_block_size", int, 0),
        "coft": peft_field(document, "coft", bool, False), "eps": peft_field(document, "eps", float, 6e-5),
        "block_share": peft_field(document, "block_share", bool, False),
        "module_dropout": peft_field(document, "module_dropout", float, 0.0),
        # absent: a peft from before the Neumann series, whose rotation was the exact Cayley transform
        "use_cayley_neumann": peft_field(document, "use_cayley_neumann", bool, False),
        "num_cayley_neumann_terms": peft_field(document, "num_cayley_neumann_terms", int, 5),
    }
    return config_for("oft", grouped, options), {m: {"oft_R": w["oft_R.weight"]} for m, w in grouped.items()}


register_converter(PeftConverter("oft", "OFT", ("oft_R",), ("oft_R.weight",), _oft_to_peft, _oft_from_peft))

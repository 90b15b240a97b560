"""LN tuning: train only the normalisation layers (Zhao et al. 2023, "Tuning LayerNorm in Attention:
Towards Efficient Multi-Modal LLM Finetuning", arXiv 2312.11420).

``y = gamma ⊙ (x - mu) / sqrt(var + eps) + beta`` (LayerNorm) or ``y = gamma ⊙ x / rms(x)`` (RMSNorm), with
the whole network frozen except ``gamma`` and ``beta``. LN tuning selects those parameters; it adds no
module, so outputs at initialisation are the base's and a saved adapter holds just the norms' tensors.

Normalisation layers are found by what they are, not by their names: ``nn.LayerNorm``, ``nn.RMSNorm``,
``nn.GroupNorm``, and any leaf module with an epsilon (``eps`` or ``variance_epsilon``) whose parameters are
a 1-D ``weight`` and perhaps a ``bias`` of the same size (LlamaRMSNorm, T5LayerNorm and their kin).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from peftlab.core.config import ConfigError, MethodConfig, option
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection
from peftlab.core.targeting import TargetError, find_modules

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)


@dataclass(frozen=True, kw_only=True)
class LNTuningConfig(MethodConfig):
    method = "ln_tuning"

    target_modules: tuple[str, ...] = option(
        (), "Normalisation layers to train, as module name patterns (e.g. 'encoder\\..*', 'input_layernorm'); "
            "empty: every normalisation layer of the model (LayerNorm and RMSNorm-style)."
    )


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer with parameters to train, recognised by type or by shape."""
    own = dict(module.named_parameters(recurse=False))
    if not own:
        return False
    if isinstance(module, NORM_TYPES):
        return True
    has_epsilon = hasattr(module, "eps") or hasattr(module, "variance_epsilon")
    shapes = {tuple(parameter.shape) for parameter in own.values()}
    return (has_epsilon and not next(module.children(), None) and "weight" in own and set(own) <= {"weight", "bias"}
            and len(shapes) == 1 and len(next(iter(shapes))) == 1)


def norm_modules(model: nn.Module, patterns: tuple[str, ...] = ()) -> list[tuple[str, nn.Module]]:
    """The model's normalisation layers (``(name, module)``), those ``patterns`` match when given; each
    pattern must match one."""
    kinds = tuple(dict.fromkeys(type(module) for module in model.modules() if is_norm(module)))
    if not kinds:
        raise ConfigError("ln_tuning found no normalisation layer with parameters (LayerNorm, RMSNorm) in "
                          f"this {type(model).__name__}")
    try:
        found = find_modules(model, patterns or (".*",), types=kinds)
    except TargetError as error:
        norms = dict.fromkeys(re.sub(r"\.\d+\.", ".N.", name) for name, module in model.named_modules() if is_norm(module))
        raise TargetError(
            f"ln_tuning trains normalisation layers only, and {str(error).split(' matches ')[0]} matches none of "
            f"them; the model's normalisation layers ({', '.join(k.__name__ for k in kinds)}): {', '.join(norms)}"
        ) from None
    return [(name, module) for name, module in found if is_norm(module)]


def inject(model: nn.Module, config: LNTuningConfig) -> Injection:
    selected = [f"{name}.{parameter}" for name, module in norm_modules(model, config.target_modules)
                for parameter, _ in module.named_parameters(recurse=False)]
    return Injection(selected=selected)


register(MethodSpec(
    name="ln_tuning",
    family="partial",
    config_class=LNTuningConfig,
    inject=inject,
    paper="Zhao et al. 2023, Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM Finetuning "
          "(arXiv 2312.11420)",
    summary="Only the normalisation layers' weights and biases train.",
    mergeable=True,
))

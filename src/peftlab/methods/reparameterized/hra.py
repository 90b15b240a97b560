"""HRA: Householder reflection adaptation (Yuan et al. 2024, Bridging The Gap between Low-rank and Orthogonal
Adaptation via Householder Reflection Adaptation, arXiv 2405.17484), in HF peft 0.21's form.

Each frozen weight is multiplied on its input side by a chain of ``r`` Householder reflections:

    W <- W H,   H = H_1 H_2 ... H_r,   H_i = I - 2 u_i u_i^T / |u_i|^2,      y = W H x + b

with ``U = [u_1 .. u_r]`` (in x r, ``hra_u``) the only trained tensor. The forward never forms ``H``: the
compact WY form ``H = I - Û T Û^T`` (``Û`` the normalised columns, ``T^{-1} = I/2 + strictly-upper(Û^T Û)``)
costs two thin products per input. ``apply_GS`` orthonormalises ``U`` first (Gram-Schmidt, by QR), which makes
``H = I - 2 Q Q^T`` (the reflections then commute). Initialisation as peft: for even ``r`` the columns come in
equal pairs (``H_{2k} H_{2k+1} = I``), so the model starts as the base; for odd ``r``, or with ``apply_GS``
(whose ``H`` is never the identity), they are drawn independently and it does not. The paper's orthogonality
regulariser ``lambda * sum_layers |Û^T Û - I|_F^2`` (on the normalised columns, since only the directions
enter ``H``) is added to the loss through the training hooks (``orth_reg_weight``; peft has none).
Mergeable: ``W <- W H``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from peftlab.core.config import ConfigError, MethodConfig, option, require
from peftlab.core.hooks import TrainingHooks
from peftlab.core.layers import linear_shape
from peftlab.core.registry import MethodHooks, MethodSpec, register
from peftlab.core.state import Injection
from peftlab.core.targeting import find_modules, replace_module
from peftlab.methods.reparameterized._orthogonal import InputRotation, layers_in_use, make_parameter


@dataclass(frozen=True, kw_only=True)
class HRAConfig(MethodConfig):
    method = "hra"

    r: int = option(8, "Number of Householder reflections per layer (even: paired initial vectors make the "
                       "chain the identity, so the model starts as the base).")
    apply_GS: bool = option(False, "Orthonormalise the reflection vectors (Gram-Schmidt) before use.")
    orth_reg_weight: float = option(0.0, "lambda: weight of the orthogonality regulariser "
                                         "sum_layers |U^T U - I|_F^2 (normalised columns) added to the loss.")
    target_modules: tuple[str, ...] = option(
        ("attention_qv",), "Linear layers to adapt: preset names (attention_qv, all_linear, ...) or module patterns."
    )

    def validate(self) -> None:
        require(self.r > 0, self, "r", "must be a positive integer")
        require(self.orth_reg_weight >= 0, self, "orth_reg_weight", "must be >= 0")


class HRALinear(InputRotation):
    """``y = base(x @ H^T)``, ``H = H_1 .. H_r``, without forming ``H``."""

    def __init__(self, base_layer: nn.Module, config: HRAConfig) -> None:
        super().__init__(base_layer)
        self.hra_u = make_parameter((self.in_features, config.r), next(base_layer.parameters()))
        self.apply_GS = config.apply_GS
        paired = config.r % 2 == 0 and not config.apply_GS
        columns = torch.empty(self.in_features, config.r // 2 if paired else config.r)
        nn.init.kaiming_uniform_(columns, a=math.sqrt(5))
        with torch.no_grad():
            self.hra_u.copy_(columns.repeat_interleave(2, dim=1) if paired else columns)

    def directions(self) -> torch.Tensor:
        """``Û``: the unit reflection vectors (orthonormalised with ``apply_GS``), (in x r)."""
        u = self.hra_u.to(torch.promote_types(self.hra_u.dtype, torch.float32))  # float32 at least (half: no QR)
        if self.apply_GS:
            return torch.linalg.qr(u).Q  # Gram-Schmidt's vectors up to signs, which H does not see
        return u / u.norm(dim=0)

    def rotate(self, x: torch.Tensor, dropout: bool = False) -> torch.Tensor:
        u = self.directions()
        if self.apply_GS:
            u = u.to(x.dtype)
            return x - 2 * (x @ u) @ u.T
        # x H^T = x - x Û T^T Û^T: the product of the reflections in compact WY form
        eye = torch.eye(u.shape[1], device=u.device, dtype=u.dtype)
        t = torch.linalg.solve_triangular(eye / 2 + torch.triu(u.T @ u, diagonal=1), eye, upper=True)
        u, t = u.to(x.dtype), t.to(x.dtype)
        return x - ((x @ u) @ t.T) @ u.T

    def orthogonality(self) -> torch.Tensor:
        """``|Û^T Û - I|_F^2`` of the normalised columns."""
        u = self.hra_u.float() / self.hra_u.float().norm(dim=0)
        gram = u.T @ u
        return ((gram - torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)) ** 2).sum()


class HRAHooks(TrainingHooks):
    """The orthogonality regulariser, ``lambda`` times its sum over the adapted layers."""

    def __init__(self, model: nn.Module, config: HRAConfig) -> None:
        self.weight = config.orth_reg_weight
        self.layers = layers_in_use(model, HRALinear)

    def regularization(self, model: nn.Module) -> torch.Tensor | float:
        if self.weight == 0 or not self.layers:
            return 0.0
        return self.weight * sum(layer.orthogonality() for layer in self.layers)


def inject(model: nn.Module, config: HRAConfig) -> Injection:
    targets = find_modules(model, config.target_modules)
    for name, module in targets:
        if config.apply_GS and config.r > linear_shape(module)[0]:
            raise ConfigError(f"hra: apply_GS with r={config.r} needs r orthonormal vectors, more than layer "
                              f"{name!r}'s {linear_shape(module)[0]} input features; choose r <= {linear_shape(module)[0]}")
    if config.r % 2 or config.apply_GS:
        warnings.warn(f"HRA with {'apply_GS' if config.apply_GS else f'odd r={config.r}'}: the reflections are not "
                      f"the identity at initialisation, so the model does not start as the base", stacklevel=3)
    for name, module in targets:
        replace_module(model, name, HRALinear(module, config))
    return Injection()


register(MethodSpec(
    name="hra",
    family="reparameterized",
    config_class=HRAConfig,
    inject=inject,
    paper="Yuan et al. 2024, Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder "
          "Reflection Adaptation (arXiv 2405.17484)",
    summary="Each frozen weight times a chain of r trained Householder reflections (orthogonal, r vectors).",
    mergeable=True,
    hooks=MethodHooks(training_hooks=HRAHooks),
))

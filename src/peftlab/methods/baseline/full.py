"""Full fine-tuning: every parameter of the pretrained model trains.

The survey's baseline (Xu et al. 2023, arXiv 2312.12148, Section 5). It is registered like any
method so the assessment runs it through the same path: ``theta <- theta - lr * grad L(theta)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from peftlab.core.config import MethodConfig
from peftlab.core.registry import MethodSpec, register
from peftlab.core.state import Injection


@dataclass(frozen=True, kw_only=True)
class FullConfig(MethodConfig):
    method = "full"


def inject(model: nn.Module, config: FullConfig) -> Injection:
    return Injection(selected=[name for name, _ in model.named_parameters()])


register(MethodSpec(
    name="full",
    family="baseline",
    config_class=FullConfig,
    inject=inject,
    paper="Full fine-tuning (the survey's baseline)",
    summary="All parameters train.",
    mergeable=True,
))

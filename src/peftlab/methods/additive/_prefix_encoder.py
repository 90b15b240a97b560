"""Prefix tuning's prefixes: ``P_theta`` itself, or the embedding ``E`` and the MLP that produce it until folded.

``prefix_tuning.py`` has the paper and the formulas. This module holds the tensors and hands each attention
site its keys and values (the provider of :func:`~peftlab.methods.shared.prefix_attention.attach_prefixes`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.core.layers import AdapterModule
from peftlab.methods.shared.prefix_attention import Site


class PrefixEncoder(AdapterModule):
    """Holds ``P_theta`` (folded) or ``E`` and the MLP that produces it; provides each site's prefix."""

    def __init__(self, sites: list[Site], length: int, hidden_size: int, *, mlp_hidden_size: int | None,
                 init_std: float, keep_reparameterization: bool) -> None:
        """``P`` = ``length`` prefix positions for ``sites``; ``mlp_hidden_size=None`` trains ``P_theta`` directly."""
        super().__init__()
        self.sites = list(sites)
        self.length = length
        self.keep_reparameterization = keep_reparameterization
        self.offsets = [0]
        for site in self.sites:
            self.offsets.append(self.offsets[-1] + site.width)
        total = self.offsets[-1]
        if mlp_hidden_size is not None:
            self.embedding = nn.Parameter(torch.randn(self.length, hidden_size) * init_std)
            self.mlp_in = nn.Linear(hidden_size, mlp_hidden_size)
            self.mlp_out = nn.Linear(mlp_hidden_size, total)
            self.register_parameter("prefixes", None)
        else:
            self.prefixes = nn.Parameter(torch.randn(self.length, total) * init_std)

    @property
    def folded(self) -> bool:
        return self.prefixes is not None

    @property
    def folded_size(self) -> int:
        return self.length * self.offsets[-1]

    @property
    def uniform(self) -> bool:
        """Every site has the same shape, so a tensor index can select a site's columns (compiled blocks)."""
        return len({(site.kv_heads, site.key_dim, site.value_dim) for site in self.sites}) == 1

    def site_prefix(self, index: int | torch.Tensor) -> torch.Tensor:
        """Site ``index``'s columns of ``P_theta``: ``(P, kv_heads * (key_dim + value_dim))``; a one-element
        tensor ``index`` (uniform sites only) selects them without a Python int, for compiled blocks."""
        if isinstance(index, torch.Tensor):
            return self._selected_prefix(index)
        start, end = self.offsets[index], self.offsets[index + 1]
        if self.prefixes is not None:
            return self.prefixes[:, start:end]
        hidden = torch.tanh(self.mlp_in(self.embedding))  # (P, mlp_hidden)
        return F.linear(hidden, self.mlp_out.weight[start:end], self.mlp_out.bias[start:end])

    def _selected_prefix(self, index: torch.Tensor) -> torch.Tensor:
        width = self.sites[0].width
        if self.prefixes is not None:
            return self.prefixes.unflatten(1, (-1, width)).index_select(1, index).flatten(1)
        hidden = torch.tanh(self.mlp_in(self.embedding))
        weight = self.mlp_out.weight.unflatten(0, (-1, width)).index_select(0, index).flatten(0, 1)
        bias = self.mlp_out.bias.unflatten(0, (-1, width)).index_select(0, index).flatten()
        return F.linear(hidden, weight, bias)

    def key_values(self, index: int | torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The provider for :func:`attach_prefixes`: ``(1, kv_heads, P, head_dim)`` keys and values."""
        site = self.sites[0 if isinstance(index, torch.Tensor) else index]
        rows = self.site_prefix(index)
        split = site.kv_heads * site.key_dim
        keys = rows[:, :split].view(self.length, site.kv_heads, site.key_dim).transpose(0, 1)
        values = rows[:, split:].view(self.length, site.kv_heads, site.value_dim).transpose(0, 1)
        return keys[None], values[None]

    @torch.no_grad()
    def folded_prefixes(self) -> torch.Tensor:
        """``P_theta`` computed site by site exactly as the forward pass computes it."""
        return torch.cat([self.site_prefix(i) for i in range(len(self.sites))], dim=1)

    def fold(self) -> None:
        if self.folded:
            return
        prefixes = self.folded_prefixes()
        del self.embedding, self.mlp_in, self.mlp_out
        self.prefixes = nn.Parameter(prefixes)

"""Contrastive losses over the *global* batch, gathered across ranks with autograd.

``InfoNCE(anchor [B, D], positive [B, D], negative [B*K, D] or None)`` -> scalar. Each local anchor is scored
against all positives then all negatives of every rank (candidate order: positives of rank 0..W-1, then
negatives of rank 0..W-1), and its label is its own positive at ``rank * B + i``. Inputs are expected
L2-normalised (cosine similarity); logits are ``sim / temperature``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lco.errors import ConfigError


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [n, ...] from all ranks along dim 0, keeping gradients to every rank's input."""
    _, size = world()
    if size == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


class InfoNCE(nn.Module):
    """One-directional InfoNCE of anchors vs [positives; hard negatives]; optional symmetric term.

    temperature: 0.03 by default (the reference); ``learnable=True`` makes log(1/temperature) a parameter,
    clamped so the scale stays <= ``max_scale``. ``symmetric=True`` adds positive->anchor over global anchors
    and averages the two terms. ``gather=False`` keeps the loss local to each rank.
    """

    def __init__(self, temperature: float = 0.03, learnable: bool = False, symmetric: bool = False,
                 gather: bool = True, max_scale: float = 100.0):
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {temperature}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learnable)
        self.symmetric = symmetric
        self.gather = gather
        self.max_log_scale = math.log(max_scale)

    def scale(self) -> torch.Tensor:
        """1 / temperature as a 0-d tensor: ``exp(log_scale)`` clamped at ``max_scale``."""
        return self.log_scale.clamp(max=self.max_log_scale).exp()

    @property
    def temperature(self) -> float:
        return float(1.0 / self.scale().detach())

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None = None,
                gather: bool | None = None):
        """``gather=False`` overrides the setting for this call (validation batches may differ in size)."""
        gather = self.gather if gather is None else gather
        rank, _ = world() if gather else (0, 1)
        collect = gather_with_grad if gather else (lambda t: t)
        scale = self.scale()
        all_pos = collect(positive)
        candidates = all_pos if negative is None else torch.cat([all_pos, collect(negative)])
        labels = torch.arange(anchor.shape[0], device=anchor.device) + rank * anchor.shape[0]
        loss = F.cross_entropy(scale * anchor @ candidates.T, labels)
        if self.symmetric:
            loss = (loss + F.cross_entropy(scale * positive @ collect(anchor).T, labels)) / 2
        return loss

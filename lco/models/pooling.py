"""Pooling of decoder states into one vector per sequence.

All functions take ``hidden`` [N, T, D] (any float dtype), ``attention_mask`` [N, T] (1 = real token) and an
optional ``prefix`` [P, D] (the states of a prefix every row shares, ``lco/step/prefix.py``: part of each row's
mean; never its last token) and return [N, D] (``pool``: float32; the ``Embedder`` normalises after its
optional head). They work under left *and* right padding: the last real token is found from the mask, never
assumed to sit at position -1. ``pool_packed`` is their twin for packed passes (items end to end in a row).
"""

from __future__ import annotations

import torch

from lco.errors import ConfigError


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor,
               prefix: torch.Tensor | None = None) -> torch.Tensor:
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.bool() * positions).argmax(dim=1)  # index of the last real token per row
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _mean_of(sums: torch.Tensor, counts: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """Row means from their token sums [N, D] and counts [N, 1], a shared prefix's states counted in each."""
    if prefix is None:
        return sums / counts.clamp_min(1)
    return (sums + prefix.to(sums.dtype).sum(dim=0)) / (counts + prefix.shape[0])


def mean(hidden: torch.Tensor, attention_mask: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return _mean_of((hidden * mask).sum(1), mask.sum(1), prefix)


POOLERS = {"last": last_token, "mean": mean}


def pool_packed(hidden: torch.Tensor, item_ids: torch.Tensor, last_index: torch.Tensor,
                how: str = "last", prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Pooling of a packed pass (``lco/step/pack.py``): ``hidden`` [R, W, D], ``item_ids`` [R, W] (-1: padding),
    ``last_index`` [N] (flat index of each item's last token) -> float32 [N, D], item order. ``prefix`` [P, D]:
    the states of a prefix every item shares (``lco/step/prefix.py``), counted in each item's mean."""
    if how not in POOLERS:
        raise ConfigError(f"embed.pooling={how!r} is unknown; choose one of {sorted(POOLERS)}")
    flat = hidden.flatten(0, 1)
    if how == "last":
        return flat[last_index].float()
    n = last_index.shape[0]
    index = item_ids.flatten().masked_fill(item_ids.flatten() < 0, n)  # padding into an extra bin, dropped
    sums = flat.new_zeros((n + 1, flat.shape[1]), dtype=torch.float32).index_add_(0, index, flat.float())
    return _mean_of(sums[:n], torch.bincount(index, minlength=n + 1)[:n, None], prefix)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "last",
         prefix: torch.Tensor | None = None) -> torch.Tensor:
    if how not in POOLERS:
        raise ConfigError(f"embed.pooling={how!r} is unknown; choose one of {sorted(POOLERS)}")
    return POOLERS[how](hidden, attention_mask, prefix).float()

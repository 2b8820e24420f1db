"""Contrastive losses over the *global* batch, gathered across ranks with autograd.

``InfoNCE(anchor [B, D], positive [B, D], negative [B*K, D] or None)`` -> scalar. Each local anchor is scored
against all positives then all negatives of every rank (candidate order: positives of rank 0..W-1, then
negatives of rank 0..W-1), and its label is its own positive at ``rank * B + i``. Inputs are expected
L2-normalised (cosine similarity); logits are ``sim / temperature``.

False negatives. ``keys`` (the collator's content keys per side, ``lco.data.collate.item_key``) let the loss drop
candidates that are not negatives: with ``mask_duplicates`` a candidate with the same content as the anchor's
positive (a repeated positive, or a hard negative equal to it; gathered keys, so across ranks too) is removed from
the anchor's softmax; with ``false_negative_margin=m`` so is every candidate the anchor scores above its positive's
score minus ``m`` (cosine units; the positive-aware filter of NV-Retriever / colpali; scores taken without
gradient). The target is never masked. The symmetric term masks anchors alike (same content as the positive's own
anchor, or above its score minus ``m``). ``masked`` holds how many candidates the last call masked (summed over
the Matryoshka terms; counting them waits for the device once per step). The keys are gathered once per call.

Matryoshka (Kusupati et al. 2022; sentence-transformers' ``MatryoshkaLoss``): with ``matryoshka_dims=[d1, d2, ...]``
the loss is ``sum_k w_k * InfoNCE(x[:, :d_k] re-normalised)`` over the leading ``d_k`` dimensions (``weights``
default to 1 each), so the first ``d_k`` dimensions embed on their own; ``Embedder.encode(dim=d_k)`` serves them.
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


def gather_keys(x: torch.Tensor) -> torch.Tensor:
    """Concatenate integer keys ``x`` [n] from all ranks along dim 0 (no gradient)."""
    _, size = world()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def false_negatives(scores: torch.Tensor, labels: torch.Tensor, target_keys: torch.Tensor | None,
                    candidate_keys: torch.Tensor | None, margin: float | None) -> torch.Tensor:
    """bool [B, C]: candidates to drop from each row's softmax. ``scores`` [B, C] (cosine), ``labels`` [B] (each
    row's target column); same key as the row's target, and/or a score above the target's minus ``margin``. The
    target itself is never dropped."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if target_keys is not None:
        mask |= candidate_keys[None, :] == target_keys[:, None]
    if margin is not None:
        mask |= scores > scores.gather(1, labels[:, None]) - margin
    mask[torch.arange(len(labels), device=labels.device), labels] = False
    return mask


class InfoNCE(nn.Module):
    """One-directional InfoNCE of anchors vs [positives; hard negatives]; optional symmetric term.

    temperature: 0.03 by default (the reference); ``learnable=True`` makes log(1/temperature) a parameter,
    clamped so the scale stays <= ``max_scale``. ``symmetric=True`` adds positive->anchor over global anchors
    and averages the two terms. ``gather=False`` keeps the loss local to each rank. ``mask_duplicates`` /
    ``false_negative_margin``: see the module docstring (both off: the reference's loss).
    """

    def __init__(self, temperature: float = 0.03, learnable: bool = False, symmetric: bool = False,
                 gather: bool = True, max_scale: float = 100.0, mask_duplicates: bool = False,
                 false_negative_margin: float | None = None, matryoshka_dims: list[int] | None = None,
                 matryoshka_weights: list[float] | None = None):
        super().__init__()
        self.dims, self.weights = matryoshka(matryoshka_dims, matryoshka_weights)
        if temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {temperature}")
        if mask_duplicates not in (True, False):
            raise ConfigError(f"loss.mask_duplicates={mask_duplicates!r} is not valid: use true or false.")
        if false_negative_margin is not None and (isinstance(false_negative_margin, bool) or not isinstance(
                false_negative_margin, (int, float)) or not 0 <= false_negative_margin <= 2):
            raise ConfigError(f"loss.false_negative_margin={false_negative_margin!r} is not valid: a cosine margin "
                              "in [0, 2] (candidates scoring above the positive minus it are masked), or null.")
        self.mask_duplicates, self.margin, self.masked = mask_duplicates, false_negative_margin, 0
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

    def check_dims(self, size: int, what: str = "the embeddings") -> None:
        """Refuse Matryoshka dimensions past ``size``, the embedding size of ``what``."""
        if self.dims and max(self.dims) > size:
            raise ConfigError(f"loss.matryoshka_dims={self.dims} goes past the {size} dimensions of {what}; keep every "
                              "dimension <= it.")

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None = None,
                gather: bool | None = None, keys: dict | None = None):
        """``gather=False`` overrides the setting for this call (validation batches may differ in size).
        ``keys``: ``{"anchor", "positive", "negative"}`` int64 content keys (needed with ``mask_duplicates``)."""
        gather = self.gather if gather is None else gather
        if self.mask_duplicates and keys is None:
            raise ValueError("loss.mask_duplicates=true needs the batch's item keys (TripletCollator's 'keys')")
        dup = self.duplicate_keys(keys, negative is not None, gather) if self.mask_duplicates else None
        if not self.dims:
            return self.contrast(anchor, positive, negative, gather, dup)
        self.check_dims(anchor.shape[1])
        total, masked = 0.0, 0
        for dim, weight in zip(self.dims, self.weights):
            cut = [None if x is None else F.normalize(x[:, :dim], dim=-1) for x in (anchor, positive, negative)]
            total = total + weight * self.contrast(*cut, gather, dup)
            masked += self.masked
        self.masked = masked
        return total

    def duplicate_keys(self, keys: dict, negatives: bool, gather: bool) -> dict[str, torch.Tensor]:
        """The keys the duplicate masks compare, gathered once per call: each row's target (``positive``, and
        ``anchor`` for the symmetric term) against every candidate of the global batch."""
        collect = gather_keys if gather else (lambda t: t)
        sides = ("positive", "negative") if negatives else ("positive",)
        out = {"positive": keys["positive"], "candidates": torch.cat([collect(keys[side]) for side in sides])}
        if self.symmetric:
            out.update(anchor=keys["anchor"], all_anchors=collect(keys["anchor"]))
        return out

    def contrast(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor | None = None,
                 gather: bool = True, dup: dict | None = None):
        """The InfoNCE term of one embedding size (``forward`` without Matryoshka); ``dup``: ``duplicate_keys``."""
        rank, _ = world() if gather else (0, 1)
        collect = gather_with_grad if gather else (lambda t: t)
        masking = dup is not None or self.margin is not None
        scale = self.scale()
        all_pos = collect(positive)
        candidates = all_pos if negative is None else torch.cat([all_pos, collect(negative)])
        labels = torch.arange(anchor.shape[0], device=anchor.device) + rank * anchor.shape[0]
        logits, self.masked = scale * anchor @ candidates.T, 0
        if masking:
            targets, candidate_keys = (None, None) if dup is None else (dup["positive"], dup["candidates"])
            mask = false_negatives((anchor @ candidates.T).detach(), labels, targets, candidate_keys, self.margin)
            logits, self.masked = logits.masked_fill(mask, float("-inf")), int(mask.sum())
        loss = F.cross_entropy(logits, labels)
        if self.symmetric:
            all_anchors = collect(anchor)
            back = scale * positive @ all_anchors.T
            if masking:
                targets, candidate_keys = (None, None) if dup is None else (dup["anchor"], dup["all_anchors"])
                mask = false_negatives((positive @ all_anchors.T).detach(), labels, targets, candidate_keys,
                                       self.margin)
                back, self.masked = back.masked_fill(mask, float("-inf")), self.masked + int(mask.sum())
            loss = (loss + F.cross_entropy(back, labels)) / 2
        return loss


def matryoshka(dims, weights) -> tuple[list[int], list[float]]:
    """Checked ``loss.matryoshka_dims`` / ``matryoshka_weights`` (``([], [])`` when off)."""
    if dims is None:
        if weights is not None:
            raise ConfigError("loss.matryoshka_weights is set but loss.matryoshka_dims is null; set both or neither.")
        return [], []
    dims = list(dims)
    bad = any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims)
    if not dims or bad or len(set(dims)) < len(dims):
        raise ConfigError(f"loss.matryoshka_dims={dims} is not valid: distinct positive integers, e.g. [2048,512,128].")
    weights = [1.0] * len(dims) if weights is None else list(weights)
    if len(weights) != len(dims) or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0
                                        for w in weights):
        raise ConfigError(f"loss.matryoshka_weights={weights} is not valid: one positive number per dimension of "
                          f"loss.matryoshka_dims={dims}, or null (1 each).")
    return dims, [float(w) for w in weights]

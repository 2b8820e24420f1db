"""Geometry metrics on embedding matrices. Inputs are float tensors [N, D] (any scale; cosine is used).

- ``anisotropy(x)``: mean cosine similarity over the N(N-1) ordered pairs of distinct rows. 1 = all rows point
  the same way (collapsed); about 0 = spread out; orthogonal one-hot rows give exactly 0.
- ``mutual_knn_alignment(a, b, k)``: for paired rows (a_i, b_i), the mean over i of
  |kNN_a(i) & kNN_b(i)| / k, neighbours by cosine within each space with i itself excluded. 1 = both spaces
  have the same neighbourhoods; a random pairing scores about k / (N - 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _cosine(x: torch.Tensor) -> torch.Tensor:
    x = F.normalize(x.double(), dim=-1)
    return x @ x.T


def anisotropy(x: torch.Tensor) -> float:
    n = x.shape[0]
    if n < 2:
        raise ValueError("anisotropy needs at least 2 embeddings")
    sims = _cosine(x)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def knn_sets(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [N, k] of each row's k nearest other rows by cosine."""
    sims = _cosine(x)
    sims.fill_diagonal_(float("-inf"))
    return sims.topk(k, dim=1).indices


def mutual_knn_alignment(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired data needs the same number of rows, got {a.shape[0]} and {b.shape[0]}")
    if not 0 < k < a.shape[0]:
        raise ValueError(f"k={k} must be between 1 and N-1={a.shape[0] - 1}")
    na, nb = knn_sets(a, k), knn_sets(b, k)
    n = a.shape[0]
    hits_a = torch.zeros(n, n, dtype=torch.bool).scatter_(1, na, True)
    hits_b = torch.zeros(n, n, dtype=torch.bool).scatter_(1, nb, True)
    return float((hits_a & hits_b).sum(dim=1).double().mean() / k)

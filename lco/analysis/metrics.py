"""Geometry metrics on embedding matrices. Inputs are float tensors [N, D] (any scale; cosine is used).

- ``anisotropy(x)``: mean cosine similarity over the N(N-1) ordered pairs of distinct rows. 1 = all rows point
  the same way (collapsed); about 0 = spread out; orthogonal one-hot rows give exactly 0.
- ``mutual_knn_alignment(a, b, k)``: for paired rows (a_i, b_i), the mean over i of
  |kNN_a(i) & kNN_b(i)| / k, neighbours by cosine within each space with i itself excluded; among rows at the
  same cosine the lower index comes first, so the score is deterministic. 1 = both spaces have the same
  neighbourhoods; a random pairing scores about k / (N - 1).

Rows with a NaN or Inf entry raise ``NonFiniteEmbeddings`` naming them: a NaN cosine sorts above every number in
``topk``, so such a row would become every row's neighbour and the score would stay plausible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lco.errors import NonFiniteEmbeddings


def _cosine(x: torch.Tensor, what: str = "embeddings") -> torch.Tensor:
    bad = (~torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        raise NonFiniteEmbeddings(
            f"{what} has {len(bad)} of {x.shape[0]} rows with NaN/Inf entries (rows {bad[:8]}"
            f"{' ...' if len(bad) > 8 else ''}); no geometry metric is computed from them. The model produced them: "
            "check the checkpoint (a run whose loss diverged) or the inputs of those rows.")
    x = F.normalize(x.double(), dim=-1)
    return x @ x.T


def anisotropy(x: torch.Tensor) -> float:
    n = x.shape[0]
    if n < 2:
        raise ValueError("anisotropy needs at least 2 embeddings")
    sims = _cosine(x)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def knn_sets(x: torch.Tensor, k: int, what: str = "embeddings") -> torch.Tensor:
    """Indices [N, k] of each row's k nearest other rows by cosine, ties broken by the lower index (a stable
    sort: ``topk`` leaves the order of equal values to the kernel)."""
    sims = _cosine(x, what)
    sims.fill_diagonal_(float("-inf"))
    return sims.sort(dim=1, descending=True, stable=True).indices[:, :k]


def mutual_knn_alignment(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired data needs the same number of rows, got {a.shape[0]} and {b.shape[0]}")
    if not 0 < k < a.shape[0]:
        raise ValueError(f"k={k} must be between 1 and N-1={a.shape[0] - 1}")
    na, nb = knn_sets(a, k, "a (the first space)"), knn_sets(b, k, "b (the second space)")
    n = a.shape[0]
    hits_a = torch.zeros(n, n, dtype=torch.bool).scatter_(1, na, True)
    hits_b = torch.zeros(n, n, dtype=torch.bool).scatter_(1, nb, True)
    return float((hits_a & hits_b).sum(dim=1).double().mean() / k)

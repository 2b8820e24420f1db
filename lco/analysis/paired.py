"""Paired comparison of two measurements on the same queries (e.g. retrieval hits before and after a stage).

``paired_change(before, after, scenes)``: ``before`` and ``after`` are 0/1 (or real) outcomes [S, Q] for S
seeds (runs) scored on the same Q queries; ``scenes`` [Q] names the cluster of each query (queries about the
same scene are not independent). The per-query change is averaged over seeds, then summed per scene.
Returns ``{"change", "ci_low", "ci_high", "p", "seeds", "queries", "scenes_changed"}``: the mean change per
query, a 95% interval from a scene-cluster bootstrap, a two-sided p-value from a scene-level sign-flip
permutation test (the null: before and after are exchangeable within each scene), and how many scenes changed
at all. With few changed scenes the percentile interval is too narrow (it can exclude 0 at p > 0.1): trust p.
Seeds are averaged before resampling, so neither number includes the spread between training seeds.
"""

from __future__ import annotations

import numpy as np


def paired_change(before, after, scenes, n_resamples: int = 10000, seed: int = 0) -> dict[str, float]:
    before, after = np.atleast_2d(np.asarray(before, float)), np.atleast_2d(np.asarray(after, float))
    if before.shape != after.shape:
        raise ValueError(f"before {before.shape} and after {after.shape} must score the same runs and queries")
    scenes = np.asarray(scenes)
    if scenes.shape != (before.shape[1],):
        raise ValueError(f"scenes has {scenes.shape} entries for {before.shape[1]} queries")
    delta = (after - before).mean(axis=0)
    ids, cluster = np.unique(scenes, return_inverse=True)
    sums = np.bincount(cluster, weights=delta, minlength=len(ids))
    counts = np.bincount(cluster, minlength=len(ids)).astype(float)
    change = sums.sum() / counts.sum()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ids), size=(n_resamples, len(ids)))
    boot = sums[picks].sum(1) / counts[picks].sum(1)
    signs = rng.choice([-1.0, 1.0], size=(n_resamples, len(ids)))
    null = (signs * sums).sum(1) / counts.sum()
    p = (1 + np.sum(np.abs(null) >= abs(change) - 1e-12)) / (1 + n_resamples)
    low, high = np.quantile(boot, [0.025, 0.975])
    return {"change": float(change), "ci_low": float(low), "ci_high": float(high), "p": float(min(p, 1.0)),
            "seeds": int(before.shape[0]), "queries": int(before.shape[1]),
            "scenes_changed": int(np.count_nonzero(np.abs(sums) > 1e-12))}

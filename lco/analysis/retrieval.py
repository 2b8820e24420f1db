"""Retrieval recall for paired embeddings, via torchmetrics.

``recall_at(queries [N, D], targets [N, D], ks)`` -> ``{k: recall}``: query i's relevant item is target i and
every target is a candidate; scores are dot products (cosine for normalised inputs).
``directional_recalls(anchors, positives, anchor_modality, positive_modality)`` groups pairs by modality and
returns ``{"t2t_r1": ..., "i2t_r1": ..., "t2i_r1": ..., ...}`` for every group with at least two pairs.
``retrieval_metrics`` is both: the metrics lco reports for a validation set (training, soups).
"""

from __future__ import annotations

import torch
from torchmetrics.retrieval import RetrievalRecall

SHORT = {"text": "t", "image": "i", "audio": "a", "video": "v", "mixed": "m"}


@torch.no_grad()
def recall_at(queries: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> dict[int, float]:
    n = queries.shape[0]
    scores = (queries.float() @ targets.float().T).flatten()
    relevant = torch.eye(n, dtype=torch.bool, device=scores.device).flatten()
    indexes = torch.arange(n, device=scores.device).repeat_interleave(n)
    return {k: float(RetrievalRecall(top_k=k)(scores, relevant, indexes=indexes)) for k in ks}


def directional_recalls(anchors: torch.Tensor, positives: torch.Tensor, anchor_modality: list[str],
                        positive_modality: list[str], ks=(1, 5)) -> dict[str, float]:
    out: dict[str, float] = {}
    for a_mod, p_mod in sorted(set(zip(anchor_modality, positive_modality))):
        rows = [i for i, pair in enumerate(zip(anchor_modality, positive_modality)) if pair == (a_mod, p_mod)]
        if len(rows) < 2:
            continue
        a, p = anchors[rows], positives[rows]
        forward = f"{SHORT[a_mod]}2{SHORT[p_mod]}"
        for k, value in recall_at(a, p, ks).items():
            out[f"{forward}_r{k}"] = value
        if a_mod != p_mod:  # the reverse direction is a different task (e.g. text -> image)
            for k, value in recall_at(p, a, ks).items():
                out[f"{SHORT[p_mod]}2{SHORT[a_mod]}_r{k}"] = value
    return out


def retrieval_metrics(anchors: torch.Tensor, positives: torch.Tensor, anchor_modality: list[str],
                      positive_modality: list[str]) -> dict[str, float]:
    """``{"r1", "r5"}`` over all pairs (all anchors -> all positives) plus ``directional_recalls``' per modality
    pair: what ``val/`` holds in training and what ``lco.soup`` scores."""
    metrics = {f"r{k}": v for k, v in recall_at(anchors, positives).items()}
    metrics.update(directional_recalls(anchors, positives, anchor_modality, positive_modality))
    return metrics

"""An lco ``Embedder`` as an mteb 2.x encoder (``mteb.models.abs_encoder.AbsEncoder``).

mteb hands ``encode`` a DataLoader of dict batches: ``text`` (list of str), ``image`` (list of PIL images),
``audio`` (list of ``{"array", "sampling_rate"}``), or several of these at once for fused inputs (image + text
queries). Each row becomes one lco item, embedded with training's prompts and pooling; the result is a float32
``np.ndarray`` [N, D] in input order. Similarity is cosine (``ModelMeta.similarity_fn_name``).
"""

from __future__ import annotations

import numpy as np
from mteb.models import ModelMeta
from mteb.models.abs_encoder import AbsEncoder

MEDIA_KEYS = ("image", "audio", "video")


def batch_items(batch: dict) -> list[dict]:
    """mteb batch -> lco items (one per row), keeping only the modality columns."""
    keys = [k for k in ("text", *MEDIA_KEYS) if k in batch]
    if not keys:
        raise ValueError(f"mteb batch has none of text/image/audio/video; keys: {sorted(batch)}")
    rows = len(batch[keys[0]])
    return [{k: batch[k][i] for k in keys if batch[k][i] is not None} for i in range(rows)]


class MtebEncoder(AbsEncoder):
    """``MtebEncoder(embedder, name)``: ``name`` labels the results folder (``/`` allowed); ``dim``: serve the first
    ``dim`` dimensions, re-normalised (Matryoshka; ``Embedder.encode``)."""

    def __init__(self, embedder, name: str = "lco/embedder", revision: str = "0", batch_size: int = 32,
                 dim: int | None = None):
        self.embedder = embedder.eval()
        self.batch_size, self.dim = batch_size, dim
        self.mteb_model_meta = ModelMeta(
            loader=None, name=name, revision=revision, release_date=None, languages=None,
            n_parameters=sum(p.numel() for p in embedder.parameters()), memory_usage_mb=None, max_tokens=None,
            embed_dim=dim or embedder.out_dim,
            license=None, open_weights=None, public_training_code=None, public_training_data=None,
            framework=["PyTorch"], similarity_fn_name="cosine", use_instructions=False, training_datasets=None,
            modalities=list(embedder.family.modalities),
        )

    def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> np.ndarray:
        batch_size = kwargs.get("batch_size") or self.batch_size
        chunks = [self.embedder.encode(batch_items(batch), batch_size=batch_size, dim=self.dim) for batch in inputs]
        return np.concatenate([c.numpy() for c in chunks]) if chunks else np.zeros((0, 1), dtype=np.float32)

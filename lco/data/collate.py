"""Records -> processor batches: ``TripletCollator`` applies the ``Preprocessor`` (``lco/preprocess.py``) to the
anchor, positive and negative columns of a list of records, and gives every item a content key (``item_key``) the
loss uses to tell duplicates from negatives. Runs inside DataLoader workers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from lco.errors import MediaError, RecordError
from lco.preprocess import Preprocessor
from lco.prompts import modality


@dataclass
class TripletCollator:
    """Batch of records ``{"anchor", "positive", "negatives": [item, ...], "source"}`` -> encoded columns (items of
    a source with its own prompt, ``preprocess.source_prompts``, get it on the sides it names).

    Output: ``{"anchor": enc, "positive": enc, "negative": enc or None, "num_negatives": K, "modality": {"anchor":
    [...], "positive": [...]}, "keys": {"anchor": [B], "positive": [B], "negative": [B*K] or None}}`` where the
    negatives of anchor i are rows ``i*K ... i*K+K-1`` of ``negative``, modality names each item's kind (``text``,
    ``image``, ``audio``, ``video``, ``mixed``) and keys are int64 ``item_key``s.
    """

    preprocessor: Preprocessor

    def _items(self, records: list[dict], side: str) -> list[dict]:
        """The items of ``side`` (``anchor``, ``positive`` or ``negatives``, flattened), each tagged with its record's
        ``source`` as ``prompt`` where that source's own prompt applies to the side."""
        out = []
        for record in records:
            tag = record.get("source") if self.preprocessor.applies(record.get("source"), side) else None
            for item in record["negatives"] if side == "negatives" else [record[side]]:
                out.append({**item, "prompt": tag} if tag else item)
        return out

    def __call__(self, records: list[dict]) -> dict:
        counts = {len(r["negatives"]) for r in records}
        if len(counts) != 1:
            raise RecordError(f"every record in a batch needs the same number of negatives, got counts "
                              f"{sorted(counts)} (records: {', '.join(r.get('origin', '?') for r in records)}).")
        k = counts.pop()
        anchors, positives, negatives = (self._items(records, side) for side in ("anchor", "positive", "negatives"))
        try:
            return {
                "anchor": self.preprocessor(anchors),
                "positive": self.preprocessor(positives),
                "negative": self.preprocessor(negatives) if k else None,
                "num_negatives": k,
                "modality": {"anchor": [modality(item) for item in anchors],
                             "positive": [modality(item) for item in positives]},
                "keys": {"anchor": item_keys(anchors), "positive": item_keys(positives),
                         "negative": item_keys(negatives) if k else None},
            }
        except MediaError as err:
            raise RecordError(f"{err} (in one of: {', '.join(r.get('origin', '?') for r in records)}). The file "
                              "passed the read-time check but failed to decode; fix or remove it.") from None


def item_keys(items: list[dict]) -> torch.Tensor:
    """int64 [len(items)]: ``item_key`` of each item."""
    return torch.tensor([item_key(item) for item in items], dtype=torch.int64)


def item_key(item: dict) -> int:
    """A 64-bit key of an item's content: equal for items with the same text and the same media (a file path, or
    the bytes / pixels / samples of in-memory media), different otherwise (up to hash collisions, ~1e-19 a pair).
    The same picture under two file paths gets two keys: media files are not read here."""
    digest = hashlib.blake2b(digest_size=8)
    for field in ("text", "image", "audio", "video"):
        digest.update(field.encode() + b"\0" + _content(item.get(field)) + b"\0")
    return int.from_bytes(digest.digest(), "little", signed=True)


def _content(value) -> bytes:
    import numpy as np
    from PIL import Image

    if value is None:
        return b"-"
    if isinstance(value, str):
        return b"s" + value.encode()
    if isinstance(value, bytes):
        return b"b" + hashlib.blake2b(value).digest()
    if isinstance(value, Image.Image):
        return b"i" + f"{value.mode}{value.size}".encode() + hashlib.blake2b(value.tobytes()).digest()
    if isinstance(value, dict):  # {"array", "sampling_rate"} audio, {"bytes"/"path"} media, in key order
        return b"d" + b"".join(k.encode() + b"=" + _content(value[k]) for k in sorted(value))
    if isinstance(value, (list, tuple)):  # frame lists
        return b"l" + b"".join(_content(v) for v in value)
    array = np.ascontiguousarray(np.asarray(value))
    return b"a" + f"{array.dtype}{array.shape}".encode() + hashlib.blake2b(array.tobytes()).digest()

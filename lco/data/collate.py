"""Records -> processor batches: ``TripletCollator`` applies the ``Preprocessor`` (``lco/preprocess.py``) to the
anchor, positive and negative columns of a list of records. Runs inside DataLoader workers."""

from __future__ import annotations

from dataclasses import dataclass

from lco.errors import MediaError, RecordError
from lco.preprocess import Preprocessor
from lco.prompts import modality


@dataclass
class TripletCollator:
    """Batch of records ``{"anchor", "positive", "negatives": [item, ...]}`` -> encoded columns.

    Output: ``{"anchor": enc, "positive": enc, "negative": enc or None, "num_negatives": K, "modality": {"anchor":
    [...], "positive": [...]}}`` where the negatives of anchor i are rows ``i*K ... i*K+K-1`` of ``negative`` and
    modality names each item's kind (``text``, ``image``, ``audio``, ``video``, ``mixed``).
    """

    preprocessor: Preprocessor

    def __call__(self, records: list[dict]) -> dict:
        counts = {len(r["negatives"]) for r in records}
        if len(counts) != 1:
            raise RecordError(f"every record in a batch needs the same number of negatives, got counts "
                              f"{sorted(counts)} (records: {', '.join(r.get('origin', '?') for r in records)}).")
        k = counts.pop()
        try:
            return {
                "anchor": self.preprocessor([r["anchor"] for r in records]),
                "positive": self.preprocessor([r["positive"] for r in records]),
                "negative": self.preprocessor([neg for r in records for neg in r["negatives"]]) if k else None,
                "num_negatives": k,
                "modality": {side: [modality(r[side]) for r in records]
                             for side in ("anchor", "positive")},
            }
        except MediaError as err:
            raise RecordError(f"{err} (in one of: {', '.join(r.get('origin', '?') for r in records)}). The file "
                              "passed the read-time check but failed to decode; fix or remove it.") from None

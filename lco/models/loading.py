"""Load a trained embedder from the folder a run wrote (``<run>/adapter``), with no config needed.

``load_embedder(folder)`` reads ``lco_embedding.json`` (``lco/card.py``: family, base model, method, pooling,
prompts, media settings), loads the base model (or, for ``full``, the folder itself), puts the method's saved
weights on it and returns an ``Embedder`` in eval mode that embeds exactly as training did.
"""

from __future__ import annotations

from pathlib import Path

from lco import card as cards
from lco.models.embedder import Embedder


def load_embedder(folder: str | Path, dtype: str = "auto", device: str | None = None) -> Embedder:
    from lco.methods import METHODS

    card = cards.read(folder)
    method = METHODS[card["method"]]
    # base_model "." (an exported linear probe): the backbone is the folder itself, wherever it was moved
    own = method.saves_full_model or card["base_model"] == "."
    embedder = cards.embedder(card, str(folder) if own else card["base_model"], dtype)
    method.load(embedder, folder)
    if device is not None:
        embedder.to(device)
    return embedder.eval()

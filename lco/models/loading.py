"""Load a trained embedder from the folder a run wrote (``<run>/adapter``), with no config needed.

``load_embedder(folder)`` reads ``lco_embedding.json`` (family, base model, method, pooling, prompts, media
settings), loads the base model (or, for ``full``, the folder itself), puts the method's saved weights on it
and returns an ``Embedder`` in eval mode that embeds exactly as training did.
"""

from __future__ import annotations

import json
from pathlib import Path

from lco.errors import ConfigError
from lco.models.backbone import load_backbone
from lco.models.embedder import Embedder
from lco.prompts import Prompter

CARD = "lco_embedding.json"


def read_card(folder: str | Path) -> dict:
    path = Path(folder) / CARD
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CARD}: point at the adapter/ folder of an lco run "
                                "(logs/train/runs/<date>_<time>/adapter).")
    return json.loads(path.read_text())


def embedder_from_card(card: dict, base: str, dtype: str = "auto") -> Embedder:
    """The backbone at ``base`` with the card's prompts, pooling and media settings, without the method's weights."""
    backbone = load_backbone(card["family"], base, dtype=dtype)
    prompter = Prompter(suffixes=card["prompt_suffixes"], system=card.get("system_prompt"))
    return Embedder(backbone, pooling=card["pooling"], normalize=card["normalize"],
                    max_text_tokens=card["max_text_tokens"], prompter=prompter,
                    **{k: card[k] for k in ("image_max_size", "audio_max_seconds", "video_max_frames") if k in card})


def load_embedder(folder: str | Path, dtype: str = "auto", device: str | None = None) -> Embedder:
    from lco.methods import METHODS

    card = read_card(folder)
    if card.get("method") not in METHODS:
        raise ConfigError(f"{Path(folder) / CARD}: unknown method {card.get('method')!r}; known: {sorted(METHODS)}.")
    method = METHODS[card["method"]]
    # base_model "." (an exported linear probe): the backbone is the folder itself, wherever it was moved
    own = method.saves_full_model or card["base_model"] == "."
    embedder = embedder_from_card(card, str(folder) if own else card["base_model"], dtype)
    method.load(embedder, folder)
    if device is not None:
        embedder.to(device)
    return embedder.eval()

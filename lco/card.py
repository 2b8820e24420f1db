"""The embedding card, ``lco_embedding.json``: what a user needs to embed outside lco exactly as training did.

One JSON object beside the trained weights (a run's ``adapter/``, a soup, an export). Fields:
``method`` (``lco.methods.METHODS``) and the method's own (``Method.card``: LoRA targets...); ``family``,
``base_model`` (hub id or folder; ``"."``: the folder itself), ``pooling``, ``normalize`` (``Embedder.card``);
``max_text_tokens``, ``image_max_size``, ``audio_max_seconds``, ``video_max_frames``, ``video_folder_fps``,
``prompt_suffixes``, ``system_prompt``, ``padding_side`` (``Preprocessor.card``); ``provenance`` (lco commit, lock hash, package
versions, base model revision); and, where they apply, ``soup`` (``lco.soup``) and ``exported`` (``lco.export``).

``build(embedder, method)`` -> dict; ``write(folder, card)``; ``read(folder, label)`` -> dict, checked (the file
exists, holds a JSON object with every required field and a known method) or a ``ConfigError`` naming ``label``
(how the user named the folder: ``checkpoint=...``, ``adapter ...``); ``embedder(card, base)`` -> the
``Embedder`` the card describes, without the method's weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from lco.errors import ConfigError
from lco.provenance import environment

NAME = "lco_embedding.json"
REQUIRED = ("method", "family", "base_model", "pooling", "normalize", "max_text_tokens", "prompt_suffixes")
FIX = "point at the adapter/ folder of a finished lco run (logs/train/runs/<date>_<time>/adapter)"


def build(embedder, method, loss=None) -> dict:
    """The card of ``embedder`` trained by ``method`` (with ``loss``: its Matryoshka dimensions, if any), with this
    environment's provenance."""
    dims = {"matryoshka_dims": loss.dims} if getattr(loss, "dims", None) else {}
    return {**method.card(), **embedder.card(), **dims,
            # lco commit, lock hash and package versions; the base model's hub commit or folder + config hash
            "provenance": {**environment(), "base_model": embedder.backbone.source}}


def write(folder: str | Path, card: dict) -> Path:
    path = Path(folder) / NAME
    path.write_text(json.dumps(card, indent=2))
    return path


def read(folder: str | Path, label: str | None = None) -> dict:
    """The checked card in ``folder``; ``label`` names the folder in errors (default: the folder's path)."""
    from lco.methods import METHODS

    folder = Path(folder)
    label = label or str(folder)
    if not folder.is_dir():
        raise ConfigError(f"{label} is not a folder: {FIX}.")
    path = folder / NAME
    if not path.is_file():
        raise ConfigError(f"{label} has no {NAME}: {FIX}.")
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{label}: {NAME} is not valid JSON ({err}); copy it again from the run.") from None
    if not isinstance(card, dict):
        raise ConfigError(f"{label}: {NAME} holds {type(card).__name__}, not a JSON object; copy it again from "
                          "the run.")
    missing = [key for key in REQUIRED if key not in card]
    if missing:
        raise ConfigError(f"{label}: {NAME} lacks {missing}; it was not written by lco.train. {FIX}.")
    if card["method"] not in METHODS:
        raise ConfigError(f"{label}: {NAME} has method={card['method']!r}; lco knows {', '.join(sorted(METHODS))}. "
                          f"{FIX}.")
    return card


def embedder(card: dict, base: str, dtype: str = "auto"):
    """The backbone at ``base`` with the card's preprocessing and pooling, without the method's weights."""
    from lco.models.backbone import load_backbone
    from lco.models.embedder import Embedder
    from lco.preprocess import Preprocessor

    backbone = load_backbone(card["family"], base, dtype=dtype)
    return Embedder(backbone, Preprocessor.from_card(backbone.processor, card), pooling=card["pooling"],
                    normalize=card["normalize"])

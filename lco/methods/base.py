"""What every method shares: freezing, counting, and saving what it trained."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def count_parameters(module: nn.Module) -> dict[str, int]:
    """``{"trainable": n, "frozen": m}`` parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return {"trainable": trainable, "frozen": total - trainable}


def decoder_parameters(embedder, include_embeddings: bool = True):
    """(name, parameter) of the language decoder: its layers, final norm and (optionally) token embeddings."""
    prefix = embedder.family.lm_prefix + "."
    for name, param in embedder.model.named_parameters():
        if name.startswith(prefix) and (include_embeddings or "embed_tokens" not in name):
            yield name, param


class Method:
    """Base class. ``apply(embedder)`` sets ``requires_grad`` (and may wrap layers or add a head); ``save``
    writes what it trained as a folder usable without lco; ``card`` adds to ``lco_embedding.json``."""

    name = "base"

    saves_full_model = False  # True: ``save`` writes a whole model folder, loaded as the backbone itself
    trains_tower = False  # True: a modality tower trains, so text-only batches leave parameters unused (DDP)
    trains_base_weights = False  # True: the backbone's own weights train, impossible on a 4-bit (nf4) base

    def card(self) -> dict:
        return {"method": self.name}

    @classmethod
    def load(cls, embedder, folder: str | Path) -> None:
        """Put what ``save`` wrote in ``folder`` back onto ``embedder`` (inference; nothing trainable)."""
        raise NotImplementedError

    def apply(self, embedder) -> None:
        raise NotImplementedError

    def save(self, embedder, out_dir: str | Path) -> Path:
        """Default: ``save_pretrained`` of the (possibly peft-wrapped) model: an adapter or a model folder."""
        out = Path(out_dir)
        embedder.model.save_pretrained(out)
        return out

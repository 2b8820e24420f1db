"""What every method shares: freezing, counting, and saving what it trained."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def count_parameters(module: nn.Module) -> dict[str, int]:
    """``{"trainable": n, "frozen": m}`` parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    return {"trainable": trainable, "frozen": total - trainable}


class Method:
    """Base class. ``apply(embedder)`` sets ``requires_grad`` (and may wrap layers); ``save`` writes the result."""

    name = "base"

    def apply(self, embedder) -> None:
        raise NotImplementedError

    def save(self, embedder, out_dir: str | Path) -> Path:
        raise NotImplementedError

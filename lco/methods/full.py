"""Full fine-tuning of the language decoder (layers, final norm, token embeddings); towers stay frozen."""

from __future__ import annotations

from pathlib import Path

from lco.methods.base import Method, decoder_parameters


class FullFineTune(Method):
    name = "full"

    def __init__(self, train_embeddings: bool = True):
        self.train_embeddings = train_embeddings

    def apply(self, embedder) -> None:
        embedder.model.requires_grad_(False)
        for _, param in decoder_parameters(embedder, self.train_embeddings):
            param.requires_grad_(True)

    def save(self, embedder, out_dir: str | Path) -> Path:
        """A complete transformers folder (the whole model: towers unchanged, decoder trained)."""
        out = Path(out_dir)
        embedder.model.save_pretrained(out)
        return out

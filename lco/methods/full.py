"""Full fine-tuning of the language decoder (layers, final norm, token embeddings); towers stay frozen.

``save`` (the default) writes a complete transformers folder: towers unchanged, decoder trained.
"""

from __future__ import annotations

from pathlib import Path

from lco.methods.base import Method, decoder_parameters


class FullFineTune(Method):
    name = "full"
    saves_full_model = True

    def __init__(self, train_embeddings: bool = True):
        self.train_embeddings = train_embeddings

    def apply(self, embedder) -> None:
        embedder.model.requires_grad_(False)
        for _, param in decoder_parameters(embedder, self.train_embeddings):
            param.requires_grad_(True)

    @classmethod
    def load(cls, embedder, folder: str | Path) -> None:
        """Nothing to add: the backbone was loaded from ``folder`` itself."""

"""Full fine-tuning of the language decoder (layers, final norm, token embeddings); towers stay frozen.

``save`` (the default) writes a complete transformers folder: towers unchanged, decoder trained.
A 4-bit base (``model.quantization=nf4``) cannot be fully fine-tuned: ``check_config`` rejects it, and so does
``apply`` for a model built in code.
"""

from __future__ import annotations

from pathlib import Path

from lco.methods.base import Method, decoder_parameters
from lco.models.quantization import reject_quantized


class FullFineTune(Method):
    name = "full"
    saves_full_model = True
    trains_base_weights = True

    def __init__(self, train_embeddings: bool = True):
        self.train_embeddings = train_embeddings

    def apply(self, embedder) -> None:
        reject_quantized(embedder.model, "method=full")
        embedder.model.requires_grad_(False)
        for _, param in decoder_parameters(embedder, self.train_embeddings):
            param.requires_grad_(True)

    @classmethod
    def load(cls, embedder, folder: str | Path) -> None:
        """Nothing to add: the backbone was loaded from ``folder`` itself."""

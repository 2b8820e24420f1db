"""CLIP-style contrastive training on image-text pairs: decoder LoRA plus a trainable vision tower.

Pair it with the symmetric, learnable-temperature loss (``conf/method/clip.yaml`` selects ``loss=clip``) and
multimodal data. ``train_vision=False`` keeps the tower frozen (LoRA only). ``save`` writes one peft folder:
the LoRA weights plus the trained vision tower (peft ``modules_to_save``). A 4-bit base
(``model.quantization=nf4``) quantizes the tower too, so it needs ``train_vision=False``.
"""

from __future__ import annotations

from lco.errors import ConfigError
from lco.methods.lora import LINEAR_TARGETS, REFERENCE_TARGETS, LoRA
from lco.models.quantization import reject_quantized


class ClipStyle(LoRA):
    name = "clip"

    def __init__(self, r: int = 64, alpha: int = 128, dropout: float = 0.05,
                 targets: tuple[str, ...] | list[str] = REFERENCE_TARGETS, layers: list[int] | None = None,
                 train_vision: bool = True, linear_targets: tuple[str, ...] | list[str] = LINEAR_TARGETS):
        super().__init__(r, alpha, dropout, targets, layers, linear_targets=linear_targets)
        self.train_vision = train_vision

    @property
    def trains_tower(self) -> bool:
        """The vision tower trains, so text-only batches leave parameters unused (DDP must know)."""
        return self.train_vision

    @property
    def trains_base_weights(self) -> bool:
        """The vision tower is the backbone's own weights: impossible on a 4-bit base."""
        return self.train_vision

    def apply(self, embedder) -> None:
        towers = [t for t in embedder.family.towers if t.endswith("visual")]
        if not towers:
            raise ConfigError(f"method=clip trains on image-text pairs, but model.family={embedder.family.name} has "
                             "no vision tower; use a VL or Omni model.")
        if self.train_vision:
            reject_quantized(embedder.model, "method=clip with method.train_vision=true")
            self.modules_to_save = [towers[0].rsplit(".", 1)[-1]]
        super().apply(embedder)

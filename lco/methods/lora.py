"""LoRA on the language decoder only (the paper's method).

Targets are matched by a regex anchored on the family's decoder path (``model.language_model.layers.N...``),
so same-named projections inside the vision tower (``mlp.gate_proj``...) or audio tower never get adapters.
Towers, projectors, embeddings and norms stay frozen. ``save`` writes a standard peft adapter folder.
On a 4-bit base (``model.quantization=nf4``, QLoRA) peft wraps the bitsandbytes layers itself; peft's
``prepare_model_for_kbit_training`` is deliberately not called (why: ``lco/models/quantization.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model

from lco.methods.base import Method

REFERENCE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRA(Method):
    name = "lora"

    def __init__(self, r: int = 64, alpha: int = 128, dropout: float = 0.05,
                 targets: tuple[str, ...] | list[str] = REFERENCE_TARGETS, layers: list[int] | None = None):
        if r <= 0:
            raise ValueError(f"method.r must be a positive integer, got {r}")
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.targets = tuple(targets)
        self.layers = layers
        self.modules_to_save: list[str] | None = None  # whole modules trained and saved beside the adapter

    def target_regex(self, lm_prefix: str) -> str:
        layer = r"\d+" if self.layers is None else "|".join(str(i) for i in self.layers)
        return rf"{re.escape(lm_prefix)}\.layers\.({layer})\.(self_attn|mlp)\.({'|'.join(self.targets)})"

    def apply(self, embedder) -> None:
        embedder.model.requires_grad_(False)
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, bias="none",
                            target_modules=self.target_regex(embedder.family.lm_prefix),
                            modules_to_save=self.modules_to_save)
        try:
            embedder.model = get_peft_model(embedder.model, config)
        except ValueError as err:
            raise ValueError(f"method=lora matched no module for targets {self.targets} under "
                             f"{embedder.family.lm_prefix}.layers ({err}); check method.targets / method.layers.") from err

    @classmethod
    def load(cls, embedder, folder: str | Path) -> None:
        embedder.model = PeftModel.from_pretrained(embedder.model, str(folder))

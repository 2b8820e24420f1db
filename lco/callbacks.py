"""lco's Lightning callbacks: write the trained embedder as portable HF/peft folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl


def embedding_card(embedder, method) -> dict:
    """What a user needs to reproduce embeddings outside lco: prompts, pooling, normalisation, base model."""
    return {
        **method.card(),
        "family": embedder.family.name,
        "base_model": embedder.backbone.path,
        "pooling": embedder.pooling,
        "normalize": embedder.normalize,
        "max_text_tokens": embedder.encoder.max_text_tokens,
        "image_max_size": embedder.encoder.image_max_size,
        "audio_max_seconds": embedder.encoder.audio_max_seconds,
        "video_max_frames": embedder.encoder.video_max_frames,
        "prompt_suffixes": embedder.encoder.prompter.suffixes,
        "system_prompt": embedder.encoder.prompter.system,
        "padding_side": "left",
    }


class SaveEmbedder(pl.Callback):
    """At the end of fit, rank 0 writes ``dirpath``: the method's weights (a peft adapter folder for LoRA),
    the processor/tokenizer, and ``lco_embedding.json`` (see ``embedding_card``)."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        embedder = pl_module.embedder
        pl_module.method.save(embedder, self.dirpath)
        embedder.backbone.processor.save_pretrained(self.dirpath)
        (self.dirpath / "lco_embedding.json").write_text(json.dumps(embedding_card(embedder, pl_module.method), indent=2))

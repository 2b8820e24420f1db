"""lco's Lightning callbacks: write the trained embedder as portable HF/peft folders (``SaveEmbedder``); measure
it before and after training with the data's probe (``Probe``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytorch_lightning as pl

from lco import card
from lco.checkpointing import atomic_folder


def save_embedder(embedder, method, folder: str | Path, loss=None) -> Path:
    """Write ``folder`` as a run's ``adapter/``: the method's weights (a peft adapter folder for LoRA), the
    processor/tokenizer, and ``lco_embedding.json`` (``lco/card.py``); ``load_embedder`` reads it back.
    Atomic: written beside ``folder`` and swapped in whole, so a crash mid-save leaves the previous folder."""
    with atomic_folder(folder) as tmp:
        method.save(embedder, tmp)
        embedder.backbone.processor.save_pretrained(tmp)
        card.write(tmp, card.build(embedder, method, loss))
    return Path(folder)


class SaveEmbedder(pl.Callback):
    """At the end of fit, rank 0 writes ``dirpath`` with ``save_embedder``."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            save_embedder(pl_module.embedder, pl_module.method, self.dirpath, pl_module.loss_fn)


class Probe(pl.Callback):
    """Measures the embedder with ``probe`` (a callable ``embedder -> (metrics, per-query hits)``, e.g.
    ``lco.evaluation.toyworld.SceneProbe``) when fit starts (the base, as LoRA starts as a no-op; with
    ``ckpt_path`` the resumed model) and when training ends, while the model is still on its training device.
    Rank 0 writes ``path`` as JSON ``{"probe", "before", "after", "hits_before", "hits_after",
    "query_scenes"}``, logs ``probe/<metric>`` to the loggers and prints a before/after table of ``show``
    (default: every metric except the per-layer ones, ``<name>_l<i>``)."""

    def __init__(self, probe, path: str | Path, show: list[str] | tuple[str, ...] = ()):
        self.probe, self.path, self.show = probe, Path(path), list(show)
        self.before: tuple[dict, dict] | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.before = self.probe(pl_module.embedder)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.is_global_zero or self.before is None:
            return
        (before, hits_before), (after, hits_after) = self.before, self.probe(pl_module.embedder)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({
            "probe": repr(self.probe), "before": before, "after": after, "hits_before": hits_before,
            "hits_after": hits_after, "query_scenes": getattr(self.probe, "query_scenes", None)}, indent=1))
        for logger in trainer.loggers:
            logger.log_metrics({f"probe/{k}": v for k, v in after.items()}, step=trainer.global_step)
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{self.probe!r}", caption="before -> after training")
        for column in ("metric", "before", "after", "change"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for key in self.show or [k for k in after if not re.search(r"_l\d+$", k)]:
            table.add_row(key, f"{before[key]:.3f}", f"{after[key]:.3f}", f"{after[key] - before[key]:+.3f}")
        Console().print(table)

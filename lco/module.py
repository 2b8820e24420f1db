"""The LightningModule: embed anchor/positive/negatives, contrastive loss, optimiser, validation retrieval.

Composition only: the ``Embedder`` embeds, the ``Method`` decides what trains, the loss scores. Checkpoints
hold only trainable tensors (LoRA weights, loss scale), not the frozen multi-GB base.

Before a batch leaves the host, ``on_before_batch_transfer`` plans its forward passes: text-only sides are
fused into one pass where padding allows (``fuse_max_padding``), and with ``loss.cache_chunk`` every pass is
cut into chunks for GradCache. The plan holds Python ints only, so the step itself never syncs with the host.
"""

from __future__ import annotations

import time
from functools import partial

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from lco.analysis.retrieval import directional_recalls, recall_at
from lco.gradcache import cached_embed
from lco.guard import NonFiniteGuard, check_finite_weights
from lco.losses import InfoNCE
from lco.methods.base import Method, count_parameters
from lco.models.batching import MEDIA, TEXT_ONLY, fuse, plan_chunks, sort_by_length
from lco.models.embedder import Embedder
from lco.optim import build_scheduler


class ContrastiveModule(pl.LightningModule):
    """Inputs per step: a ``TripletCollator`` batch. Logs ``train/loss``, ``val/loss``, ``val/r1``, ``val/r5``.

    ``fuse_max_padding``: text-only anchor/positive/negative batches share one forward pass when the fused
    batch has at most this many times their own padded tokens (``None``: three passes, as the reference).
    ``max_nonfinite_skips``: NaN/Inf losses skipped (no update) before the run stops (``lco/guard.py``).
    """

    def __init__(self, embedder: Embedder, method: Method, loss: InfoNCE, optimizer: partial,
                 scheduler: dict | None = None, gradient_checkpointing: str | bool = "auto",
                 fuse_max_padding: float | None = 1.25, max_nonfinite_skips: int = 0):
        super().__init__()
        self.guard = NonFiniteGuard(max_nonfinite_skips)
        self._skip_update = False
        self.fuse_max_padding = fuse_max_padding
        self.embedder = embedder
        self.method = method
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_cfg = dict(scheduler or {})
        self.gradient_checkpointing = gradient_checkpointing
        self.strict_loading = False  # checkpoints carry trainable tensors only
        method.apply(embedder)
        embedder.train()  # from_pretrained returns eval mode; LoRA dropout must be active while training
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.validated_at: int | None = None  # global step of the last validation (lco.train validates the end)
        self.history: dict[str, list[torch.Tensor]] = {"train/loss": []}  # detached: no host sync per step
        self._t0 = None

    def parameter_counts(self) -> dict[str, int]:
        return count_parameters(self)

    def on_fit_start(self) -> None:
        counts = self.parameter_counts()
        rank_zero_info(f"lco: method={self.method.name} trains {counts['trainable']:,} parameters; "
                       f"{counts['frozen']:,} stay frozen")

    def setup(self, stage: str) -> None:
        use_gc = self.gradient_checkpointing
        if use_gc == "auto":
            use_gc = self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        if use_gc:
            self.embedder.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Collated triplets (CPU) -> ``{"passes": [...], "sides": n, "rows": B, "modality"}``: each pass is
        ``{"inputs", "sides": [side index...], "sizes", "chunks": [...] or None, "restore"}`` over sides anchor,
        positive, negative; with chunks, all text-only sides share one pass (unless ``fuse_max_padding=None``),
        sorted by length (``restore`` undoes it) and cut into chunks filled up to the footprint of ``cache_chunk``
        of its longest items."""
        if "passes" in batch:
            return batch
        sides = [batch["anchor"], batch["positive"]] + ([batch["negative"]] if batch["negative"] is not None else [])
        chunk = getattr(self.loss_fn, "cache_chunk", None)
        config = self.embedder.backbone.model.config
        token_ids = {kind: getattr(config, attr, None) for kind, (attr, _, _) in MEDIA.items()}
        # with chunks, joining text sides pads no forward pass (each chunk drops its own), so fusing joins them all
        max_padding = float("inf") if chunk and self.fuse_max_padding is not None else self.fuse_max_padding
        passes = []
        for inputs, members in fuse(sides, self.embedder.encoder.tokenizer.pad_token_id, max_padding):
            restore = None
            if chunk and set(inputs) <= TEXT_ONLY:  # sorted by length, chunks carry little padding and can be
                inputs, restore = sort_by_length(inputs)  # filled with more short rows (plan_chunks' fill)
            chunks = plan_chunks(inputs, chunk, token_ids, fill=restore is not None) if chunk else None
            passes.append({"inputs": inputs, "sides": members, "chunks": chunks, "restore": restore,
                           "sizes": [sides[i]["input_ids"].shape[0] for i in members]})
        return {"passes": passes, "sides": len(sides), "rows": batch["anchor"]["input_ids"].shape[0],
                "modality": batch["modality"]}

    def _embed_triplets(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        out: list[torch.Tensor | None] = [None] * batch["sides"]
        for step in batch["passes"]:
            if step["chunks"] is None:
                vectors = self.embedder(step["inputs"])
            else:
                trainable = [p for p in self.embedder.parameters() if p.requires_grad]
                vectors = cached_embed(self.embedder, step["inputs"], step["chunks"], trainable)
                if step["restore"] is not None:
                    vectors = vectors[step["restore"]]
            for side, part in zip(step["sides"], vectors.split(step["sizes"])):
                out[side] = part
        return out[0], out[1], out[2] if batch["sides"] == 3 else None

    def batch_loss(self, batch) -> torch.Tensor:
        """The training loss (scalar) of a planned batch (``on_before_batch_transfer``'s output, on the device)."""
        return self.loss_fn(*self._embed_triplets(batch))

    def training_step(self, batch, batch_idx):
        if self._t0 is None:
            self._t0 = time.perf_counter()
        loss = self.batch_loss(batch)
        min_over_ranks = partial(self.trainer.strategy.reduce, reduce_op="min") if self.trainer.world_size > 1 else None
        if self.guard(loss, self.global_step, min_over_ranks):
            # a zero loss on the trainable weights keeps every rank's backward (Lightning refuses None under DDP);
            # on_before_optimizer_step then drops its zero gradients, so the optimizer updates nothing
            self._skip_update = True
            return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["rows"])
        if self.loss_fn.log_scale.requires_grad:  # a fixed temperature is in config.yaml; logging costs ~1 ms
            self.log("train/temperature", 1.0 / self.loss_fn.scale().detach(), batch_size=1)
        self.history["train/loss"].append(loss.detach())
        return loss

    def validation_step(self, batch, batch_idx):
        anchor, positive, negative = self._embed_triplets(batch)
        loss = self.loss_fn(anchor, positive, negative, gather=False)
        self.log("val/loss", loss, batch_size=anchor.shape[0], sync_dist=True)
        self._val_outputs.append((anchor.detach(), positive.detach(), batch["modality"]))

    def on_validation_epoch_end(self) -> None:
        """Retrieval over the whole validation set: ``val/r1``, ``val/r5`` (all anchors -> all positives) and
        per modality pair (``val/t2t_r1``, ``val/i2t_r1``, ``val/t2i_r1``, ...)."""
        if not self._val_outputs:
            return
        anchors = torch.cat([a for a, _, _ in self._val_outputs])
        positives = torch.cat([p for _, p, _ in self._val_outputs])
        a_mod = [m for _, _, mods in self._val_outputs for m in mods["anchor"]]
        p_mod = [m for _, _, mods in self._val_outputs for m in mods["positive"]]
        self._val_outputs.clear()
        self.validated_at = self.global_step
        metrics = {f"r{k}": v for k, v in recall_at(anchors, positives).items()}
        metrics.update(directional_recalls(anchors, positives, a_mod, p_mod))
        for name, value in metrics.items():
            self.log(f"val/{name}", value, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if not self.scheduler_cfg:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = build_scheduler(optimizer, total_steps=total, **self.scheduler_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._skip_update:  # AdamW (like every torch optimizer) leaves parameters without gradients untouched
            optimizer.zero_grad(set_to_none=True)
            self._skip_update = False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        check_finite_weights(checkpoint["state_dict"], self.global_step)
        checkpoint["lco_nonfinite_skipped"] = self.guard.skipped  # the allowance is per run, resumes included

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.guard.skipped = checkpoint.get("lco_nonfinite_skipped", 0)

    def state_dict(self, *args, **kwargs):
        full = super().state_dict(*args, **kwargs)
        keep = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in full.items() if k in keep or k.endswith("log_scale")}

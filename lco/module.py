"""The LightningModule: embed anchor/positive/negatives, contrastive loss, optimiser, validation retrieval.

Composition only: the ``Embedder`` embeds, the ``Method`` decides what trains, the ``Step`` (``lco/step/``)
plans a batch and computes its loss, the loss scores. Checkpoints hold only trainable tensors (LoRA weights,
loss scale), not the frozen multi-GB base.

Before a batch leaves the host, ``on_before_batch_transfer`` has the step plan its forward passes (fused sides,
GradCache chunks: Python ints only, so the step on the device never syncs with the host).
"""

from __future__ import annotations

import time
from functools import partial

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from lco.analysis.retrieval import retrieval_metrics
from lco.guard import NonFiniteGuard, check_finite_weights
from lco.losses import InfoNCE
from lco.methods.base import Method, count_parameters
from lco.models.embedder import Embedder
from lco.step import Step, real_fraction


def checkpointing(setting: str | bool, cuda: bool, caches: bool, shares_prefix: bool = False) -> bool:
    """Whether to turn on activation checkpointing: ``setting`` (``module.gradient_checkpointing``), on a CUDA
    device or not, with GradCache or not, sharing a prefix or not (``auto``: on CUDA without GradCache and without
    ``step.share_prefix``, whose prefix keys and values a checkpointed layer would drop)."""
    return setting if setting != "auto" else cuda and not caches and not shares_prefix


class ContrastiveModule(pl.LightningModule):
    """Inputs per step: a ``TripletCollator`` batch. Logs ``train/loss``, ``val/loss``, ``val/r1``, ``val/r5``.

    ``optimizer``: trainable parameters -> optimizer; ``scheduler``: (optimizer, total_steps=) -> a per-step
    LR scheduler, or None (``conf/optim/``). ``gradient_checkpointing``: ``auto`` (on for CUDA, except under
    GradCache, whose chunks already bound activation memory: checkpointing its replay would pay a third forward),
    true, false. ``compile``: regional ``torch.compile``, each decoder layer on its own with dynamic shapes
    (the layers are alike, so one compiles and the rest reuse it; packed and padded batches of any length).
    ``max_nonfinite_skips``: NaN/Inf losses skipped (no update) before the run stops (``lco/guard.py``).
    ``conf/train.yaml``'s ``module`` node holds the last three; ``lco.train`` passes the rest.
    """

    def __init__(self, embedder: Embedder, method: Method, loss: InfoNCE, step: Step, optimizer: partial,
                 scheduler: partial | None = None, *, gradient_checkpointing: str | bool,
                 max_nonfinite_skips: int, compile: bool = False):
        super().__init__()
        self.guard = NonFiniteGuard(max_nonfinite_skips)
        self._skip_update = False
        self.embedder = embedder
        self.method = method
        self.loss_fn = loss
        self.step = step
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.gradient_checkpointing = gradient_checkpointing
        self.compile_layers, self.layers_compiled = compile, False
        self.strict_loading = False  # checkpoints carry trainable tensors only
        method.apply(embedder)
        # Matryoshka dimensions past the embedding stop here, before any step
        loss.check_dims(embedder.out_dim, f"{embedder.family.name}'s embeddings (method={method.name})")
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
        self.prepare(cuda=self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator")

    def prepare(self, cuda: bool) -> None:
        """Settings that depend on the device: the step's ``pack=auto``, activation checkpointing, compilation.
        Lightning's ``setup`` calls it; the GPU bench, which runs without a Trainer, too."""
        self.step.setup("cuda" if cuda else "cpu", self.embedder.family)
        if checkpointing(self.gradient_checkpointing, cuda, self.step.caches, self.step.share_prefix):
            self.embedder.model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        if self.compile_layers and not self.layers_compiled:  # setup runs per stage (validate, then fit)
            for layer in self.embedder.decoder_layers:
                layer.compile(dynamic=True)
            self.layers_compiled = True
            rank_zero_info(f"lco: module.compile=true: {len(self.embedder.decoder_layers)} decoder layers compiled "
                           "one by one (torch.compile, dynamic shapes); the first step compiles them")

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Collated triplets (CPU) -> the step's plan of them (``Step.plan``), made before they leave the host."""
        return self.step.plan(batch, self.embedder.pad_token_id, self.embedder.placeholder_ids,
                              self.embedder.position_rows)

    def batch_loss(self, batch) -> torch.Tensor:
        """The training loss (scalar) of a planned batch (``on_before_batch_transfer``'s output, on the device)."""
        return self.step.loss(self.embedder, self.loss_fn, batch)

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
        tokens = batch["tokens"]  # Python ints from the plan: logging them costs no device sync
        self.log("train/real_token_fraction", real_fraction(tokens), batch_size=batch["rows"])
        if self.step.share_prefix:
            self.log("train/shared_prefix_fraction", tokens["shared"] / tokens["real"], batch_size=batch["rows"])
        if self.loss_fn.mask_duplicates or self.loss_fn.margin is not None:  # candidates dropped as false negatives
            self.log("train/masked_candidates", float(self.loss_fn.masked), batch_size=batch["rows"])
        if self.loss_fn.log_scale.requires_grad:  # a fixed temperature is in config.yaml; logging costs ~1 ms
            self.log("train/temperature", 1.0 / self.loss_fn.scale().detach(), batch_size=1)
        self.history["train/loss"].append(loss.detach())
        return loss

    def validation_step(self, batch, batch_idx):
        anchor, positive, negative = self.step.embed(self.embedder, batch)
        loss = self.loss_fn(anchor, positive, negative, gather=False, keys=batch.get("keys"))
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
        for name, value in retrieval_metrics(anchors, positives, a_mod, p_mod).items():
            self.log(f"val/{name}", value, sync_dist=True)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
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

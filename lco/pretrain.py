"""``python -m lco.pretrain``: the toy world's generative stage (next-token training of a small Omni thinker).

The model learns to caption rendered scenes, to model caption text, and to answer lco's summary prompt with an
attribute word of the scene, for images and captions alike (``lco/data/documents.py``). The loss is next-token
cross-entropy over the closed toy vocabulary (every token a target can contain), which is exact for this world
and avoids a 152K-way softmax on a CPU. Validation on held-out scenes logs ``val/caption_loss`` and
``val/summary_mass_image`` / ``_text``: the probability the model puts on the scene's own attribute words at
the summary position. The trained model is written as an HF folder (``<run>/model``) that ``model.path=``
accepts, with family ``qwen2_5_omni``; ``snapshots=[N, ...]`` also writes ``<run>/model_step<N>``. When the
start is a tiny twin, ``<run>/model.packed.safetensors`` holds the trained weights in a few MB
(``lco.models.delta``): copied to ``lco/assets/toy_omni_pretrained.safetensors`` it becomes
``model=toy_omni_pretrained``. ``loss_per=document`` (default) weighs every document equally, so a one-word
summary counts as much as a 15-token caption; ``token`` averages over target tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lco.cli import entry
from lco.config import check_config
from lco.data.documents import DocumentCollator, SceneDocuments, toy_vocabulary
from lco.data.synthetic import ATTRIBUTES
from lco.errors import ConfigError
from lco.models.delta import pack
from lco.models.tiny import PRETRAINED, TINY_PREFIX, materialize
from lco.optim import build_scheduler
from lco.prompts import Prompter


class GenerativeModule(pl.LightningModule):
    """Batches from ``DocumentCollator``; trains every parameter except the audio tower."""

    def __init__(self, backbone, lr: float = 1e-3, warmup_steps: int = 50, weight_decay: float = 0.0,
                 loss_per: str = "document"):
        super().__init__()
        if loss_per not in ("document", "token"):
            raise ConfigError(f"loss_per={loss_per!r}: use 'document' or 'token'")
        self.loss_per = loss_per
        self.model = backbone.model
        self.backbone = backbone
        self.lr, self.warmup_steps, self.weight_decay = lr, warmup_steps, weight_decay
        tokenizer = getattr(backbone.processor, "tokenizer", backbone.processor)
        vocab = torch.tensor(toy_vocabulary(tokenizer))
        self.register_buffer("vocab", vocab, persistent=False)
        remap = torch.full((int(vocab.max()) + 1,), -100, dtype=torch.long)
        remap[vocab] = torch.arange(len(vocab))
        self.register_buffer("remap", remap, persistent=False)
        for name, param in self.model.named_parameters():
            param.requires_grad_("audio_tower" not in name)
        self.model.train()
        self.history: dict[str, list] = {"val": []}
        self.word_ids = {w: tokenizer(w, add_special_tokens=False)["input_ids"][0]  # first token of each word
                         for values in ATTRIBUTES.values() for w in values}

    def _logits(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits over the toy vocabulary at labelled positions [M, V], targets [M], row index [M])."""
        hidden = self.model.model(**batch["inputs"], use_cache=False).last_hidden_state
        labels = batch["labels"]
        rows, cols = torch.nonzero(labels[:, 1:] != -100, as_tuple=True)  # position t predicts token t + 1
        states = hidden[rows, cols]
        logits = states @ self.model.get_output_embeddings().weight[self.vocab].T
        return logits, self.remap[labels[rows, cols + 1]], rows

    def training_step(self, batch, batch_idx):
        logits, targets, rows = self._logits(batch)
        losses = F.cross_entropy(logits, targets, reduction="none")
        if self.loss_per == "token":
            loss = losses.mean()
        else:  # every document counts once: a one-word summary weighs as much as a 15-token caption
            counts = torch.bincount(rows)
            loss = (losses / counts[rows]).sum() / (counts > 0).sum()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["kind"]))
        return loss

    def validation_step(self, batch, batch_idx):
        logits, targets, rows = self._logits(batch)
        kinds = batch["kind"]
        caption_rows = torch.tensor([kinds[r] == "caption" for r in rows.tolist()], device=logits.device)
        if caption_rows.any():
            self.log("val/caption_loss", F.cross_entropy(logits[caption_rows], targets[caption_rows]),
                     batch_size=int(caption_rows.sum()))
        first = {}  # the first labelled position of each summary row predicts the word
        for i, r in enumerate(rows.tolist()):
            if kinds[r].startswith("summary") and r not in first:
                first[r] = i
        probs = logits.softmax(-1)
        for kind in ("summary_image", "summary_text"):
            masses = []
            for r, i in first.items():
                if kinds[r] != kind:
                    continue
                words = [self.word_ids[w] for w in batch["scene"][r].values()]
                masses.append(probs[i, self.remap[torch.tensor(words, device=logits.device)]].sum())
            if masses:
                self.log(f"val/{kind.replace('summary', 'summary_mass')}", torch.stack(masses).mean(),
                         batch_size=len(masses))

    def on_validation_epoch_end(self) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        self.history["val"].append({"step": int(self.global_step), **metrics})
        rank_zero_info(f"lco.pretrain: step {self.global_step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        # fused: one kernel over the two 152K-row embedding tables instead of ~10 passes (7x faster step on CPU)
        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay,
                                      fused=self.device.type in ("cpu", "cuda"))
        scheduler = build_scheduler(optimizer, int(self.trainer.max_steps), "cosine", self.warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class Snapshots(pl.Callback):
    """Writes the model as an HF folder ``<out>/model_step<N>`` after each global step N in ``steps``
    (checkpoints of rising generative quality for the generation-representation scaling check)."""

    def __init__(self, out: Path, steps):
        self.out, self.pending = out, set(steps)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in self.pending:  # once per step, also under gradient accumulation
            self.pending.discard(trainer.global_step)
            if trainer.is_global_zero:
                save_model(module.backbone, self.out / f"model_step{trainer.global_step}")


def save_model(backbone, folder: Path) -> None:
    backbone.model.save_pretrained(folder)
    backbone.processor.save_pretrained(folder)


def run(cfg: DictConfig) -> dict[str, float]:
    check_config(cfg)
    if cfg.model.get("quantization") is not None:
        raise ConfigError(f"model.quantization={cfg.model.quantization}: lco.pretrain trains every weight of the "
                          "backbone, which a 4-bit base cannot; set model.quantization=null.")
    pl.seed_everything(cfg.seed, workers=True)
    backbone = instantiate(cfg.model)
    collate = DocumentCollator(backbone.processor, Prompter())
    train = SceneDocuments(dict(cfg.documents), "train", cfg.seed)
    val = SceneDocuments(dict(cfg.documents), "test", cfg.seed + 1, n=cfg.val_documents)
    module = GenerativeModule(backbone, lr=cfg.lr, warmup_steps=cfg.warmup_steps, loss_per=cfg.loss_per)
    out = Path(cfg.paths.output_dir)
    trainer: pl.Trainer = instantiate(cfg.trainer, max_steps=cfg.steps, logger=False, enable_checkpointing=False,
                                      val_check_interval=cfg.val_every, check_val_every_n_epoch=None,
                                      callbacks=[Snapshots(out, cfg.snapshots)])
    trainer.fit(module, DataLoader(train, batch_size=cfg.batch_size, collate_fn=collate, num_workers=cfg.num_workers),
                DataLoader(val, batch_size=cfg.batch_size, collate_fn=collate))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        save_model(backbone, out / "model")
        if str(cfg.model.path).startswith(TINY_PREFIX):  # shippable: the trained tensors and touched token rows
            name = str(cfg.model.path)[len(TINY_PREFIX):]
            base = materialize(PRETRAINED.get(name, (name,))[0])  # continued pretraining: still vs the random init
            packed = pack(out / "model", base, out / "model.packed.safetensors")
            print(f"lco.pretrain: packed weights ({packed['bytes'] / 2**20:.1f} MiB) -> {out / 'model.packed.safetensors'}")
        (out / "pretrain_metrics.json").write_text(json.dumps(
            {"steps": trainer.global_step, **metrics, "validation": module.history["val"]}, indent=2))
        print(f"lco.pretrain: {trainer.global_step} steps, {metrics} -> {out / 'model'}")
    return metrics


main = entry("pretrain", run)


if __name__ == "__main__":
    main()

"""Generative quality of pretraining snapshots, for the scaling check in README.md.

    python experiments/toyworld/generative_quality.py <run>/model_step300 <run>/model_step600 ... <run>/model

Runs lco.pretrain's validation on each model folder: the same 256 held-out documents as the study's pretraining
run (seed=0, summary documents weighted 2), so the last snapshot reproduces that run's final validation. Prints
one markdown row per folder: caption loss and summary-word mass.
"""

import sys

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from lco.data.documents import DocumentCollator, SceneDocuments
from lco.models.backbone import load_backbone
from lco.pretrain import GenerativeModule
from lco.prompts import Prompter

print("| model | caption loss | summary mass, image | summary mass, text |\n|---|---|---|---|")
for folder in sys.argv[1:]:
    backbone = load_backbone("qwen2_5_omni", folder)
    weights = {"caption": 1.0, "text": 1.0, "summary_image": 2.0, "summary_text": 2.0}
    val = DataLoader(SceneDocuments(weights, "test", seed=1, n=256), batch_size=32,
                     collate_fn=DocumentCollator(backbone.processor, Prompter()))
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    m = trainer.validate(GenerativeModule(backbone), val, verbose=False)[0]
    print(f"| {folder} | {m['val/caption_loss']:.3f} | {m['val/summary_mass_image']:.3f} | "
          f"{m['val/summary_mass_text']:.3f} |", flush=True)

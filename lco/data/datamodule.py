"""The LightningDataModule: records from a source, a seeded validation split, collation into processor tensors.

Life cycle (see ``lco/train.py``): ``load()`` reads and validates every record *before* any model loads;
``attach(encoder)`` hands over the model's processor/prompt encoder; Lightning then asks for dataloaders.
Train batches hold ``batch_size`` triplets per device (global batch = batch_size x devices x nodes), drawn by
``GlobalBatchSampler`` so the global batches do not depend on the device count. Validation runs the whole
validation set on every rank, so retrieval metrics are exact under DDP.
"""

from __future__ import annotations

import random

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from lco.data.collate import ItemEncoder, TripletCollator
from lco.data.sampler import GlobalBatchSampler


class TripletDataModule(pl.LightningDataModule):
    def __init__(self, source, val_source=None, val_size: int = 256, batch_size: int = 32,
                 val_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 shuffle: bool = True):
        super().__init__()
        self.source, self.val_source = source, val_source
        self.val_size, self.batch_size = val_size, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.seed, self.shuffle = num_workers, seed, shuffle
        self.train_records: list[dict] | None = None
        self.val_records: list[dict] = []
        self.collator: TripletCollator | None = None

    def load(self) -> None:
        """Read and validate all records; split off ``val_size`` of them (seeded) unless ``val_source`` is set."""
        if self.train_records is not None:
            return
        records = self.source.load()
        if self.val_source is not None:
            self.train_records, self.val_records = records, self.val_source.load()
        else:
            order = list(range(len(records)))
            random.Random(self.seed).shuffle(order)
            n_val = min(self.val_size, len(records) // 5)
            self.val_records = [records[i] for i in order[:n_val]]
            self.train_records = [records[i] for i in sorted(order[n_val:])]
        GlobalBatchSampler(len(self.train_records), self.batch_size)  # fails now if not one batch fits

    def attach(self, encoder: ItemEncoder) -> None:
        self.collator = TripletCollator(encoder)

    def setup(self, stage: str | None = None) -> None:
        self.load()
        if self.collator is None:
            raise RuntimeError("TripletDataModule.attach(encoder) must be called before training starts.")

    def _loader(self, records, **sampling) -> DataLoader:
        return DataLoader(records, collate_fn=self.collator, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, **sampling)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = GlobalBatchSampler(len(self.train_records), self.batch_size, world, rank, self.seed, self.shuffle)
        return self._loader(self.train_records, batch_sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_records:
            return []
        return self._loader(self.val_records, batch_size=self.val_batch_size, shuffle=False)

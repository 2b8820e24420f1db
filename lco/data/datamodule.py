"""The LightningDataModule: named sources, a mix of them, a validation split, collation into processor tensors.

Life cycle (see ``lco/train.py``): ``load()`` reads and validates records *before* any model loads (in-memory
sources wholly; streamed sources up to their first record); ``attach(preprocessor)`` hands over the
preprocessing (``lco/preprocess.py``, built with the model's processor); Lightning then asks for dataloaders.
Train batches hold ``batch_size`` triplets per device (global batch = batch_size x devices x nodes), each global
batch from one source (see ``mixture.py``).
Validation runs the whole validation set on every rank, so retrieval metrics are exact under DDP.
"""

from __future__ import annotations

import itertools
import math
import random

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from lco.data.collate import TripletCollator
from lco.data.mixture import MixtureBatches, ResumableLoader, SourceReader
from lco.data.records import MEDIA, ErrorPolicy
from lco.errors import ConfigError, RecordError
from lco.preprocess import Preprocessor


class TripletDataModule(pl.LightningDataModule):
    """``sources``: name -> source (``TableSource``, ``SceneTriplets``...); ``weights``: name -> share of
    training steps (default: proportional to source size); ``val_source``: a separate validation source, else
    ``val_size`` records are held out (seeded) from the in-memory sources. ``steps_per_epoch``: default
    total records // global batch; required when a streamed source's size is unknown. ``probe``: an evaluation
    (``embedder -> (metrics, per-query hits)``, e.g. the toy world's ``SceneProbe``) that ``lco.train`` runs
    before and after training through ``lco.callbacks.Probe``."""

    def __init__(self, sources: dict, weights: dict | None = None, val_source=None, *, val_size: int,
                 batch_size: int, num_workers: int, val_batch_size: int | None = None, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 10_000, steps_per_epoch: int | None = None,
                 on_error: str = "raise", max_skip_fraction: float = 0.01, probe=None):
        # val_size, batch_size and num_workers have no Python default: the recipe's (conf/data/base/triplets.yaml,
        # 1024 / 33 / 4) lives in YAML only; the other defaults here equal that file's
        super().__init__()
        if not sources:
            raise RecordError("data.sources is empty: name at least one source.")
        self.sources, self.val_source = dict(sources), val_source
        for name, source in self.sources.items():
            source.name = name  # errors then name the config key to change: data.sources.<name>...
        self.weights = {str(k): float(v) for k, v in weights.items()} if weights else None
        bad = {k: v for k, v in (self.weights or {}).items() if not (math.isfinite(v) and v > 0)}
        if bad:
            raise ConfigError(f"data.weights {bad}: each source's share of training steps must be a finite number "
                              "> 0 (remove a source to leave it out).")
        unknown = set(self.weights or {}) - set(self.sources)
        if unknown:
            raise RecordError(f"data.weights names {sorted(unknown)}, which are not in data.sources "
                              f"({sorted(self.sources)}).")
        unweighted = set(self.sources) - set(self.weights or self.sources)
        if unweighted:
            raise RecordError(f"data.sources {sorted(unweighted)} have no weight: add +data.weights.<name>=w "
                              "for each (0 is not allowed; remove the source instead).")
        self.val_size, self.batch_size = val_size, batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers, self.seed, self.shuffle, self.shuffle_buffer = num_workers, seed, shuffle, shuffle_buffer
        self.steps_per_epoch = steps_per_epoch
        self.on_error, self.max_skip_fraction = on_error, max_skip_fraction
        self.probe = probe
        self.records: dict[str, list[dict]] | None = None  # in-memory sources
        self.val_records: list[dict] = []
        self.collator: TripletCollator | None = None
        self._modalities: set[str] = set()

    def _policy(self, source) -> ErrorPolicy:
        return ErrorPolicy(self.on_error, self.max_skip_fraction, source.describe())

    def _streamed(self, name: str) -> bool:
        return bool(getattr(self.sources[name], "streaming", False))

    def load(self) -> None:
        """Read and validate records; hold out the validation split. Idempotent."""
        if self.records is not None:
            return
        self.records = {}
        for name, source in self.sources.items():
            if self._streamed(name):
                first = next(iter(source.stream(self._policy(source))))  # fail fast on path/layout errors
                self._note_modalities([first])
            else:
                self.records[name] = [{**record, "source": name} for record in source.load(self._policy(source))]
                self._note_modalities(self.records[name])
        if self.val_source is not None:
            self.val_records = self.val_source.load(self._policy(self.val_source))
        else:
            self._hold_out()
        self._note_modalities(self.val_records)
        for name, size in self.sizes().items():
            if size is not None and size < self.batch_size:
                raise RecordError(f"data source {name!r} has {size} training records, fewer than one batch "
                                  f"(data.batch_size={self.batch_size}); lower data.batch_size or add data.")
        if self.steps_per_epoch is None and None in self.sizes().values():
            raise RecordError("a streamed source has no known size: set data.steps_per_epoch, or "
                              "data.sources.<name>.num_rows.")

    def _hold_out(self) -> None:
        names = [n for n in self.records if self.records[n]]
        per_source = -(-self.val_size // max(len(names), 1))
        rng = random.Random(self.seed)
        for name in names:
            records = self.records[name]
            n_val = min(per_source, len(records) // 5)
            chosen = set(rng.sample(range(len(records)), n_val))
            self.val_records += [records[i] for i in sorted(chosen)]
            self.records[name] = [r for i, r in enumerate(records) if i not in chosen]
        rng.shuffle(self.val_records)  # sources interleaved, so a limited validation still sees each

    def _note_modalities(self, records) -> None:
        for record in records:
            for item in itertools.chain((record["anchor"], record["positive"]), record.get("positives", ()),
                                        record["negatives"]):
                self._modalities.update(k for k in ("text", *MEDIA) if k in item)

    def modalities(self) -> set[str]:
        """Modalities present in the loaded records (``text``, ``image``, ``audio``, ``video``)."""
        return set(self._modalities)

    def sizes(self) -> dict[str, int | None]:
        """Training records per source (None: a stream of unknown size)."""
        return {n: len(self.records[n]) if n in self.records else self.sources[n].num_rows for n in self.sources}

    def attach(self, preprocessor: Preprocessor) -> None:
        """Collate batches with ``preprocessor`` (built by ``lco.train`` once the backbone's processor is loaded)."""
        self.collator = TripletCollator(preprocessor)

    def setup(self, stage: str | None = None) -> None:
        self.load()
        if self.collator is None:
            raise RuntimeError("TripletDataModule.attach(preprocessor) must be called before training starts.")

    def train_batches(self, world_size: int = 1, rank: int = 0) -> MixtureBatches:
        sizes = self.sizes()
        global_batch = self.batch_size * world_size
        steps = self.steps_per_epoch or sum(sizes.values()) // global_batch
        if steps < 1:
            raise RecordError(f"data: {sum(sizes.values())} training records cannot fill one global batch of "
                              f"{self.batch_size} x {world_size} devices; lower data.batch_size or add data.")
        readers = {}
        for name, source in self.sources.items():
            stream = None
            if name not in self.records:  # streamed: records carry their source's name, as loaded ones do
                stream = lambda s=source, n=name: ({**r, "source": n} for r in s.stream(self._policy(s)))  # noqa: E731
            readers[name] = SourceReader(name, self.records.get(name), stream, self.shuffle, self.shuffle_buffer)
        weights = self.weights or {n: float(sizes[n] or 1) for n in self.sources}
        return MixtureBatches(readers, weights, self.batch_size, steps, self.collator, world_size, rank, self.seed)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        epoch_fn = (lambda: trainer.current_epoch) if trainer is not None else (lambda: 0)
        return ResumableLoader(self.train_batches(world, rank), epoch_fn=epoch_fn, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_records:
            return []
        groups: dict[int, list[int]] = {}  # sources may differ in negatives per record; a batch cannot
        for i, record in enumerate(self.val_records):
            groups.setdefault(len(record["negatives"]), []).append(i)
        batches = [ids[s:s + self.val_batch_size] for ids in groups.values()
                   for s in range(0, len(ids), self.val_batch_size)]
        return DataLoader(self.val_records, batch_sampler=batches, collate_fn=self.collator,
                          num_workers=self.num_workers)

"""Homogeneous, weighted, seeded, resumable batches from one or more sources.

Each *global* batch (``batch_size`` x ``world_size`` triplets) comes from one source. The epoch's source
schedule has each source's share of steps equal to its weight (rounded), in a seeded random order; each source
is read in a seeded per-epoch order (a permutation for in-memory sources; a seeded shuffle buffer for streams)
and restarts when exhausted. Rank ``r`` takes slice ``r`` of each global batch, so the batches do not depend on
the device count. Everything is a function of ``(seed, epoch, step)``: resuming at step k yields exactly the
batches an uninterrupted run would have yielded from step k on.

DataLoader workers split the steps round-robin (worker w makes steps w, w+N, ...), so collation runs in the
workers and the loader still yields steps in order.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def source_schedule(weights: dict[str, float], steps: int, seed: int, epoch: int) -> list[str]:
    """Source name for every step of an epoch: counts proportional to weights, seeded order."""
    names = sorted(weights)
    total = sum(weights.values())
    exact = [weights[n] / total * steps for n in names]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(names)), key=lambda i: exact[i] - counts[i], reverse=True)[: steps - sum(counts)]:
        counts[i] += 1  # largest remainders
    schedule = [n for n, c in zip(names, counts) for _ in range(c)]
    random.Random(seed * 1_000_003 + epoch).shuffle(schedule)
    return schedule


def _salt(name: str) -> int:
    return zlib.crc32(name.encode())


def pick_positive(record: dict, seed: int, turn: int) -> dict:
    """``record`` with one of its ``positives`` as ``positive``: the list read in turn, from a start fixed by
    ``seed`` and the record's origin (Tevatron's rotation), so every positive is used over passes and a resumed run
    picks what an uninterrupted one did. Records with one positive are returned as they are."""
    positives = record.get("positives")
    if not positives:
        return record
    return {**record, "positive": positives[(_salt(f"{seed}:{record.get('origin')}") + turn) % len(positives)]}


class SourceReader:
    """The epoch order of one source's records. In-memory: a seeded permutation per pass. Stream: the table
    order through a seeded shuffle buffer, re-read from the start for every pass."""

    def __init__(self, name: str, records: list[dict] | None = None, stream: Callable[[], Iterator[dict]] | None = None,
                 shuffle: bool = True, shuffle_buffer: int = 10_000):
        self.name, self.records, self.stream_fn = name, records, stream
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer

    def _pass(self, seed: int) -> Iterator[dict]:
        if self.records is not None:
            order = range(len(self.records))
            if self.shuffle:
                order = torch.randperm(len(self.records), generator=torch.Generator().manual_seed(seed)).tolist()
            return (self.records[i] for i in order)
        if not self.shuffle:
            return self.stream_fn()
        return _buffered_shuffle(self.stream_fn(), self.shuffle_buffer, random.Random(seed))

    def epoch_order(self, seed: int, epoch: int) -> Iterator[dict]:
        """Endless iterator: pass 0, pass 1, ... of this source for ``epoch``."""
        passes = 0
        while True:
            empty = True
            for record in self._pass(seed * 7919 + _salt(self.name) + epoch * 104_729 + passes):
                empty = False
                yield pick_positive(record, seed, epoch + passes)
            if empty:
                raise ValueError(f"data source {self.name!r} produced no records")
            passes += 1


def _buffered_shuffle(items: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    buffer: list[dict] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer


class MixtureBatches(IterableDataset):
    """Yields this rank's collated batch for each step of the epoch (``len()`` steps)."""

    def __init__(self, readers: dict[str, SourceReader], weights: dict[str, float], batch_size: int,
                 steps_per_epoch: int, collate: Callable[[list[dict]], dict], world_size: int = 1, rank: int = 0,
                 seed: int = 0):
        self.readers, self.weights = readers, weights
        self.batch_size, self.steps_per_epoch, self.collate = batch_size, steps_per_epoch, collate
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.epoch, self.start_step = 0, 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def plan(self) -> list[tuple[str, int]]:
        """(source, index of that source's global batch) for every step of the current epoch."""
        uses: dict[str, int] = {}
        plan = []
        for name in source_schedule(self.weights, self.steps_per_epoch, self.seed, self.epoch):
            plan.append((name, uses.get(name, 0)))
            uses[name] = uses.get(name, 0) + 1
        return plan

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        plan = self.plan()
        mine = [s for s in range(self.start_step, len(plan)) if (s - self.start_step) % workers == worker]
        wanted: dict[str, dict[int, int]] = {}  # source -> {its global batch index: step}
        for step in mine:
            name, use = plan[step]
            wanted.setdefault(name, {})[use] = step
        global_batch = self.batch_size * self.world_size
        iterators = {n: self.readers[n].epoch_order(self.seed, self.epoch) for n in wanted}
        consumed = {n: 0 for n in wanted}  # global batches read so far per source
        for step in mine:
            name, use = plan[step]
            it = iterators[name]
            while consumed[name] < use:  # batches that belong to other workers or to steps before the resume
                for _ in range(global_batch):
                    next(it)
                consumed[name] += 1
            chunk = [next(it) for _ in range(global_batch)]
            consumed[name] += 1
            yield self.collate(chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size])


class ResumableLoader(DataLoader):
    """A DataLoader over ``MixtureBatches`` that Lightning checkpoints (``state_dict``: epoch and step) and
    resumes mid-epoch. ``epoch_fn`` gives the trainer's current epoch when an iteration starts."""

    def __init__(self, dataset: MixtureBatches, epoch_fn: Callable[[], int] = lambda: 0, **kwargs):
        super().__init__(dataset, batch_size=None, **kwargs)
        self.epoch_fn = epoch_fn
        self._resume_step = 0
        self._yielded = 0

    def __iter__(self):
        self.dataset.epoch = self.epoch_fn()
        self.dataset.start_step, self._resume_step = self._resume_step, 0
        self._yielded = self.dataset.start_step
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.dataset.epoch, "step": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        self._resume_step = state["step"] if state["step"] < len(self.dataset) else 0

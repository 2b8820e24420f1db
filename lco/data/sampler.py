"""Global-batch sampling: the same global batches whatever the number of devices.

Each epoch draws one permutation of the dataset from ``seed + epoch`` (or keeps file order when
``shuffle=False``), cuts it into global batches of ``batch_size * world_size`` and gives rank ``r`` the
slice ``[r * batch_size, (r + 1) * batch_size)`` of each. So 2 ranks x 4 see exactly the triplets that
1 rank x 8 sees, step for step: runs are comparable across cluster sizes and DDP can be tested against
one process. Incomplete global batches are dropped (every rank must gather equal shapes).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's list of dataset indices for each step."""

    def __init__(self, num_items: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_items, self.batch_size = num_items, batch_size
        self.world_size, self.rank, self.seed, self.shuffle = world_size, rank, seed, shuffle
        self.epoch = 0
        if len(self) == 0:
            raise ValueError(
                f"data: {num_items} training records cannot fill one global batch of "
                f"{batch_size} x {world_size} devices; lower data.batch_size or add data."
            )

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.num_items)
        global_batch = self.batch_size * self.world_size
        for step in range(len(self)):
            start = step * global_batch + self.rank * self.batch_size
            yield order[start: start + self.batch_size].tolist()

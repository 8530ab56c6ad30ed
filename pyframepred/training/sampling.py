"""Resumable, distributed data order: the clips of step ``s`` on rank ``r`` depend only on
``(seed, s, r)``, so a resumed run sees exactly the clips the uninterrupted run would have seen."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["StepSampler", "SeededClips"]


class StepSampler(Sampler):
    """Infinite, resumable and distributed sampling: the clips of step ``s`` on rank ``r`` depend
    only on ``(seed, s, r)``.

    Global sample positions ``p = s * batch * world + r * batch + j`` walk through one random
    permutation of the data set per epoch (``epoch = p // len``). Yields ``(p, index)`` pairs;
    :class:`SeededClips` seeds the clip's random choices (start frame, augmentation) with ``p``,
    so a resumed run sees exactly the clips the uninterrupted run would have seen, whatever the
    number of DataLoader workers.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1
    ):
        self.n, self.batch, self.seed = n, batch_size, seed
        self.start, self.rank, self.world = start_step, rank, world
        self._perm_epoch, self._perm = -1, None

    def _index(self, p: int) -> int:
        epoch = p // self.n
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._perm_epoch = epoch
        return self._perm[p % self.n]

    def __iter__(self):
        s = self.start
        while True:
            base = s * self.batch * self.world + self.rank * self.batch
            for j in range(self.batch):
                yield base + j, self._index(base + j)
            s += 1

    def __len__(self):  # pragma: no cover - infinite; DataLoader only needs it for len()
        return 2**62


class SeededClips(Dataset):
    """Wraps a training data set: item ``(p, i)`` is ``dataset[i]`` drawn with torch's random
    generator seeded from ``(seed, p)`` (the global generator is restored afterwards)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        p, i = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + p) % (2**63))
            return self.dataset[i]

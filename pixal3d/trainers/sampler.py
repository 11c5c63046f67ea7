"""``ResumableSampler``: a distributed, epoch-seeded, exactly resumable index sampler (TRELLIS2_SPEC §5.2).

The sampler does not advance itself while a ``DataLoader`` iterates it: loader workers prefetch indices, so a count
kept inside ``__iter__`` would run ahead of what training consumed and a resume would skip samples. The trainer calls
:meth:`ResumableSampler.advance` for every batch it actually takes and saves :meth:`state_dict`; a new iterator then
starts exactly at the next unconsumed index.

:meth:`ResumableSampler.endless` runs through the epochs without ending, so the trainer builds its ``DataLoader``
(and forks its workers) once, not once per epoch: on the small datasets of the demo model an epoch is 5-20 steps and
the per-epoch restart (fork, first batch loaded cold) more than halved the step rate.
"""
import math

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler", "BalancedResumableSampler"]


class ResumableSampler(Sampler):
    """Yields this rank's share of a per-epoch permutation, starting at the consumed position.

    Epoch ``e`` uses ``randperm(n, generator=seed + e)`` (or ``arange`` without shuffling), padded by repeating its
    head to a multiple of ``world_size``, then strided: rank ``r`` gets positions ``r, r + W, r + 2W, ...``.

    Args:
        dataset: anything with ``len``.
        shuffle: permute each epoch.
        seed: base seed (identical on every rank).
        rank, world_size: this process and the number of processes.

    Raises:
        ValueError: an empty dataset, or ``rank`` outside ``[0, world_size)``.
    """

    def __init__(self, dataset, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        n = len(dataset)
        if n == 0:
            raise ValueError("the dataset is empty: check --data_dir and the dataset filters (metadata.csv columns, "
                             "min_aesthetic_score, max_tokens)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.num_samples = math.ceil(n / world_size)  # per rank and epoch
        self.epoch = 0
        self.idx = 0  # samples of this epoch this rank has consumed

    def _epoch_indices(self, epoch=None) -> list:
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.num_samples * self.world_size
        while len(order) < total:  # pad by repeating the head (several times when n < world_size)
            order += order[: total - len(order)]
        return order[self.rank:total:self.world_size]

    def __iter__(self):
        return iter(self._epoch_indices()[self.idx:])

    def __len__(self) -> int:
        return self.num_samples - self.idx

    def advance(self, count: int) -> None:
        """Marks ``count`` more samples of the current epoch as consumed."""
        self.idx += count

    def endless(self, batch_size: int):
        """``(epoch, index)`` pairs from the consumed position on, through every later epoch, without end.

        Each epoch is cut to whole batches of ``batch_size`` (the rest is dropped, as ``drop_last`` did), so batch
        ``k`` of the stream is the one :meth:`advance_batch` expects next. The sampler itself is not changed.

        Raises:
            ValueError: an epoch holds no full batch (fewer samples per rank than ``batch_size``).
        """
        bs = int(batch_size)
        if self.num_samples < bs:
            raise ValueError(f"the dataset yields no full batch: {self.n} samples over {self.world_size} processes "
                             f"is fewer than batch_size_per_gpu={bs}")
        epoch, start = self.epoch, self.idx
        while True:
            stop = start + (self.num_samples - start) // bs * bs
            for i in self._epoch_indices(epoch)[start:stop]:
                yield epoch, i
            epoch, start = epoch + 1, 0

    def advance_batch(self, batch_size: int) -> None:
        """Marks one batch consumed; moves to the next epoch when the current one holds no further full batch
        (the bookkeeping twin of :meth:`endless`)."""
        self.advance(batch_size)
        if self.idx + batch_size > self.num_samples:
            self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Starts epoch ``epoch`` from its beginning."""
        self.epoch, self.idx = int(epoch), 0

    def state_dict(self) -> dict:
        """``{'epoch', 'idx'}`` (plus the settings, checked on load)."""
        return {"epoch": self.epoch, "idx": self.idx, "seed": self.seed, "n": self.n,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Restores the position. With a different dataset size or world size the epoch is kept and the position
        reset to its start (an exact continuation is impossible then)."""
        self.epoch = int(state["epoch"])
        same = state.get("n", self.n) == self.n and state.get("world_size", self.world_size) == self.world_size
        self.idx = int(state["idx"]) if same else 0


class BalancedResumableSampler(ResumableSampler):
    """Like :class:`ResumableSampler`, but each global batch is split across ranks by token load
    (TRELLIS2_SPEC §5.2).

    Epoch ``e`` uses the same padded permutation as :class:`ResumableSampler` (``randperm(n, seed + e)``, padded to a
    multiple of ``world_size · batch_size`` by repeating its head). The permutation is cut into global batches of
    ``world_size · batch_size`` indices; each global batch is partitioned by greedy longest-processing-time
    balancing of ``dataset.loads`` into ``world_size`` groups of exactly ``batch_size`` indices
    (:func:`pixal3d.datasets.base.load_balanced_group_indices`), and rank ``r`` takes group ``r``. Every rank
    computes the same partition, so together the ranks see each index of the epoch exactly once (plus the padding).

    Resuming works as for :class:`ResumableSampler`: ``idx`` counts this rank's consumed indices (a multiple of
    ``batch_size`` when the trainer advances by whole batches).

    Args:
        dataset: has ``len`` and ``loads`` (a sequence of non-negative numbers, one per index, e.g. voxel counts).
        batch_size: per-rank batch size.
        shuffle, seed, rank, world_size: as :class:`ResumableSampler`.

    Raises:
        ValueError: no ``loads``, a ``loads`` length different from ``len(dataset)``, negative loads, or
            ``batch_size < 1``.
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = True, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        super().__init__(dataset, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size)
        loads = getattr(dataset, "loads", None)
        if loads is None:
            raise ValueError(f"{type(dataset).__name__} has no 'loads' (per-instance token counts); use "
                             f"ResumableSampler")
        loads = [float(x) for x in loads]
        if len(loads) != self.n:
            raise ValueError(f"dataset.loads has {len(loads)} entries for {self.n} instances")
        if any(x < 0 for x in loads):
            raise ValueError("dataset.loads must be non-negative")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.loads = loads
        self.batch_size = int(batch_size)
        glob = self.batch_size * world_size
        self.num_samples = math.ceil(self.n / glob) * self.batch_size  # per rank and epoch

    def _epoch_indices(self, epoch=None) -> list:
        from pixal3d.datasets.base import load_balanced_group_indices
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        glob = self.batch_size * self.world_size
        total = self.num_samples * self.world_size
        while len(order) < total:
            order += order[: total - len(order)]
        mine = []
        for start in range(0, total, glob):
            chunk = order[start:start + glob]
            groups = load_balanced_group_indices([self.loads[i] for i in chunk], self.world_size, equal_size=True)
            mine += [chunk[j] for j in groups[self.rank]]
        return mine

    def state_dict(self) -> dict:
        """As :meth:`ResumableSampler.state_dict` plus ``batch_size``."""
        return {**super().state_dict(), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Restores the position; a different ``batch_size`` (another global-batch cut) restarts the epoch."""
        super().load_state_dict(state)
        if state.get("batch_size", self.batch_size) != self.batch_size:
            self.idx = 0

"""``ResumableSampler``: a distributed, epoch-seeded, exactly resumable index sampler (TRELLIS2_SPEC §5.2).

The sampler does not advance itself while a ``DataLoader`` iterates it: loader workers prefetch indices, so a count
kept inside ``__iter__`` would run ahead of what training consumed and a resume would skip samples. The trainer calls
:meth:`ResumableSampler.advance` for every batch it actually takes and saves :meth:`state_dict`; a new iterator then
starts exactly at the next unconsumed index.
"""
import math

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableSampler"]


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

    def _epoch_indices(self) -> list:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
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

"""A DataLoader that resumes mid-epoch where the checkpointed run stopped.

Lightning saves `state_dict()` of every stateful loader in the checkpoint and restores it on
`ckpt_path=...`. Without this, a run resumed mid-epoch would replay the epoch's first batches.
The state is (epoch, batches completed in it) read from the trainer, not from the iterator,
because Lightning prefetches one batch ahead of what was trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffle(Sampler[int]):
    """A permutation that depends only on (seed, epoch), optionally skipping its first `skip` items once.

    Lightning calls set_epoch at the start of every epoch, so a run resumed at epoch e sees exactly
    the order the uninterrupted run saw.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, int(seed), shuffle
        self.epoch, self._skip_epoch, self._skip = 0, -1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_once(self, epoch: int, n_items: int) -> None:
        self._skip_epoch, self._skip = int(epoch), int(n_items)

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        if self.epoch == self._skip_epoch:
            order, self._skip_epoch, self._skip = order[self._skip:], -1, 0
        return iter(order)

    def __len__(self) -> int:
        return self.n


class ResumableDataLoader(DataLoader):
    """DataLoader over an EpochShuffle sampler with Lightning's `state_dict` / `load_state_dict` interface."""

    def __init__(self, *args, progress: Callable[[], tuple[int, int]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochShuffle):
            raise TypeError("ResumableDataLoader needs an EpochShuffle sampler")
        # progress() -> (epoch, batches completed in it), read from the trainer at checkpoint time.
        self._progress = progress

    def state_dict(self) -> dict:
        epoch, done = self._progress() if self._progress else (self.sampler.epoch, 0)
        return {"epoch": int(epoch), "batches_done": int(done), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.skip_once(state["epoch"], state["batches_done"] * state["batch_size"])

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
    """A permutation that depends only on (seed, epoch).

    Lightning calls set_epoch at the start of every epoch, so a run resumed at epoch e sees exactly
    the order the uninterrupted run saw.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class ResumableDataLoader(DataLoader):
    """DataLoader with Lightning's `state_dict` / `load_state_dict` interface.

    The skip is in whole batches of this loader, after any distributed split of the sampler, so it
    holds for one process or many. Skipped batches are only collated, never trained on.
    """

    def __init__(self, *args, progress: Callable[[], tuple[int, int]] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        # progress() -> (epoch, batches completed in it), read from the trainer at checkpoint time.
        self._progress = progress
        self._skip_epoch, self._skip_batches = -1, 0

    def state_dict(self) -> dict:
        epoch, done = self._progress() if self._progress else (0, 0)
        return {"epoch": int(epoch), "batches_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        self._skip_epoch, self._skip_batches = int(state["epoch"]), int(state.get("batches_done", 0))

    def __iter__(self):
        it = super().__iter__()
        return self._skipping(it) if self._skip_batches else it

    def _skipping(self, it):
        # Decided at the first next(), not at iter(): Lightning creates the iterator before it sets
        # the resumed epoch on the sampler (also on its distributed wrapper).
        if getattr(self.sampler, "epoch", None) == self._skip_epoch:
            skip, self._skip_epoch, self._skip_batches = self._skip_batches, -1, 0
            for _ in range(skip):
                next(it, None)
        yield from it

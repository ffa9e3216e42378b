"""Batches straight from in-memory tensors.

A torch DataLoader over a TensorDataset indexes and collates one sample at a time; slicing a
shuffled index per batch does the same work in one gather, which matters when a study runs
thousands of client epochs. Every order is drawn from a generator seeded by (seed, round,
client), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator

import torch

from pfl.data.types import Split


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any parts (Python's hash() is salted per process)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


#: how training beats are drawn: `uniform` (each once per epoch, shuffled) or `balanced`
#: (with replacement, every class equally often: a rare class is seen many times per epoch)
SAMPLINGS = ("uniform", "balanced")


class BatchLoader:
    """Shuffled mini-batches of a split; a new order each epoch from its own generator.

    With `group=k`, yields tuples of k disjoint batches (Per-FedAvg's meta-steps), dropping the
    remainder of the epoch that cannot fill a whole group. An epoch has as many batches with
    `sampling=balanced` as without.
    """

    def __init__(self, split: Split, batch_size: int, seed: int, shuffle: bool = True, group: int = 1,
                 drop_last: bool = False, sampling: str = "uniform", augment: Callable | None = None):
        if sampling not in SAMPLINGS:
            from pfl.errors import ConfigError

            raise ConfigError("federation.sampling", sampling, " | ".join(SAMPLINGS))
        self.split, self.batch_size, self.shuffle, self.group = split, batch_size, shuffle, group
        self.drop_last = drop_last or group > 1
        self.generator = torch.Generator().manual_seed(seed)
        self.sampling = sampling
        # Augmentation draws from a generator of its own, so the batches' order does not
        # depend on it; on the split's device, so a GPU run draws there.
        self.augment = augment
        if augment is not None:
            self.augment_generator = torch.Generator(device=split.x.device).manual_seed(derive_seed(seed, "augment"))

    def _balanced_weights(self) -> torch.Tensor:
        """Per beat 1 / (beats of its class): every class present is drawn equally often."""
        y = self.split.y.cpu()  # weights for torch.multinomial with this CPU generator
        counts = torch.bincount(y).double()
        return 1.0 / counts[y]

    def _order(self, n: int) -> torch.Tensor:
        if self.sampling == "balanced" and n:
            w = self._balanced_weights()
            if self.group == 1:
                return torch.multinomial(w, n, replacement=True, generator=self.generator)
            # Per-FedAvg's batches of one meta-step must stay disjoint: each group is drawn
            # without replacement (close to balanced while the rare classes last).
            span = self.batch_size * self.group
            return torch.cat([torch.multinomial(w, span, replacement=False, generator=self.generator)
                              for _ in range(len(self))]) if len(self) else torch.zeros(0, dtype=torch.long)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def __len__(self) -> int:
        n = len(self.split)
        if self.group > 1:
            return n // (self.batch_size * self.group)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator:
        n = len(self.split)
        order = self._order(n)
        x, y, bs = self.split.x, self.split.y, self.batch_size
        if self.group == 1:
            for i in range(len(self)):
                idx = order[i * bs:(i + 1) * bs]
                yield self._x(x, idx), y[idx]
            return
        span = bs * self.group
        for i in range(len(self)):
            chunk = order[i * span:(i + 1) * span]
            yield tuple((self._x(x, idx), y[idx]) for idx in chunk.split(bs))

    def _x(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        batch = x[idx]
        return batch if self.augment is None else self.augment(batch, self.augment_generator)

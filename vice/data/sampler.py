"""A distributed sampler that resumes the exact remaining order of an interrupted epoch.

It yields (epoch, index) keys. The trainer calls `advance(n)` after it has consumed n samples
(not when the loader prefetches them), so `state_dict()` always describes what the optimizer
has actually seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class ResumableDistributedSampler(torch.utils.data.Sampler):
    """Shuffled, rank-sharded order per epoch; state = (epoch, position, seed).

    Each epoch's permutation depends only on (seed, epoch). With drop_last every rank gets
    floor(length / num_replicas) samples, otherwise the order is padded by wrapping around.
    """

    def __init__(
        self,
        length: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if length < 1:
            raise ValueError(f"sampler needs a non-empty data set, got length {length}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        if drop_last and length < num_replicas:
            raise ValueError(
                f"data set of {length} images is smaller than the world size {num_replicas}"
            )
        self.length = length
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # samples of this epoch already consumed by this rank

    @property
    def per_rank(self) -> int:
        if self.drop_last:
            return self.length // self.num_replicas
        return -(-self.length // self.num_replicas)

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's full index order for `epoch`."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.length, generator=gen).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.num_replicas
        order = (order * (total // self.length + 1))[:total]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in self.epoch_order(epoch)[self.position :]:
            yield (epoch, index)

    def __len__(self) -> int:
        return self.per_rank - self.position

    def set_epoch(self, epoch: int) -> None:
        """Starts `epoch` from its beginning (call before iterating a new epoch)."""
        self.epoch = epoch
        self.position = 0

    def advance(self, num_samples: int) -> None:
        """Marks samples as consumed by training."""
        self.position = min(self.position + num_samples, self.per_rank)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"checkpoint sampler seed {state['seed']} != data.seed {self.seed}: resuming "
                f"would change the data order; keep data.seed as it was"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

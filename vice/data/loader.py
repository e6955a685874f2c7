"""DataLoader construction: resumable sampler, the builder's collate, deterministic workers."""

from __future__ import annotations

import random

import numpy as np
import torch

from vice.config import DataConfig
from vice.data.sampler import ResumableDistributedSampler
from vice.signals import ignore_stop_signals


def seed_worker(worker_id: int) -> None:
    """Seeds the global RNGs of a loader worker from torch's per-worker seed.

    Samples never read global RNGs (they use generators keyed by (seed, epoch, index)); this
    only keeps third-party code that does deterministic too. One thread per worker: the
    workers already use every core between them. Stop signals are the trainer's to handle.
    """
    ignore_stop_signals()
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)


def build_pretrain_loader(
    dataset: torch.utils.data.Dataset, cfg: DataConfig, rank: int = 0, world_size: int = 1
) -> tuple[torch.utils.data.DataLoader, ResumableDistributedSampler]:
    """Loader over `dataset` (a sample builder's, with its `collate`) for one rank, and the
    sampler whose state the trainer saves."""
    sampler = ResumableDistributedSampler(
        len(dataset), num_replicas=world_size, rank=rank, seed=cfg.seed
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        collate_fn=dataset.collate,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=False,  # the sampler's position changes between epochs/resumes
        prefetch_factor=2 if cfg.num_workers > 0 else None,
    )
    return loader, sampler

"""One rank of the twin method's DDP test: `torchrun ... twin_worker.py <run_dir> <dtype>`
(jobs/pretrain.py's call of the trainer, with the test's method registered first)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from tests.methods.twin import register
from vice import dist
from vice.pipeline import load_config
from vice.train.trainer import train


def main(argv: list[str]) -> int:
    register()
    run_dir, dtype = Path(argv[0]), getattr(torch, argv[1])
    torch.set_default_dtype(dtype)
    try:
        train(load_config(run_dir), run_dir)
    finally:
        dist.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One rank of a DDP-equivalence test: `torchrun ... ddp_worker.py <run_dir> <dtype> [module]`
(`module`: e.g. tests.methods.twin, whose `register()` adds a test-only method first).

jobs/pretrain.py's call of the trainer (config from the run directory, then `train`), with
torch's default dtype set first: under float64 every parameter, activation and gradient of
the trainer's path is float64 (the data pipeline's float32 views are cast at the network).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from vice import dist
from vice.pipeline import load_config
from vice.train.trainer import train


def main(argv: list[str]) -> int:
    run_dir, dtype = Path(argv[0]), getattr(torch, argv[1])
    if len(argv) > 2:  # a module defining a test method: its register() adds it to METHODS
        importlib.import_module(argv[2]).register()
    torch.set_default_dtype(dtype)
    try:
        train(load_config(run_dir), run_dir)
    finally:
        dist.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

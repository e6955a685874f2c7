"""One training rank: `torchrun ... jobs/pretrain.py <run_dir>` (config from the run dir)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vice import dist
from vice.pipeline import load_config
from vice.train.trainer import train


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pretrain.py <run_dir>", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_dir = Path(argv[0])
    cfg = load_config(run_dir)
    try:
        train(cfg, run_dir)
    finally:
        dist.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

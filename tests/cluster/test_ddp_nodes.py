"""DDP across SLURM nodes is right: a 2-node run (one process per node, torchrun's c10d
rendezvous, gloo) after one step equals one local process with the same global batch and data
order, within float32's rounding band (tests/train/test_ddp.py explains the band and shows
the two agree to ~1e-13 in float64)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vice.hydra_schema import register, to_config
from vice.pipeline import load_config

from ..train.test_ddp import _initial_weights, _update_differences
from .test_slurm_launch import ROOT, _launch

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
RUN = ("experiment=smoke", "trainer.max_steps=1", "eval.enabled=false", "trainer.log_every=1")


def test_two_nodes_track_one_process(cluster, tmp_path):
    two = _launch(tmp_path / "two", *RUN, "trainer.nodes=2", "data.batch_size=1",
                  "launch.wait=true", "hydra.launcher.poll_s=2", timeout=900)  # fmt: skip
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert "2 nodes x 1 processes" in two.stdout
    one_dir = tmp_path / "one" / "run"
    one = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "launch.py"), f"hydra.run.dir={one_dir}",
         f"tracking.uri=sqlite:///{tmp_path}/one.db", *RUN, "data.batch_size=2"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    register()
    cfg = load_config(one_dir)
    assert to_config({}).trainer.seed == cfg.trainer.seed
    weights = [
        torch.load(d / "model_final.pt", weights_only=True)
        for d in (one_dir, tmp_path / "two" / "sweep" / "0")
    ]
    rel = _update_differences(*weights, _initial_weights(cfg, torch.float32))
    worst = max(rel, key=rel.get)
    assert rel[worst] < 0.05, (worst, rel[worst])

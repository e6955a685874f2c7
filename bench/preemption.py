"""What a preemption costs, measured.

    python bench/preemption.py                 # checkpoint save/load cost (in process)
    python bench/preemption.py --cluster       # + a real requeue on the local SLURM cluster

In process, for the smoke model and the published ResNet-50 DeepLabV3+ model: seconds to save
one complete checkpoint (atomic: temp dir, fsync, checksum, rename) and to load it back, and
the step-time stall of periodic saves at the configured interval relative to a step.

On the cluster (tools/slurm_cluster.py up --nodes 2): a 2-node smoke run is requeued with
`scontrol requeue` at a step; measured are seconds from the signal to the checkpoint being
saved and to the job leaving RUNNING, seconds from the restart (the job running again) to the
first resumed step, and steps of work lost (resumed step vs the step the signal arrived at).

The last lines are `key=value` figures; the recommended `cluster.signal_delay_s` and the
partition GraceTime come from the measured save time (x3, plus the worst step time, plus a
margin for the interpreter to shut down).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from vice.config import ModelConfig, OptimConfig
from vice.models import build_model
from vice.run_dir import RunDir
from vice.train.checkpoint import CheckpointManager
from vice.train.optim import build_optimizer

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "smoke (R18 DeepLabV3+ OS16, K=16)": ModelConfig(
        backbone="resnet18", output_stride=16, decoder="deeplabv3plus"
    ),
    "published (R50 DeepLabV3+ OS8, K=100)": ModelConfig(
        backbone="resnet50", output_stride=8, decoder="deeplabv3plus"
    ),
}


def checkpoint_cost(model_cfg: ModelConfig, repeats: int = 3) -> dict[str, float]:
    model = build_model(model_cfg)
    optimizer = build_optimizer(model, OptimConfig())
    # one step so the optimizer holds its momentum buffers, as in a real checkpoint
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1}
    saves, loads = [], []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        manager = CheckpointManager(Path(tmp) / "checkpoints", keep=2)
        for i in range(repeats):
            t0 = time.perf_counter()
            path = manager.save(state, i + 1)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            manager.load_latest()
            loads.append(time.perf_counter() - t0)
        size = sum(f.stat().st_size for f in path.iterdir())
    return {"save_s": statistics.median(saves), "load_s": statistics.median(loads),
            "mb": size / 2**20}  # fmt: skip


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _state(job: str) -> str:
    out = _run("squeue", "-h", "-j", job, "-o", "%T|%r").stdout.strip()
    return out or "GONE|"


def cluster_requeue(workdir: Path, at_step: int = 4) -> dict[str, float]:
    sweep = workdir / "sweep"
    launch = _run(
        sys.executable, str(ROOT / "jobs" / "launch.py"), "-m", f"hydra.sweep.dir={sweep}",
        f"tracking.uri=sqlite:///{workdir}/mlflow.db", "experiment=smoke", "trainer.nodes=2",
        "trainer.max_steps=12", "trainer.log_every=1", "trainer.checkpoint_every=100",
        "eval.enabled=false", cwd=workdir, timeout=300,
    )  # fmt: skip
    if launch.returncode != 0:
        raise SystemExit(f"launch failed:\n{launch.stdout}\n{launch.stderr}")
    job = re.search(r"pretrain job: (\d+)", launch.stdout).group(1)
    run_dir = sweep / "0"
    out_log = run_dir / "slurm" / f"{job}_0_log.out"

    def steps() -> list[int]:
        text = "".join(p.read_text() for p in (run_dir / "slurm").glob("*_log.out"))
        return [int(s) for s in re.findall(r"^step (\d+)/12 ", text, re.M)]

    try:
        while max(steps(), default=0) < at_step:
            time.sleep(0.5)
        signalled_at_step = max(steps())
        t_signal = time.time()
        _run("scontrol", "requeue", job, check=True)
        # the job has exited when SLURM no longer lists it running or completing (its
        # processes are gone): requeued, it is PENDING again
        while _state(job).startswith(("RUNNING", "COMPLETING")):
            time.sleep(0.2)
        t_exit = time.time()
        stops_file = RunDir(run_dir).stops
        if not stops_file.exists():
            raise SystemExit(f"the job exited without recording a stop: see {run_dir}/slurm")
        stops = [json.loads(x) for x in stops_file.read_text().splitlines()]
        t_saved, stop_step = stops[0]["time"], stops[0]["step"]
        # the restart: release SLURM's BeginTime delay, then time the first resumed step
        while not _state(job).startswith("RUNNING"):
            if _state(job).endswith("BeginTime"):
                _run("scontrol", "update", f"jobid={job}", "starttime=now")
            time.sleep(0.2)
        t_restart = time.time()
        while max(steps(), default=0) <= stop_step:
            time.sleep(0.2)
        t_first = time.time()
        resumed = re.search(r"resumed from .* at step (\d+)", out_log.read_text())
        resumed_step = int(resumed.group(1)) if resumed else 0
    finally:
        _run("scancel", job)
    return {
        "signal_to_saved_s": t_saved - t_signal,
        "signal_to_exit_s": t_exit - t_signal,
        "restart_to_first_step_s": t_first - t_restart,
        "steps_lost": max(0, signalled_at_step - resumed_step),
        "signal_step": signalled_at_step,
        "stop_step": stop_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cluster", action="store_true", help="also requeue a real job")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps")
    parser.add_argument("--step-s", type=float, default=0.5, help="a step's seconds (GPU)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    worst_save = 0.0
    print(f"{'model':40s} {'MB':>7s} {'save s':>7s} {'load s':>7s} {'stall':>7s}")
    for name, cfg in MODELS.items():
        cost = checkpoint_cost(cfg)
        stall = cost["save_s"] / (args.checkpoint_every * args.step_s)
        worst_save = max(worst_save, cost["save_s"])
        print(f"{name:40s} {cost['mb']:7.1f} {cost['save_s']:7.2f} {cost['load_s']:7.2f} "
              f"{stall:7.2%}")  # fmt: skip
    print(f"(stall: one save per {args.checkpoint_every} steps of {args.step_s} s; saves are "
          "synchronous, every rank waits for rank 0's write)")  # fmt: skip
    figures = {"checkpoint_save_s": worst_save}
    if args.cluster:
        with tempfile.TemporaryDirectory() as tmp:
            figures.update(cluster_requeue(Path(tmp)))
    # A stop waits for the current step, then saves: 3x the save (slow shared file systems)
    # + a step + 30 s for the processes to exit, rounded up to 30 s.
    recommended = int(math.ceil((3 * worst_save + args.step_s + 30) / 30) * 30)
    figures["recommended_signal_delay_s"] = recommended
    figures["recommended_grace_time_s"] = recommended
    for key, value in figures.items():
        print(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}")


if __name__ == "__main__":
    main()

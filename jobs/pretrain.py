"""One training rank: `torchrun ... jobs/pretrain.py <run_dir>` (config from the run dir).

Stop signals (SIGTERM on preemption or requeue, SIGUSR2 before the time limit, SIGINT) only
set a flag; the trainer saves at the next step boundary with every other rank and returns,
and this process exits 0. `<run_dir>/stops.jsonl` tells the job's supervisor it was a stop.
The flag is set up before anything heavy is imported: a signal during the seconds of imports
and setup of a restart (on a busy node, tens of seconds) would otherwise kill the rank with
the signal's default action, and the job would read as failed instead of stopped.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vice.train.stop import StopSignals  # light: no torch yet

# SLURM's view of the job, as MLflow tags (names: what `squeue`/`sacct` call them)
SLURM_TAGS = {
    "SLURM_JOB_ID": "slurm.pretrain_job_id",
    "SLURM_RESTART_COUNT": "slurm.restart_count",
    "SLURM_JOB_NUM_NODES": "slurm.nodes",
    "SLURM_JOB_NODELIST": "slurm.nodelist",
    "SLURM_JOB_PARTITION": "slurm.partition",
}


def slurm_tags(environ: dict[str, str]) -> dict[str, str]:
    tags = {tag: environ[var] for var, tag in SLURM_TAGS.items() if environ.get(var)}
    if "SLURM_JOB_ID" in environ:
        tags.setdefault("slurm.restart_count", "0")
    if environ.get("LOCAL_WORLD_SIZE"):
        tags["processes_per_node"] = environ["LOCAL_WORLD_SIZE"]
    return tags


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pretrain.py <run_dir>", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_dir = Path(argv[0])
    with StopSignals() as stop:
        from vice import dist
        from vice.pipeline import load_config
        from vice.tracking import build_tracker
        from vice.train.trainer import train

        cfg = load_config(run_dir)
        is_main = int(os.environ.get("RANK", "0")) == 0
        tracker = build_tracker(cfg.tracking, run_dir, is_main)
        tracker.set_tags(slurm_tags(dict(os.environ)))
        try:
            summary = train(cfg, run_dir, tracker, should_stop=stop)
            if summary["status"] == "stopped":
                # One line per rank in the .err log: a stop, not an error (jobs/torchrun_agent.py
                # keeps torchrun's own shutdown to one line too).
                print(
                    f"rank {os.environ.get('RANK', '0')}: stopped by {summary['signal']} at step "
                    f"{summary['steps']}, checkpoint saved",
                    file=sys.stderr,
                    flush=True,
                )
        finally:
            tracker.close()
            dist.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

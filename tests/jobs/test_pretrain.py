"""jobs/pretrain.py: SLURM's view of the job becomes MLflow tags; a stop signal is taken from
the process's first moments."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.pretrain import slurm_tags
from vice.pipeline import write_config
from vice.train.checkpoint import CheckpointManager
from vice.train.stop import read_stops

from ..train.test_trainer import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def test_slurm_tags_from_the_environment():
    env = {
        "SLURM_JOB_ID": "93",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_JOB_PARTITION": "batch",
        "LOCAL_WORLD_SIZE": "4",
    }
    assert slurm_tags(env) == {
        "slurm.pretrain_job_id": "93",
        "slurm.restart_count": "0",  # SLURM sets it only after a requeue
        "slurm.nodes": "2",
        "slurm.nodelist": "n[1-2]",
        "slurm.partition": "batch",
        "processes_per_node": "4",
    }
    assert slurm_tags({**env, "SLURM_RESTART_COUNT": "3"})["slurm.restart_count"] == "3"
    assert slurm_tags({}) == {}


# Runs jobs/pretrain.py with SIGUSR2 sent to itself the moment it starts importing torch.
SIGNAL_IN_IMPORTS = """
import os, runpy, signal, sys

class SignalAtTorch:
    fired = False

    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not self.fired:
            self.fired = True
            os.kill(os.getpid(), signal.SIGUSR2)
        return None

sys.meta_path.insert(0, SignalAtTorch())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_time_limit_signal_during_imports_is_a_stop_not_a_death(tmp_path):
    """SLURM's time-limit signal can land while a restart is still importing torch (seconds;
    tens on a busy node). The rank takes it from its first moments and stops before the first
    step, saved, instead of dying of SIGUSR2's default action (the job read as failed)."""
    write_config(tiny_config(steps=4), tmp_path)
    script = str(ROOT / "jobs" / "pretrain.py")
    out = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_IMPORTS, script, str(tmp_path)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stopping at step 0 (SIGUSR2): checkpoint saved" in out.stdout + out.stderr
    assert [(e.signal, e.step) for e in read_stops(tmp_path)] == [("SIGUSR2", 0)]
    assert [c.step for c in CheckpointManager(tmp_path / "checkpoints").list()] == [0]

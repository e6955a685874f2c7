"""What runs inside the SLURM jobs: rendezvous ports, tasks pickled by reference."""

import pickle
import subprocess
import sys
from pathlib import Path

from jobs import slurm

ROOT = Path(__file__).resolve().parents[2]


def test_rdzv_port():
    ports = {slurm.rdzv_port(i) for i in range(1000, 1100)}
    assert len(ports) == 100 and min(ports) >= 20000 and max(ports) < 32768
    assert slurm.rdzv_port("123") == slurm.rdzv_port(123) == slurm.rdzv_port("123_4") == 20123
    assert slurm.rdzv_port(12_000 * 7 + 5) == 20005  # wraps within the span


def test_tasks_pickle_by_reference_and_checkpoint():
    task = slurm.PretrainTask("/r", "/s", 2, 1)
    assert b"jobs.slurm" in pickle.dumps(task)
    resubmission = task.checkpoint()
    assert resubmission.function is task and resubmission.args == ()
    assert slurm.EvalTask("/r").checkpoint().function.run_dir == "/r"


def test_jobs_do_not_import_the_submitting_side():
    """The jobs and the sweep summary they refresh import neither jobs.submit (no circle
    slurm <-> sweep_summary) nor the preflight checks, only what runs in a job."""
    code = (
        "import sys, jobs.slurm, jobs.sweep_summary; "
        "print(sorted(m for m in sys.modules if m in ('jobs.submit', 'jobs.preflight', "
        "'jobs.watch', 'submitit')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"

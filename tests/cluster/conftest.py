"""The `cluster` fixture: a real SLURM cluster with 2 usable nodes, or a skip.

Skipped when there is no cluster, unless VICE_CLUSTER_TESTS=1 (then a missing cluster fails).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

FORCED = os.environ.get("VICE_CLUSTER_TESTS") == "1"


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM here (start one: sudo python3 tools/slurm_cluster.py up --nodes 2)"
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N|%T"], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"SLURM cluster down (sinfo: {proc.stderr.strip()})"
    up = {
        line.split("|")[0]
        for line in proc.stdout.splitlines()
        if line.split("|")[-1].rstrip("*~#") in ("idle", "mixed", "allocated", "completing")
    }
    if len(up) < 2:
        return f"SLURM cluster has {len(up)} usable nodes, the tests need 2"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    problem = _cluster_problem()
    if problem:
        if FORCED:
            pytest.fail(f"VICE_CLUSTER_TESTS=1 but {problem}")
        pytest.skip(problem)

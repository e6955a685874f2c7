"""The `cluster` fixture: a real SLURM cluster with 2 usable nodes, or a skip (skipped when
there is no cluster, unless VICE_CLUSTER_TESTS=1: then a missing cluster fails). The `server`
fixture: a real `mlflow server` on loopback (tools/mlflow_server.py), one for the session."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FORCED = os.environ.get("VICE_CLUSTER_TESTS") == "1"
ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The tracking URI of a running `mlflow server`, stopped when the session ends."""
    from vice.tracking import free_port

    port = free_port()
    state = tmp_path_factory.mktemp("mlflow_server")
    args = ("--state-dir", str(state), "--port", str(port))
    tool = [sys.executable, str(ROOT / "tools" / "mlflow_server.py")]
    out = subprocess.run([*tool, "start", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    yield re.search(r"tracking\.uri=(\S+)", out.stdout).group(1)
    subprocess.run([*tool, "stop", *args], capture_output=True, timeout=120)

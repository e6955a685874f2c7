"""Suite-wide scheduling. `./dev test` runs the suite on 2 pytest-xdist workers (pyproject's
addopts; `-n 0` runs it in one process).

The tests that drive the one local SLURM cluster share its 2 nodes, and some preempt every job
in `batch` on purpose (an `urgent` job that takes both nodes), so they must not overlap: every
test under tests/cluster/ and in tests/tools/test_slurm_cluster.py is one unit of work that
one worker runs in file order (their module fixtures, the MLflow server and the long chains,
stay shared). The other worker takes the rest of the suite meanwhile: the cluster tests spend
most of their time waiting on SLURM (scheduling, requeues, grace times), not on the CPUs. So
that the rest does not slow the cluster's jobs (a test waits on their wall clock), a worker
lowers its CPU priority (nice 10, its subprocesses too) once it runs a test of the rest: the
jobs get the CPUs when they need them, the rest the time they wait.

(xdist's own `--dist loadgroup` does not group under pytest 9: it renames `item._nodeid`,
which pytest 9 no longer reads. The scheduler below groups by path, through xdist's public
scheduler hook.)
"""

from __future__ import annotations

import os

import pytest

CLUSTER_GROUP = "slurm"
CLUSTER_PATHS = ("tests/cluster/", "tests/tools/test_slurm_cluster.py")
REST_NICE = 10
_niced: list[bool] = []


def cluster_scope(nodeid: str) -> str:
    """The unit of work a test belongs to: the cluster group, or the test alone."""
    return CLUSTER_GROUP if nodeid.startswith(CLUSTER_PATHS) else nodeid


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ClusterTestsTogether(LoadScopeScheduling):
        """--dist load for every test, except that the cluster tests go to one worker."""

        def _split_scope(self, nodeid: str) -> str:
            return cluster_scope(nodeid)

    return ClusterTestsTogether(config, log)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _niced or not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if cluster_scope(item.nodeid) != CLUSTER_GROUP:
        os.nice(REST_NICE)  # for good: a process cannot raise its priority again unprivileged
        _niced.append(True)

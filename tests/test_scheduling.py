"""The suite's xdist scheduling (tests/conftest.py): the cluster tests are one unit of work."""

from __future__ import annotations

from .conftest import CLUSTER_GROUP, cluster_scope


def test_cluster_tests_share_one_scope_and_the_rest_stand_alone():
    together = [
        "tests/cluster/test_preemption.py::test_time_limit_requeues_until_done",
        "tests/cluster/test_status.py::test_scancel_ends_the_mlflow_run_killed_once_the_status_"
        "view_sees_it",
        "tests/tools/test_slurm_cluster.py::test_urgent_job_preempts_and_requeues_a_batch_job",
    ]
    assert {cluster_scope(n) for n in together} == {CLUSTER_GROUP}
    alone = "tests/tools/test_mlflow_sync.py::test_sync_check_only"
    assert cluster_scope(alone) == alone
    assert cluster_scope("tests/clusterish/test_x.py::t") == "tests/clusterish/test_x.py::t"


def test_the_suite_runs_on_workers_with_the_scheduler_and_a_timeout():
    import tomllib
    from pathlib import Path

    opts = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    pytest_opts = opts["tool"]["pytest"]["ini_options"]
    assert "-n 2" in pytest_opts["addopts"]
    assert pytest_opts["timeout"] >= 600 and pytest_opts["timeout_method"] == "signal"

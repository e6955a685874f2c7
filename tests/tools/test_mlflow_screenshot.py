"""tools/mlflow_screenshot.py: the MLflow UI addresses it renders, and the sweep's runs."""

import json
import sys
import urllib.parse
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import mlflow_screenshot


def test_addresses_of_the_run_list_and_the_compare_view():
    assert (
        mlflow_screenshot.run_list_url("http://h:5077/", "3")
        == "http://h:5077/#/experiments/3/runs"
    )
    url = mlflow_screenshot.compare_url("http://h:5077", "3", ["a1", "b2"])
    page, query = url.split("?", 1)
    assert page == "http://h:5077/#/compare-runs"
    fields = urllib.parse.parse_qs(query)
    assert json.loads(fields["runs"][0]) == ["a1", "b2"]
    assert json.loads(fields["experiments"][0]) == ["3"]


def test_a_sweeps_runs_are_its_points_ids(tmp_path):
    for point, run_id in (("1", "b2"), ("0", "a1")):
        (tmp_path / point).mkdir()
        (tmp_path / point / "mlflow_run_id").write_text(run_id + "\n")
    assert mlflow_screenshot.sweep_runs(tmp_path) == ["a1", "b2"]
    with pytest.raises(SystemExit, match="no point has an mlflow_run_id; pass a sweep"):
        mlflow_screenshot.sweep_runs(tmp_path / "0")


def test_a_server_that_does_not_answer_is_one_line(capsys):
    from vice.tracking import free_port

    port = free_port(5400, 5500)
    with pytest.raises(SystemExit, match=f"MLflow at http://127.0.0.1:{port} does not answer"):
        mlflow_screenshot.main([f"http://127.0.0.1:{port}", "--experiment", "vice"])

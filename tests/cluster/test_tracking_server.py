"""Runs logging to a real `mlflow server` on loopback (tools/mlflow_server.py): a local run
and a sweep on the local SLURM cluster hold everything users look at, secrets stay out, and
the REST API the MLflow UI reads lists them."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRETS = {"MLFLOW_TRACKING_TOKEN": "tok-sekrit-4711", "AWS_SECRET_ACCESS_KEY": "aws-sekrit-0815"}
FAST = (
    "experiment=smoke",
    "trainer.max_steps=4",
    "trainer.log_every=1",
    "trainer.checkpoint_every=2",
    "eval.linear_iters=20",
    "eval.max_images=4",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    state = tmp_path_factory.mktemp("mlflow_server")
    args = ("--state-dir", str(state), "--port", str(port))
    tool = [sys.executable, str(ROOT / "tools" / "mlflow_server.py")]
    out = subprocess.run([*tool, "start", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    uri = re.search(r"tracking\.uri=(\S+)", out.stdout).group(1)
    yield uri
    subprocess.run([*tool, "stop", *args], capture_output=True, timeout=120)


def _launch(tmp: Path, uri: str, *overrides: str, multirun: bool = False, timeout=600):
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "jobs" / "launch.py")]
    if multirun:
        cmd += ["-m", f"hydra.sweep.dir={tmp}/sweep"]
    else:
        cmd += [f"hydra.run.dir={tmp}/run"]
    env = {**__import__("os").environ, **SECRETS}
    out = subprocess.run(
        [*cmd, f"tracking.uri={uri}", *FAST, *overrides],
        capture_output=True, text=True, timeout=timeout, cwd=tmp, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out


def _no_secrets(*texts: str) -> None:
    for text in texts:
        for value in SECRETS.values():
            assert value not in text


def _check_run(client, run_id: str, nodes: int) -> None:
    run = client.get_run(run_id)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["model.backbone"] == "resnet18" and params["trainer.max_steps"] == "4"
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git.commit"]) and tags["git.dirty"] in (
        "true",
        "false",
    )
    assert tags["hosts"] and tags["world_size"] == "1" and tags["restart_count"] == "0"
    for key in ("loss", "loss_swav", "lr", "images_per_s", "data_wait_share", "memory_mb",
                "system/node0/cpu_percent", "system/node0/memory_used_mb",
                "eval.clustering.8.miou", "eval.linear.miou"):  # fmt: skip
        assert key in metrics, key
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
    files = set()
    for folder in ("", "eval", "views"):
        files |= {a.path for a in client.list_artifacts(run_id, folder or None)}
    assert {"config.yaml", "eval/metrics.json", "eval/segmentations.png",
            "eval/per_class_iou.png"} <= files, files  # fmt: skip
    assert any(f.startswith("views/views_") for f in files), files
    config = Path(client.download_artifacts(run_id, "config.yaml")).read_text()
    _no_secrets(json.dumps(params), json.dumps(tags), config)
    assert run.info.status == "FINISHED"


def _ui_lists(uri: str, experiment_id: str, run_id: str) -> None:
    """What the MLflow UI's runs table requests (its `ajax-api` routes)."""
    request = urllib.request.Request(
        f"{uri}/ajax-api/2.0/mlflow/runs/search",
        data=json.dumps({"experiment_ids": [experiment_id], "max_results": 100}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        runs = json.loads(response.read())["runs"]
    assert run_id in {r["info"]["run_id"] for r in runs}
    with urllib.request.urlopen(f"{uri}/", timeout=60) as response:
        assert response.status == 200 and b"<html" in response.read().lower()


@pytest.mark.slow
def test_local_run_logs_everything_to_the_server(server, tmp_path):
    from mlflow.tracking import MlflowClient

    out = _launch(tmp_path, server)
    run_id = re.search(r"^mlflow_run_id: (\w+)", out.stdout, re.M).group(1)
    client = MlflowClient(server)
    _check_run(client, run_id, nodes=1)
    _no_secrets(out.stdout, out.stderr)
    _ui_lists(server, client.get_run(run_id).info.experiment_id, run_id)
    assert f"open {server}/#/experiments/" in out.stdout


@pytest.mark.slow
@pytest.mark.cluster
def test_cluster_sweep_logs_to_the_server_with_a_summary(cluster, server, tmp_path):
    from mlflow.tracking import MlflowClient

    out = _launch(
        tmp_path, server, "optim.lr=0.1,0.3", "trainer.nodes=1", "launch.wait=true",
        "hydra.launcher.poll_s=2", multirun=True, timeout=900,
    )  # fmt: skip
    _no_secrets(out.stdout, out.stderr)
    parent = re.search(r"^mlflow parent run: (\w+)", out.stdout, re.M).group(1)
    children = re.findall(r"^  mlflow_run_id: (\w+)", out.stdout, re.M)
    pretrain_ids = re.findall(r"^  pretrain job: (\d+)", out.stdout, re.M)
    assert len(children) == 2
    client = MlflowClient(server)
    for child, job in zip(children, pretrain_ids, strict=True):
        _check_run(client, child, nodes=1)
        tags = client.get_run(child).data.tags
        assert tags["mlflow.parentRunId"] == parent
        assert tags["slurm.pretrain_job_id"] == job and tags["slurm.eval_job_id"]
        assert tags["slurm.nodes"] == "1" and tags["processes_per_node"] == "1"
    run = client.get_run(parent)
    assert run.data.tags["sweep.evaluated"] == "2"
    assert run.data.tags["best.run_id"] in children
    assert "best.clustering.8.miou" in run.data.metrics
    summary = Path(client.download_artifacts(parent, "sweep_summary.md")).read_text()
    assert "optim.lr=0.1" in summary and "optim.lr=0.3" in summary and "pending" not in summary
    _ui_lists(server, run.info.experiment_id, parent)
    for log in (tmp_path / "sweep").rglob("*_log.*"):
        _no_secrets(log.read_text(errors="replace"))

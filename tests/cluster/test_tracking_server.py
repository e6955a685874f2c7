"""Runs logging to a real `mlflow server` on loopback (tools/mlflow_server.py, the `server`
fixture): a local run holds everything users look at, secrets stay out, and the REST API the
MLflow UI reads lists it; a sweep launched while the server is down syncs to one parent run.
(test_status.py sends a sweep on the cluster to the server, checked with the helpers here.)"""

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


def _check_run(client, run_id: str, nodes: int, name: str, slurm: bool = False) -> None:
    run = client.get_run(run_id)
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert run.info.run_name == name
    assert params["model.backbone"] == "resnet18" and params["trainer.max_steps"] == "4"
    assert "None" not in params.values() and "run_dir" not in params
    assert any(k.startswith("cluster.") for k in params) == slurm
    assert re.fullmatch(r"[0-9a-f]{40}", tags["git.commit"]) and tags["git.dirty"] in (
        "true",
        "false",
    )
    # MLflow's own Source, User and Version columns
    assert tags["mlflow.source.name"] == "jobs/launch.py"
    assert tags["mlflow.source.type"] == ("JOB" if slurm else "LOCAL")
    assert tags["mlflow.user"] and tags["mlflow.source.git.commit"] == tags["git.commit"]
    assert " ".join(FAST) in tags["overrides"]
    # one headline metric; bookkeeping as tags
    assert metrics["miou"] == metrics["eval.clustering.8.miou"]
    assert "eval.num_images" not in metrics and tags["eval.num_images"] == "4"
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
    _check_model_and_data(client, run)


def _check_model_and_data(client, run) -> None:
    """The logged model loads and segments an image; the data sets are dataset inputs."""
    import mlflow.pytorch
    import torch

    (output,) = run.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.name == "model" and model.params["model.backbone"] == "resnet18"
    assert {m.key: m.value for m in model.metrics}["miou"] == run.data.metrics["miou"]
    mlflow.set_tracking_uri(client.tracking_uri)  # models:/ URIs resolve through it
    network = mlflow.pytorch.load_model(f"models:/{model.model_id}").eval()
    with torch.no_grad():
        embedding_BDHW = network(torch.rand(1, 3, 64, 64))  # an image -> per-pixel embeddings
    dim = int(model.params["model.embed_dim"])
    assert embedding_BDHW.shape == (1, dim, 64, 64) and torch.isfinite(embedding_BDHW).all()
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"synthetic/train", "synthetic/val"}
    assert [t.value for t in inputs["synthetic/val"].tags] == ["eval"]
    assert json.loads(inputs["synthetic/val"].dataset.profile)["num_images"] == 4


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
    name = "smoke max_steps=4 log_every=1 checkpoint_every=2 linear_iters=20 max_images=4"
    _check_run(client, run_id, nodes=1, name=name)
    _no_secrets(out.stdout, out.stderr)
    _ui_lists(server, client.get_run(run_id).info.experiment_id, run_id)
    assert f"open {server}/#/experiments/" in out.stdout


@pytest.mark.slow
@pytest.mark.cluster
def test_a_sweep_launched_while_the_server_is_down_syncs_to_one_parent(cluster, tmp_path):
    """The server is down for the whole sweep (launch, training, evals): the launch says so in
    one line, the jobs run, and once a server answers `tools/mlflow_sync.py` creates exactly
    one parent run with both points nested under it, every value once, the true statuses."""
    from mlflow.tracking import MlflowClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    out = _launch(
        tmp_path, uri, "optim.lr=0.1,0.3", "trainer.nodes=1", "launch.wait=true",
        "hydra.launcher.poll_s=2", multirun=True, timeout=900,
    )  # fmt: skip
    journaled = f"mlflow parent run: created when MLflow answers (journaled in {tmp_path}/sweep"
    assert journaled in out.stdout, out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    assert out.stderr.count("unreachable") <= 2, out.stderr  # said, not repeated per call
    sweep = tmp_path / "sweep"
    assert not (sweep / "mlflow_parent_run_id").exists()
    assert len(list(sweep.glob("*/eval/metrics.json"))) == 2  # the runs did not wait for it

    state = tmp_path / "mlflow_server"
    tool = [sys.executable, str(ROOT / "tools" / "mlflow_server.py")]
    args = ("--state-dir", str(state), "--port", str(port))
    started = subprocess.run([*tool, "start", *args], capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        sync = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "mlflow_sync.py"), str(sweep)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert sync.returncode == 0, sync.stdout + sync.stderr
        parent = (sweep / "mlflow_parent_run_id").read_text().strip()
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_run(parent).info.experiment_id])
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
        assert len(runs) == 3 and len(children) == 2  # one parent, no split runs
        assert sorted(r.info.run_name for r in children) == ["smoke lr=0.1", "smoke lr=0.3"]
        assert {r.info.status for r in children} == {"FINISHED"}
        assert client.get_run(parent).info.status == "FINISHED"
        name = client.get_run(parent).info.run_name  # the experiment + the command line
        assert name.startswith("smoke ") and " lr=0.1,0.3 " in f"{name} ", name
        for child in children:  # every logged loss value exactly once
            history = client.get_metric_history(child.info.run_id, "loss")
            assert sorted(m.step for m in history) == [1, 2, 3, 4]
        check = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "mlflow_sync.py"), str(sweep), "--check-only"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        subprocess.run([*tool, "stop", *args], capture_output=True, timeout=120)

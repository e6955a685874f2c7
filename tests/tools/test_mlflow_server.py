"""tools/mlflow_server.py: settings and error paths (fast), and a real server end to end
(slow: MLflow's server takes 15-40 s to start on a busy 2-core machine)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "mlflow_server.py"


def _load_tool():
    """Import the tool from its path (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("mlflow_server_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ms = _load_tool()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout
    )


# --- fast --------------------------------------------------------------------------------


def test_backend_uri_defaults_and_pass_through(tmp_path, monkeypatch):
    tmp_path = tmp_path.resolve()
    assert ms.backend_uri(tmp_path, None) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert ms.backend_uri(tmp_path, "sqlite:///runs/m.db") == f"sqlite:///{tmp_path}/runs/m.db"
    assert ms.backend_uri(tmp_path, "sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    monkeypatch.setattr(ms.importlib.util, "find_spec", lambda name: object())  # driver found
    pg = "postgresql://vice:pw@db:5432/mlflow"
    assert ms.backend_uri(tmp_path, pg) == pg
    assert ms.artifacts_destination(tmp_path, None) == f"{tmp_path}/artifacts"
    assert ms.artifacts_destination(tmp_path, "s3://bucket/mlflow") == "s3://bucket/mlflow"


def test_backend_uri_errors_hide_the_password(tmp_path, monkeypatch):
    with pytest.raises(ms.ServerError, match=r"'file:///tmp/mlruns': expected a database URI"):
        ms.backend_uri(tmp_path, "file:///tmp/mlruns")
    with pytest.raises(ms.ServerError, match="expected a database URI"):
        ms.backend_uri(tmp_path, "mlflow.db")
    monkeypatch.setattr(ms.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ms.ServerError) as err:
        ms.backend_uri(tmp_path, "postgresql://vice:hunter22@db/mlflow")
    assert "postgresql://vice:***@db/mlflow: the Python driver 'psycopg2' is not installed" in str(
        err.value
    )
    assert "hunter22" not in str(err.value)


def test_command_line_keeps_a_password_out_of_argv(monkeypatch):
    monkeypatch.delenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", raising=False)
    settings = {
        "host": "127.0.0.1",
        "port": 5123,
        "workers": 1,
        "backend": "sqlite:////s/mlflow.db",
        "artifacts": "/s/artifacts",
        "allowed_hosts": None,
    }
    cmd, env = ms.server_command(settings)
    assert cmd[1:] == [
        "-m", "mlflow", "server", "--backend-store-uri", "sqlite:////s/mlflow.db",
        "--serve-artifacts", "--artifacts-destination", "/s/artifacts",
        "--host", "127.0.0.1", "--port", "5123", "--workers", "1",
    ]  # fmt: skip
    assert env == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    pg = "postgresql://vice:hunter22@db/mlflow"
    cmd, env = ms.server_command({**settings, "backend": pg, "allowed_hosts": "a,b"})
    assert "hunter22" not in " ".join(cmd) and env["MLFLOW_BACKEND_STORE_URI"] == pg
    assert cmd[-2:] == ["--allowed-hosts", "a,b"]
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "true")  # the user's choice wins
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION" not in ms.server_command(settings)[1]


def test_exposed_server_accepts_this_hosts_names(monkeypatch):
    # MLflow's own defaults (importing the real module takes seconds: the slow test does).
    defaults = ["localhost", "127.0.0.1", "localhost:*", "10.*", "192.168.*"]
    fake = types.SimpleNamespace(get_default_allowed_hosts=lambda: list(defaults))
    monkeypatch.setitem(sys.modules, "mlflow.server.security_utils", fake)
    monkeypatch.setattr(ms.socket, "gethostname", lambda: "login1")
    monkeypatch.setattr(ms.socket, "getfqdn", lambda: "login1.cluster.example.org")
    hosts = ms.allowed_hosts("mlflow.example.org, 10.1.2.3:5000").split(",")
    assert hosts[: len(defaults)] == defaults
    for h in ("login1", "login1:*", "login1.cluster.example.org:*", "mlflow.example.org"):
        assert h in hosts
    assert hosts[-1] == "10.1.2.3:5000" and len(hosts) == len(set(hosts))
    assert ms.tracking_uri("0.0.0.0", 5000) == "http://login1.cluster.example.org:5000"
    assert ms.tracking_uri("127.0.0.1", 5001) == "http://127.0.0.1:5001"
    assert ms.tracking_uri("10.0.0.7", 5002) == "http://10.0.0.7:5002"


def test_missing_mlflow_is_a_clear_error(monkeypatch, capsys, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        ms.importlib.util, "find_spec", lambda n: None if n == "mlflow" else real(n)
    )
    assert ms.main(["start", "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: mlflow not installed in this Python (")
    assert "./dev python tools/mlflow_server.py" in err
    assert not list(tmp_path.iterdir())


def test_stop_and_status_when_not_running_and_stale_pid_files(tmp_path, capsys):
    state = tmp_path / "state"
    assert ms.main(["status", "--state-dir", str(state)]) == 3
    assert capsys.readouterr().out == f"mlflow server: not running (state dir {state})\n"
    assert ms.main(["stop", "--state-dir", str(state)]) == 0
    assert "not running" in capsys.readouterr().out

    # A pid file of a process that has exited, then of a live process that is not ours
    # (this test: the same pid, a different start time, as after pid reuse).
    dead = subprocess.Popen(["true"])
    dead.wait()
    state.mkdir()
    for pid, create_time in ((dead.pid, None), (os.getpid(), 12345.0)):
        (state / "server.pid").write_text(f"{pid}\n")
        (state / "server.json").write_text(json.dumps({"create_time": create_time}))
        assert ms.read_state(state) is None
        assert not (state / "server.pid").exists() and not (state / "server.json").exists()


def test_port_taken_by_another_process(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc = ms.main(["start", "--state-dir", str(tmp_path / "s"), "--port", str(port)])
    assert rc == 1
    assert capsys.readouterr().err == (
        f"error: port {port} on 127.0.0.1 is already in use by another process (not a server "
        f"started from {tmp_path / 's'}); choose another with --port, or stop that process\n"
    )
    assert not (tmp_path / "s").exists()


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as e:
        ms.main(["start", "--port", "70000"])
    assert e.value.code == 2 and "--port 70000: must be in 1..65535" in capsys.readouterr().err


# --- slow: a real server ------------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """A real server on a free loopback port; always stopped afterwards."""
    state, port = tmp_path.resolve() / "mlflow_state", _free_port()
    args = ("--state-dir", str(state), "--port", str(port))
    started = _cli("start", *args)
    try:
        yield state, port, args, started
    finally:
        _cli("stop", *args)


@pytest.mark.slow
def test_real_server_logs_over_http_and_stops(server, tmp_path):
    from mlflow.tracking import MlflowClient

    state, port, args, started = server
    uri = f"http://127.0.0.1:{port}"
    assert started.returncode == 0, started.stderr + started.stdout
    assert started.stdout.splitlines()[-1] == f"tracking.uri={uri}"
    pid = int((state / "server.pid").read_text())
    assert (state / "mlflow.db").is_file()

    # Log a run over HTTP; the artifact is uploaded through the server (proxied), so it
    # lands in the state dir although the client is told no local path.
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("server-test")
    run = client.create_run(exp, run_name="probe")
    client.log_param(run.info.run_id, "optim.lr", "0.3")
    for step, loss in enumerate((2.5, 1.75, 1.25)):
        client.log_metric(run.info.run_id, "train/loss", loss, step=step)
    note = tmp_path / "note.txt"
    note.write_text("superpixels: 200\n")
    client.log_artifact(run.info.run_id, str(note), "eval")
    client.set_terminated(run.info.run_id)

    back = MlflowClient(tracking_uri=uri).get_run(run.info.run_id)
    assert back.data.params == {"optim.lr": "0.3"}
    assert back.data.metrics == {"train/loss": 1.25}
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.5), (1, 1.75), (2, 1.25)]
    assert back.info.artifact_uri.startswith("mlflow-artifacts:")
    assert [a.path for a in client.list_artifacts(run.info.run_id, "eval")] == ["eval/note.txt"]
    got = Path(client.download_artifacts(run.info.run_id, "eval/note.txt", str(tmp_path / "d")))
    assert got.read_text() == "superpixels: 200\n"
    stored = list((state / "artifacts").rglob("note.txt"))
    assert len(stored) == 1 and stored[0].read_text() == "superpixels: 200\n"

    # A second start is a no-op that reports the running server.
    again = _cli("start", *args)
    assert again.returncode == 0
    assert again.stdout.splitlines() == [
        f"mlflow server already running (pid {pid}, log {state / 'server.log'})",
        f"tracking.uri={uri}",
    ]
    assert int((state / "server.pid").read_text()) == pid

    status = _cli("status", *args)
    assert status.returncode == 0
    lines = status.stdout.splitlines()
    assert lines[0] == "mlflow server: running"
    assert f"  pid:       {pid}" in lines
    assert f"  uri:       {uri}" in lines
    assert f"  backend:   sqlite:///{state}/mlflow.db" in lines
    assert f"  artifacts: {state}/artifacts" in lines
    assert lines[-1] == f"tracking.uri={uri}"

    stopped = _cli("stop", *args)
    assert stopped.returncode == 0
    assert stopped.stdout == f"mlflow server stopped (pid {pid})\n"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (state / "server.pid").exists()
    assert not ms._healthy(uri, timeout_s=1)
    assert _cli("status", *args).returncode == 3
    assert (state / "mlflow.db").is_file()  # the data stays for the next start

    # --expose builds on MLflow's real defaults (localhost, private IPs) and this host's name.
    hosts = ms.allowed_hosts(None).split(",")
    assert {"localhost", "127.0.0.1", "10.*", "192.168.*", socket.gethostname()} <= set(hosts)

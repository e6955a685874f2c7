"""A background MLflow tracking server for the cluster: start | stop | status.

    ./dev python tools/mlflow_server.py start           # 127.0.0.1:5000, state in .mlflow_server/
    ./dev python tools/mlflow_server.py start --expose  # all interfaces (no authentication!)
    ./dev python tools/mlflow_server.py status
    ./dev python tools/mlflow_server.py stop

`start` runs `python -m mlflow server` as a daemon (its own session, so it outlives the shell
and `stop` can end its whole process group), waits until GET /health answers, and prints the
Hydra override that points jobs at it: `tracking.uri=http://<host>:<port>`. Artifacts are
proxied (`--serve-artifacts`): compute nodes upload over HTTP and need no shared file system.

State (the server's own, one folder): `server.pid`, `server.json` (settings), `server.log`,
`mlflow.db` (the default SQLite backend) and `artifacts/`. A PostgreSQL backend
(`--backend-store-uri postgresql://user:pw@host/db`, needs psycopg2) is passed through; a
password in it goes to the server through the environment, never its command line (which
every user on the machine can read with `ps`), and is shown as *** here.

MLflow 3 specifics handled here:
- The server rejects requests whose Host header is neither localhost nor a private IP (DNS
  rebinding protection). With --expose this host's names are added to `--allowed-hosts`, so
  nodes can use `http://<hostname>:<port>`; `--allowed-hosts` adds more.
- It starts 4 uvicorn workers by default; `--workers` here defaults to 1 (requests run in a
  thread pool; more processes only contend for SQLite's write lock).
- Its GenAI job runner (huey) is switched off (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false, unless
  set in the environment): training runs do not use it and it is one more process.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DEFAULT_STATE_DIR = ".mlflow_server"
DEFAULT_PORT = 5000
PID_FILE = "server.pid"
INFO_FILE = "server.json"
LOG_FILE = "server.log"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
BACKEND_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # SQLAlchemy stores (+driver)
DB_DRIVERS = {"postgresql": "psycopg2", "mysql": "pymysql"}  # SQLAlchemy's default dialects
EXIT_NOT_RUNNING = 3  # `status` of a stopped server (the LSB convention)


class ServerError(RuntimeError):
    """A failure to report as one line (and the log's tail), without a traceback."""


def _redact_url(uri: str) -> str:
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def backend_uri(state_dir: Path, given: str | None) -> str:
    """The backend store URI: default a SQLite file in the state dir; relative SQLite paths
    are made absolute (the server runs in the state dir)."""
    if not given:
        return f"sqlite:///{(state_dir / DB_FILE).resolve()}"
    scheme = given.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in BACKEND_SCHEMES or "://" not in given:
        raise ServerError(
            f"--backend-store-uri {_redact_url(given)!r}: expected a database URI such as "
            "sqlite:///path/mlflow.db or postgresql://user:password@host:5432/mlflow"
        )
    if scheme == "sqlite":
        path = given.split(":///", 1)[1] if ":///" in given else ""
        if path and not path.startswith("/"):
            return f"sqlite:///{Path(path).resolve()}"
        return given
    driver = given.split(":", 1)[0].partition("+")[2] or DB_DRIVERS.get(scheme)
    if driver and importlib.util.find_spec(driver) is None:
        raise ServerError(
            f"--backend-store-uri {_redact_url(given)}: the Python driver {driver!r} is not "
            f"installed in this environment ({sys.executable})"
        )
    return given


def artifacts_destination(state_dir: Path, given: str | None) -> str:
    if not given:
        return str((state_dir / ARTIFACTS_DIR).resolve())
    return given if "://" in given else str(Path(given).resolve())


def allowed_hosts(extra: str | None) -> str:
    """MLflow's default Host patterns (localhost, private IPs) plus this machine's names and
    `extra`: what nodes may call the server by."""
    from mlflow.server.security_utils import get_default_allowed_hosts

    names = {socket.gethostname(), socket.getfqdn()}
    names |= {n.split(".", 1)[0] for n in names}
    hosts = list(get_default_allowed_hosts())
    for name in sorted(n for n in names if n and n != "localhost"):
        hosts += [name, f"{name}:*"]
    hosts += [h.strip() for h in (extra or "").split(",") if h.strip()]
    return ",".join(dict.fromkeys(hosts))


def tracking_uri(host: str, port: int) -> str:
    """What jobs should use: loopback stays 127.0.0.1; all interfaces -> this host's name."""
    if _wildcard(host):
        name = socket.getfqdn()
        name = socket.gethostname() if name in ("localhost", "") else name
    elif _is_loopback(host):
        name = "127.0.0.1"
    else:
        name = f"[{host}]" if ":" in host else host
    return f"http://{name}:{port}"


def _probe_url(host: str, port: int) -> str:
    if _wildcard(host) or _is_loopback(host):
        return f"http://127.0.0.1:{port}"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def server_command(settings: dict) -> tuple[list[str], dict[str, str]]:
    """The `mlflow server` argv and the environment it adds (the backend URI goes there when
    it holds a password)."""
    env = {}
    cmd = [sys.executable, "-m", "mlflow", "server"]
    if urlsplit(settings["backend"]).password:
        env["MLFLOW_BACKEND_STORE_URI"] = settings["backend"]
    else:
        cmd += ["--backend-store-uri", settings["backend"]]
    cmd += [
        "--serve-artifacts",
        "--artifacts-destination",
        settings["artifacts"],
        "--host",
        settings["host"],
        "--port",
        str(settings["port"]),
        "--workers",
        str(settings["workers"]),
    ]
    if settings.get("allowed_hosts"):
        cmd += ["--allowed-hosts", settings["allowed_hosts"]]
    if "MLFLOW_SERVER_ENABLE_JOB_EXECUTION" not in os.environ:
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return cmd, env


# --- state --------------------------------------------------------------------------------


def read_state(state_dir: Path) -> dict | None:
    """The recorded server when its process is still the one we started, else None (a stale
    pid file, e.g. after a reboot or a kill, is removed)."""
    pid_path, info_path = state_dir / PID_FILE, state_dir / INFO_FILE
    if not pid_path.is_file():
        return None
    try:
        pid = int(pid_path.read_text().strip())
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    except (ValueError, OSError):
        pid, info = -1, {}
    if _alive(pid, info.get("create_time")):
        return {**info, "pid": pid}
    _remove_state(state_dir)
    return None


def _alive(pid: int, create_time: float | None) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # The same pid but a later start: the pid was reused by another process.
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _remove_state(state_dir: Path) -> None:
    for name in (PID_FILE, INFO_FILE):
        (state_dir / name).unlink(missing_ok=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(f"    {line}" for line in tail)


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR: a port in TIME_WAIT (a server stopped a moment ago) counts as free,
        # as it will for uvicorn; a listening socket still does not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


def _healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --- commands -----------------------------------------------------------------------------


def require(modules: tuple[str, ...] = ("mlflow", "psutil")) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ServerError(
            f"{' and '.join(missing)} not installed in this Python ({sys.executable}); run "
            "the tool inside the project environment (./dev python tools/mlflow_server.py "
            "...) or pip install 'mlflow>=3,<4' psutil"
        )


def start(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    host = "0.0.0.0" if args.expose else args.host
    running = read_state(state_dir)
    if running is not None:
        print(f"mlflow server already running (pid {running['pid']}, log {running['log']})")
        if (running["host"], running["port"]) != (host, args.port):
            print(
                f"note: it listens on {running['host']}:{running['port']}, not {host}:"
                f"{args.port}; `stop` it first to change its settings",
                file=sys.stderr,
            )
        print(f"tracking.uri={running['uri']}")
        return 0

    if not _port_free(host, args.port):
        raise ServerError(
            f"port {args.port} on {host} is already in use by another process (not a server "
            f"started from {state_dir}); choose another with --port, or stop that process"
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "host": host,
        "port": args.port,
        "workers": args.workers,
        "backend": backend_uri(state_dir, args.backend_store_uri),
        "artifacts": artifacts_destination(state_dir, args.artifacts_destination),
        "allowed_hosts": (
            allowed_hosts(args.allowed_hosts)
            if args.allowed_hosts or not _is_loopback(host)
            else None
        ),
    }
    if "://" not in settings["artifacts"]:
        Path(settings["artifacts"]).mkdir(parents=True, exist_ok=True)
    if not _is_loopback(host):
        print(
            f"WARNING: the server listens on {host}:{args.port} and has NO authentication: "
            "anyone who can reach this port can read, change and delete every run and "
            "artifact. Use it only on a trusted cluster network.",
            file=sys.stderr,
        )
    cmd, extra_env = server_command(settings)
    log_path = state_dir / LOG_FILE
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=state_dir,  # anything the server writes relative to its cwd stays here
            env={**os.environ, **extra_env},
            start_new_session=True,  # outlives this shell; `stop` ends the whole group
        )
    import psutil

    uri = tracking_uri(host, args.port)
    info = {
        **{k: v for k, v in settings.items() if k != "backend"},
        "backend": _redact_url(settings["backend"]),
        "uri": uri,
        "log": str(log_path),
        "command": " ".join(_redact_url(c) for c in cmd),
        "create_time": psutil.Process(proc.pid).create_time(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    _write_atomic(state_dir / INFO_FILE, json.dumps(info, indent=2) + "\n")
    _write_atomic(state_dir / PID_FILE, f"{proc.pid}\n")

    probe = _probe_url(host, args.port)
    deadline = time.monotonic() + args.timeout
    while not _healthy(probe):
        code = proc.poll()
        if code is not None:
            _remove_state(state_dir)
            raise ServerError(
                f"mlflow server exited with code {code} while starting; the end of "
                f"{log_path}:\n{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            _terminate(proc.pid, args.stop_timeout)
            _remove_state(state_dir)
            raise ServerError(
                f"mlflow server did not answer {probe}/health within {args.timeout:.0f} s "
                f"(stopped it; --timeout waits longer); the end of {log_path}:\n"
                f"{_log_tail(log_path)}"
            )
        time.sleep(0.5)
    print(f"mlflow server running (pid {proc.pid}, log {log_path})")
    print(f"tracking.uri={uri}")
    return 0


def _terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM to the server's process group (it leads its own session), SIGKILL to whatever
    is left after `timeout_s`. Returns True when it had to kill."""
    import psutil

    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    own_group = os.getpgid(pid) == pid

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig) if own_group else os.kill(pid, sig)
        for p in procs:  # children that left the group (none expected)
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)

    send(signal.SIGTERM)
    _, left = psutil.wait_procs(procs, timeout=timeout_s)
    if not left:
        return False
    send(signal.SIGKILL)
    psutil.wait_procs(left, timeout=5)
    return True


def stop(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    running = read_state(state_dir)
    if running is None:
        print(f"mlflow server not running (state dir {state_dir})")
        return 0
    killed = _terminate(running["pid"], args.stop_timeout)
    _remove_state(state_dir)
    how = f"killed after {args.stop_timeout:.0f} s without exiting" if killed else "stopped"
    print(f"mlflow server {how} (pid {running['pid']})")
    return 0


def status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    running = read_state(state_dir)
    if running is None:
        print(f"mlflow server: not running (state dir {state_dir})")
        return EXIT_NOT_RUNNING
    answers = _healthy(_probe_url(running["host"], running["port"]))
    print(f"mlflow server: running{'' if answers else ' (not answering /health)'}")
    for key in ("pid", "uri", "host", "port", "backend", "artifacts", "log", "started"):
        print(f"  {key + ':':11}{running[key]}")
    print(f"tracking.uri={running['uri']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run an MLflow tracking server in the background (see the module docstring)."
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument(
        "--state-dir",
        default=DEFAULT_STATE_DIR,
        help=f"pid, settings, log, SQLite db and artifacts (default: ./{DEFAULT_STATE_DIR})",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s")
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--expose", action="store_true", help="bind all interfaces (= --host 0.0.0.0)"
    )
    parser.add_argument(
        "--backend-store-uri",
        help=f"default: sqlite:///<state-dir>/{DB_FILE}; postgresql://... is passed through",
    )
    parser.add_argument(
        "--artifacts-destination",
        help=f"where proxied artifacts are stored (default: <state-dir>/{ARTIFACTS_DIR})",
    )
    parser.add_argument(
        "--allowed-hosts",
        help="more Host header patterns to accept when exposed (comma-separated, * wildcards)",
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers (default: 1)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds `start` waits for /health"
    )
    parser.add_argument(
        "--stop-timeout", type=float, default=15.0, help="seconds from SIGTERM to SIGKILL"
    )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: must be in 1..65535")
    if args.workers < 1:
        parser.error(f"--workers {args.workers}: must be at least 1")
    try:
        require()
        return {"start": start, "stop": stop, "status": status}[args.command](args)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

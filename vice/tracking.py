"""Experiment tracking: a no-op tracker, and MLflow behind the same small interface.

MLflow is imported lazily (it costs seconds) and only rank 0 logs. MLflow cannot take a
user-chosen run id, so the id is written into the run directory the first time and every
later process (training ranks, resumed jobs, the evaluation) reopens that run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from vice.config import TrackingConfig
from vice.run_dir import RunDir, SweepDir
from vice.secrets import redact_mapping
from vice.tracking_journal import Journal

log = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"  # what MLflow's UI nests child runs by
MAX_PARAM_CHARS = 6000  # MLflow 3's limit on a param value
# Asks the MLflow UI for its training-runs view instead of the GenAI one (cluster.md).
EXPERIMENT_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")


class Tracker:
    """Does nothing; the interface every tracker implements."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...

    def close(self) -> bool:
        """Sends what is pending; True when nothing is left."""
        return True

    def ui_command(self) -> str:
        return ""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def git_info(repo: Path) -> dict[str, str]:
    """Commit and dirty flag of the code in `repo`. A code snapshot (what SLURM jobs run,
    see jobs/snapshot.py) has no git metadata; its SNAPSHOT.json recorded them."""
    manifest = repo / "SNAPSHOT.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            return {
                "git.commit": data.get("git_commit", "unknown"),
                "git.dirty": data.get("git_dirty", "unknown"),
            }
        except (OSError, json.JSONDecodeError):
            return {"git.commit": "unknown", "git.dirty": "unknown"}

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        top = git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() != repo.resolve():
            return {}  # not a checkout of its own (e.g. an unpacked copy inside another repo)
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit or "unknown", "git.dirty": str(dirty).lower()}


def read_run_id(run_dir: str | Path) -> str | None:
    path = RunDir(run_dir).mlflow_run_id
    return path.read_text().strip() if path.is_file() else None


def _experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG[0]: EXPERIMENT_KIND_TAG[1]})


def _write_id(path: Path, run_id: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)


def open_parent_run(
    cfg: TrackingConfig, sweep_dir: str | Path, run_name: str | None = None
) -> str | None:
    """The MLflow run grouping a sweep's runs; created once, its id kept in the sweep dir.

    A second call for the same sweep directory (another batch of the sweep, a resubmission)
    reopens the same run. Returns None when tracking is disabled.
    """
    if not cfg.enabled:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cfg.uri)
    path = SweepDir(sweep_dir).parent_run_id
    if path.is_file():
        run_id = path.read_text().strip()
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(_experiment_id(client, cfg.experiment), run_name=run_name)
    _write_id(path, run.info.run_id)
    return run.info.run_id


class MlflowTracker(Tracker):
    """Logs to one MLflow run whose id lives in `<run_dir>/mlflow_run_id`.

    Every call is journaled in the run directory first (`vice.tracking_journal`) and sent by
    a background thread, so training never waits on the server and never stops because it
    is unreachable: what the server has not accepted stays pending, with a warning, and is
    sent when it answers again (or by `tools/mlflow_sync.py`). Metric values whose (key,
    step) the run already holds are not sent twice: a resumed job recomputes the steps after
    its checkpoint, and the history keeps one value per step.

    `parent_run_id` (a sweep's run, see `open_parent_run`) nests a new run under it; it is
    passed explicitly and never through MLFLOW_RUN_ID, which child processes would inherit.
    """

    RETRY_S = (2.0, 5.0, 10.0, 30.0, 60.0)  # waits between attempts while the server is down

    def __init__(
        self,
        cfg: TrackingConfig,
        run_dir: str | Path,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        background: bool = True,
    ):
        from mlflow.tracking import MlflowClient

        _quick_http_failures()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.client = MlflowClient(tracking_uri=cfg.uri)
        self.journal = Journal(self.run_dir)
        self.run_id = read_run_id(self.run_dir)
        self.experiment_id: str | None = None
        self._new_run = {"run_name": run_name or cfg.run_name, "parent": parent_run_id}
        self._sent: dict[str, set[int]] = {}  # metric key -> steps the run holds
        self._failures = 0
        self._last_warning = 0.0
        self._wake = threading.Event()
        self._closing = False
        if self.run_id is not None:
            self._reopen = True  # a resumed job or the chained eval: RUNNING again
        else:
            self._reopen = False
        self.flush()  # creates or reopens the run now if the server answers
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="mlflow-flush", daemon=True)
            self._thread.start()

    # ----------------------------------------------------------------- the interface

    def log_params(self, params: dict[str, Any]) -> None:
        items, long_values = {}, {}
        for key, value in sorted(redact_mapping(params).items()):
            text = str(value)
            if len(text) > MAX_PARAM_CHARS:
                long_values[key] = text
                text = text[: MAX_PARAM_CHARS - 40] + "... (full value in params_long.txt)"
            items[key[:250]] = text
        self.journal.append({"op": "params", "items": items})
        if long_values:
            path = RunDir(self.run_dir).params_long
            path.write_text("".join(f"{k}: {v}\n" for k, v in long_values.items()))
            self.log_artifact(path)
        self._wake.set()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [[k, float(v), now, int(step)] for k, v in metrics.items()]
        self.journal.append({"op": "metrics", "items": items})
        self._wake.set()

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = {k: str(v) for k, v in redact_mapping(tags).items()}
        self.journal.append({"op": "tags", "items": items})
        self._wake.set()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        # Sent from the path later: the file must stay (run directories are kept).
        self.journal.append(
            {"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path}
        )
        self._wake.set()

    def finish(self, status: str = "FINISHED", timeout_s: float = 60.0) -> None:
        """Marks the run `status` and sends everything pending (waiting up to `timeout_s`)."""
        self.journal.append({"op": "terminate", "status": status})
        self.close(timeout_s)

    def close(self, timeout_s: float = 60.0) -> bool:
        """Stops the background sender after a last attempt to send what is pending (later
        calls send synchronously). Returns whether nothing is left pending."""
        if self._thread is not None:
            self._closing = True
            self._wake.set()
            self._thread.join(timeout_s)
            self._thread = None
        else:
            self.flush()
        ops = self.journal.pending()
        if ops:
            values = sum(len(op["items"]) for op in ops if op["op"] == "metrics")
            log.warning(
                "MLflow (%s) has not accepted %s tracking operations (%s metric values) of "
                "%s; they wait in %s: `python tools/mlflow_sync.py %s` sends them",
                self.cfg.uri, len(ops), values, self.run_dir, self.journal.pending_path,
                self.run_dir,
            )  # fmt: skip
        return not ops

    def ui_command(self) -> str:
        uri = self.cfg.uri
        if self.run_id is None:
            return f"mlflow ui --backend-store-uri {uri}  # the run is created when it answers"
        where = f"#/experiments/{self.experiment_id}/runs/{self.run_id}"
        if uri.startswith(("http://", "https://")):
            return f"open {uri.rstrip('/')}/{where}"
        return f"mlflow ui --backend-store-uri {uri}  # then open http://127.0.0.1:5000/{where}"

    # ----------------------------------------------------------------- sending

    def _loop(self) -> None:
        while True:
            delay = (
                self.RETRY_S[min(self._failures, len(self.RETRY_S)) - 1] if self._failures else 5.0
            )
            self._wake.wait(delay)
            self._wake.clear()
            closing = self._closing
            self.flush()
            if closing:
                return

    def flush(self) -> bool:
        """Sends what is pending, in order; True when nothing is left."""
        try:
            with self.journal.sending():
                self._connect()
                sent: set[str] = set()
                try:
                    for op in self.journal.pending():
                        self._send(op)
                        sent.add(op["id"])
                finally:
                    self.journal.drop(sent)
        except Exception as err:  # the server's errors are many; none may stop training
            self._failures += 1
            self._warn(err)
            return False
        if self._failures:
            log.warning("MLflow (%s) answers again: the pending values were sent", self.cfg.uri)
        self._failures = 0
        return True

    def _connect(self) -> None:
        if self.run_id is None:
            tags = {PARENT_RUN_TAG: self._new_run["parent"]} if self._new_run["parent"] else None
            run = self.client.create_run(
                _experiment_id(self.client, self.cfg.experiment),
                run_name=self._new_run["run_name"],
                tags=tags,
            )
            self.run_id = run.info.run_id
            _write_id(RunDir(self.run_dir).mlflow_run_id, self.run_id)
            self.experiment_id = run.info.experiment_id
        elif self._reopen:
            self.client.update_run(self.run_id, status="RUNNING")
            self._reopen = False
        if self.experiment_id is None:
            self.experiment_id = self.client.get_run(self.run_id).info.experiment_id

    def _steps_held(self, key: str) -> set[int]:
        if key not in self._sent:
            history = self.client.get_metric_history(self.run_id, key)
            self._sent[key] = {int(m.step) for m in history}
        return self._sent[key]

    def _send(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "metrics":
            fresh = [(k, v, t, s) for k, v, t, s in op["items"] if s not in self._steps_held(k)]
            batch = [Metric(k, v, t, s) for k, v, t, s in fresh]
            for i in range(0, len(batch), 500):
                self.client.log_batch(self.run_id, metrics=batch[i : i + 500])
            for k, _, _, s in fresh:
                self._sent[k].add(s)
        elif kind == "params":
            batch = [Param(k, v) for k, v in op["items"].items()]
            for i in range(0, len(batch), 100):
                self.client.log_batch(self.run_id, params=batch[i : i + 100])
        elif kind == "tags":
            tags = [RunTag(k, v) for k, v in op["items"].items()]
            self.client.log_batch(self.run_id, tags=tags)
        elif kind == "artifact":
            if Path(op["path"]).exists():
                self.client.log_artifact(self.run_id, op["path"], op["artifact_path"])
            else:
                log.warning("artifact %s no longer exists; not sent to MLflow", op["path"])
        elif kind == "terminate":
            self.client.set_terminated(self.run_id, op["status"])

    def _warn(self, err: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning < 60 and self._failures > 1:
            return
        self._last_warning = now
        pending = self.journal.pending_metric_values()
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        log.warning(
            "MLflow (%s) unreachable (%s): %s metric values pending in %s; they are sent "
            "when it answers again (training goes on)",
            self.cfg.uri, first, pending, self.journal.pending_path,
        )  # fmt: skip


def _quick_http_failures() -> None:
    """MLflow's HTTP client retries for minutes by default; our sender retries on its own
    schedule, so one attempt should fail fast (a user's explicit setting wins)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def build_tracker(
    cfg: TrackingConfig,
    run_dir: str | Path,
    is_main: bool = True,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> Tracker:
    """MLflow on rank 0 when enabled, a no-op tracker everywhere else."""
    if not cfg.enabled or not is_main:
        return Tracker()
    return MlflowTracker(cfg, run_dir, run_name, parent_run_id)


def default_tags() -> dict[str, str]:
    import torch

    tags = {"host": socket.gethostname(), "torch.version": torch.__version__}
    tags.update(git_info(Path(__file__).resolve().parents[1]))
    return tags

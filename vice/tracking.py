"""Experiment tracking: a no-op tracker, and MLflow behind the same small interface.

MLflow is imported lazily (it costs seconds) and only rank 0 logs. MLflow cannot take a
user-chosen run id, so the id is written into the run directory the first time and every
later process (training ranks, resumed jobs, the evaluation) reopens that run.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from vice.config import TrackingConfig

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
PARENT_RUN_ID_FILE = "mlflow_parent_run_id"  # in a sweep directory: the run grouping its points
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
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git.commit": commit or "unknown", "git.dirty": str(dirty).lower()}


def read_run_id(run_dir: str | Path) -> str | None:
    path = Path(run_dir) / RUN_ID_FILE
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
    path = Path(sweep_dir) / PARENT_RUN_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(_experiment_id(client, cfg.experiment), run_name=run_name)
    _write_id(path, run.info.run_id)
    return run.info.run_id


class MlflowTracker(Tracker):
    """Logs to one MLflow run whose id lives in `<run_dir>/mlflow_run_id`.

    `parent_run_id` (a sweep's run, see `open_parent_run`) nests a new run under it; it is
    passed explicitly and never through MLFLOW_RUN_ID, which child processes would inherit.
    """

    def __init__(
        self,
        cfg: TrackingConfig,
        run_dir: str | Path,
        run_name: str | None = None,
        parent_run_id: str | None = None,
    ):
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.client = MlflowClient(tracking_uri=cfg.uri)
        self.run_id = read_run_id(self.run_dir)
        if self.run_id is None:
            tags = {PARENT_RUN_TAG: parent_run_id} if parent_run_id else None
            run = self.client.create_run(
                _experiment_id(self.client, cfg.experiment),
                run_name=run_name or cfg.run_name,
                tags=tags,
            )
            self.run_id = run.info.run_id
            _write_id(self.run_dir / RUN_ID_FILE, self.run_id)
        else:
            # Reopen a finished run (a resumed job or the chained eval) as running again.
            self.client.update_run(self.run_id, status="RUNNING")
        self.experiment_id = self.client.get_run(self.run_id).info.experiment_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        batch, long_values = [], {}
        for key, value in sorted(params.items()):
            text = str(value)
            if len(text) > MAX_PARAM_CHARS:
                long_values[key] = text
                text = text[: MAX_PARAM_CHARS - 40] + "... (full value in params_long.txt)"
            batch.append(Param(key[:250], text))
        for i in range(0, len(batch), 100):
            self.client.log_batch(self.run_id, params=batch[i : i + 100])
        if long_values:
            path = self.run_dir / "params_long.txt"
            path.write_text("".join(f"{k}: {v}\n" for k, v in long_values.items()))
            self.log_artifact(path)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 500])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def ui_command(self) -> str:
        uri = self.cfg.uri
        return (
            f"mlflow ui --backend-store-uri {uri}  # then open "
            f"http://127.0.0.1:5000/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        )


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

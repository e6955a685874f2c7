"""Experiment tracking: a no-op tracker, and MLflow behind the same small interface.

MLflow is imported lazily (it costs seconds) and only rank 0 logs. MLflow cannot take a
user-chosen run id, so the id is written into the run directory the first time and every
later process (training ranks, resumed jobs, the evaluation) reopens that run. A sweep's
parent run is kept the same way in the sweep directory (`SweepTracker`).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
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
RUN_NAME_TAG = "mlflow.runName"  # set as a tag too, so whichever process creates the run names it
MAX_RUN_NAME_CHARS = 250
# Overrides that change where a run is tracked or how it is submitted, not what it trains:
# left out of its name (the `overrides` tag keeps them).
UNNAMED_OVERRIDES = ("hydra.", "tracking.", "launch.")
# Params that only a SLURM job uses: left out of a local run's params.
SLURM_ONLY_PARAMS = ("cluster.", "launch.")


class Tracker:
    """Does nothing; the interface every tracker implements."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_model(self, path: str | Path, name: str = "model") -> None:
        """An MLflow model saved at `path` (`mlflow.pytorch.save_model`), logged to the run."""

    def log_inputs(self, datasets: list[dict[str, Any]]) -> None:
        """Data sets the run read (`dataset_input`), as MLflow dataset inputs."""

    def set_parent_sweep(self, sweep_dir: str | Path) -> None:
        """Nests the run under the parent run of the sweep in `sweep_dir`, whose id may not
        exist yet (the server was down when the sweep was launched)."""

    def finish(self, status: str = "FINISHED") -> None: ...

    def close(self) -> bool:
        """Sends what is pending; True when nothing is left."""
        return True

    def ui_command(self) -> str:
        return ""


def run_name(experiment: str | None, overrides: list[str]) -> str:
    """What distinguishes a run: the experiment, then its overrides with the shortest key
    that stays unambiguous, e.g. ["optim.lr=0.3", "trainer.nodes=2"] -> "smoke lr=0.3 nodes=2".

    `experiment=...` itself and the overrides of UNNAMED_OVERRIDES are left out.
    """
    items = []
    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if key == "experiment" or key.startswith(UNNAMED_OVERRIDES):
            continue
        items.append((key, sep, value))
    last = [key.rsplit(".", 1)[-1] for key, _, _ in items]
    words = [experiment] if experiment else []
    for (key, sep, value), short in zip(items, last, strict=True):
        words.append(f"{short if last.count(short) == 1 else key}{sep}{value}")
    return " ".join(words)[:MAX_RUN_NAME_CHARS] or "default"


def run_params(config: dict[str, Any], on_slurm: bool | None = None) -> dict[str, Any]:
    """The flattened config as MLflow params, without what does not describe the run: unset
    (None) values, the run directory (a tag), and on a local run the SLURM-only keys.

    Args:
        config: The config as a nested dict (`dataclasses.asdict(cfg)`).
        on_slurm: Whether the run is a SLURM job; None: whether SLURM_JOB_ID is set (a local
            run started inside a SLURM allocation keeps the cluster keys).
    """
    if on_slurm is None:
        on_slurm = bool(os.environ.get("SLURM_JOB_ID"))
    return {
        key: value
        for key, value in flatten(config).items()
        if value is not None
        and key != "run_dir"
        and (on_slurm or not key.startswith(SLURM_ONLY_PARAMS))
    }


def source_tags(entry_point: str, source_type: str) -> dict[str, str]:
    """MLflow's own source and user tags (its Source and User columns): `mlflow.source.name`
    the script that started the run, `mlflow.source.type` LOCAL or JOB (a SLURM job)."""
    return {
        "mlflow.source.name": entry_point,
        "mlflow.source.type": source_type,
        "mlflow.user": _user(),
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return str(os.getuid())


def dataset_input(
    name: str, root: str | None, split: str, num_images: int, context: str
) -> dict[str, Any]:
    """A data set as an MLflow dataset input (`Tracker.log_inputs`); `context` is MLflow's
    "train" / "eval" label of what the run did with it."""
    source = {"uri": str(root) if root else name}
    profile = {"split": split, "num_images": int(num_images)}
    digest = hashlib.sha256(json.dumps([name, source, profile]).encode()).hexdigest()[:10]
    return {
        "name": f"{name}/{split}",
        "digest": digest,
        "source_type": "local",
        "source": json.dumps(source),
        "profile": json.dumps(profile),
        "context": context,
    }


def ui_command(uri: str, experiment_id: str | None = None, run_id: str | None = None) -> str:
    """How to look at `uri`'s runs, as a command that works pasted as printed: the venv's
    own `mlflow` (not on the PATH outside it), an absolute SQLite path (the command may be
    run from another directory) and a free port (5000 is often taken on a login node)."""
    where = ""
    if experiment_id is not None:
        where = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/{where}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = f"sqlite:///{(Path.cwd() / uri.removeprefix('sqlite:///')).resolve()}"
    venv_mlflow = Path(sys.executable).parent / "mlflow"
    exe = str(venv_mlflow) if venv_mlflow.is_file() else "mlflow"
    port = free_port()
    return (
        f"{shlex.quote(exe)} ui --backend-store-uri {shlex.quote(uri)} --port {port}"
        f"  # then open http://127.0.0.1:{port}/{where}"
    )


def free_port(first: int = 5000, last: int = 5100) -> int:
    """The first port of [first, last] nobody listens on here (else one the OS picks)."""
    for port in range(first, last + 1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    return MlflowTracker.read_id(run_dir)


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
    """The MLflow run grouping a sweep's runs, journaled in the sweep dir as a point's run is
    in its run dir (`SweepTracker`): a launch never waits on the server, nor fails with it.

    A second call for the same sweep directory (another batch of the sweep) reopens the same
    run. Returns its id; None when tracking is disabled, or while the server has not answered
    (one warning says so): the run is then created by whichever process reaches the server
    first, a point's job nesting its run under it, or `tools/mlflow_sync.py`.
    """
    if not cfg.enabled:
        return None
    sweep = SweepDir(sweep_dir)
    first = not sweep.tracking_config.is_file()
    if first:  # the first batch names the run
        _write_sweep_config(sweep, cfg, run_name)
    tracker = SweepTracker(sweep_config(sweep.path) or cfg, sweep.path, background=False)
    if first:  # MLflow's Source, User and Version columns, as its points have them
        tracker.set_tags({**default_tags(), **source_tags("jobs/launch.py", "JOB")})
        tracker.flush()
    return tracker.run_id


def _write_sweep_config(sweep: SweepDir, cfg: TrackingConfig, run_name: str | None) -> None:
    sweep.tracking.mkdir(parents=True, exist_ok=True)
    fields = {"uri": cfg.uri, "experiment": cfg.experiment, "run_name": run_name}
    tmp = sweep.tracking_config.with_suffix(".tmp")
    tmp.write_text(json.dumps(fields))
    os.replace(tmp, sweep.tracking_config)


def sweep_config(sweep_dir: str | Path) -> TrackingConfig | None:
    """Where the sweep's parent run lives and its name; None when `sweep_dir` has no journaled
    parent run (no sweep, or one launched before the parent run was journaled)."""
    path = SweepDir(sweep_dir).tracking_config
    if not path.is_file():
        return None
    fields = json.loads(path.read_text())
    return TrackingConfig(uri=fields["uri"], experiment=fields["experiment"],
                          run_name=fields.get("run_name"))  # fmt: skip


def sweep_tracker(sweep_dir: str | Path, uri: str | None = None) -> SweepTracker | None:
    """The tracker of the sweep's parent run, sending on `close()` only; None when `sweep_dir`
    is no tracked sweep. `uri`: the server of a sweep whose parent run predates its journal."""
    cfg = sweep_config(sweep_dir)
    if cfg is None:
        if uri is None or SweepTracker.read_id(sweep_dir) is None:
            return None
        cfg = TrackingConfig(uri=uri)  # its run exists: the experiment's name is not needed
        _write_sweep_config(SweepDir(sweep_dir), cfg, None)  # journaled from now on
    return SweepTracker(cfg, sweep_dir, background=False, reopen=False)


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
    When the parent's id is not known yet, `set_parent_sweep` nests the run once it is.
    """

    RETRY_S = (2.0, 5.0, 10.0, 30.0, 60.0)  # waits between attempts while the server is down

    def __init__(
        self,
        cfg: TrackingConfig,
        run_dir: str | Path,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        background: bool = True,
        reopen: bool = True,
    ):
        """`reopen=False`: leave an existing run's status as it is (a sync tool, which only
        sends what others logged)."""
        from mlflow.tracking import MlflowClient

        quick_http_failures()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.client = MlflowClient(tracking_uri=cfg.uri)
        self.journal = Journal(self.run_dir)
        self.run_id = self.read_id(self.run_dir)
        self.experiment_id: str | None = None
        self._new_run = {"run_name": run_name or cfg.run_name, "parent": parent_run_id}
        self._sent: dict[str, set[int]] = {}  # metric key -> steps the run holds
        self._failures = 0
        self._wake = threading.Event()
        self._closing = False
        if reopen and (self.run_id is not None or self.journal.record()["status"] is not None):
            # A resumed job or the chained eval: RUNNING again, in order with the journal's
            # other operations (so a later terminate wins), also over a pending terminate.
            self.journal.append({"op": "reopen"})
        self.flush()  # creates or reopens the run now if the server answers
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._loop, name="mlflow-flush", daemon=True)
            self._thread.start()

    @classmethod
    def id_path(cls, directory: str | Path) -> Path:
        """Where the run's id is kept: the one place every process reads it from."""
        return RunDir(directory).mlflow_run_id

    @classmethod
    def read_id(cls, directory: str | Path) -> str | None:
        path = cls.id_path(directory)
        return path.read_text().strip() if path.is_file() else None

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

    def log_model(self, path: str | Path, name: str = "model") -> None:
        # Saved locally first (training never waits on the server); sent from the path.
        self.journal.append({"op": "model", "path": str(Path(path).resolve()), "name": name})
        self._wake.set()

    def log_inputs(self, datasets: list[dict[str, Any]]) -> None:
        self.journal.append({"op": "inputs", "datasets": datasets})
        self._wake.set()

    def set_parent_sweep(self, sweep_dir: str | Path) -> None:
        # Resolved when sent: the parent run's id then, creating that run if nobody has yet.
        self.journal.append({"op": "parent", "sweep_dir": str(Path(sweep_dir).resolve())})
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
        self.run_id = self.run_id or self.read_id(self.run_dir)  # another process created it
        if self.run_id is None:
            return ui_command(self.cfg.uri) + " (the run is created when the server answers)"
        if self.experiment_id is None:
            return ui_command(self.cfg.uri)
        return ui_command(self.cfg.uri, self.experiment_id, self.run_id)

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
            _LAST_WARNING.pop(self.cfg.uri, None)  # a new outage is said at once
        self._failures = 0
        return True

    def _connect(self) -> None:
        if self.run_id is None:
            # Another process of this run (the launcher, training's rank 0, the eval) may have
            # created it since this one started; the send lock orders them: one run per run dir.
            self.run_id = self.read_id(self.run_dir)
        if self.run_id is None:
            tags = {PARENT_RUN_TAG: self._new_run["parent"]} if self._new_run["parent"] else None
            run = self.client.create_run(
                _experiment_id(self.client, self.cfg.experiment),
                run_name=self._new_run["run_name"],
                tags=tags,
            )
            self.run_id = run.info.run_id
            _write_id(self.id_path(self.run_dir), self.run_id)
            self.experiment_id = run.info.experiment_id
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
        elif kind == "model":
            self._send_model(op)
        elif kind == "inputs":
            self._send_inputs(op)
        elif kind == "parent":
            parent = SweepTracker.reach(op["sweep_dir"], self.cfg)
            self.client.set_tag(self.run_id, PARENT_RUN_TAG, parent)
        elif kind == "reopen":
            self.client.update_run(self.run_id, status="RUNNING")
        elif kind == "terminate":
            self.client.set_terminated(self.run_id, op["status"])

    def _send_model(self, op: dict[str, Any]) -> None:
        """`mlflow.pytorch.log_model` of the model saved at op["path"]: a Logged Model of the
        run, with the run's params and its step-0 metrics (the evaluation's). Sent once: a
        retry after a lost answer finds the run's model output and stops."""
        import mlflow
        import mlflow.pytorch

        if not Path(op["path"]).exists():
            log.warning("model %s no longer exists; not sent to MLflow", op["path"])
            return
        outputs = self.client.get_run(self.run_id).outputs
        for output in outputs.model_outputs if outputs else []:
            if self.client.get_logged_model(output.model_id).name == op["name"]:
                return
        # Model.log resolves the tracking URI globally, not from our client.
        mlflow.set_tracking_uri(self.cfg.uri)
        model = mlflow.pytorch.load_model(op["path"], map_location="cpu")
        mlflow.pytorch.log_model(
            model,
            name=op["name"],
            run_id=self.run_id,
            pip_requirements=_requirements(op["path"]),
            serialization_format="pickle",  # as saved (pt2 would trace the network again)
            await_registration_for=0,
        )

    def _send_inputs(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for d in op["datasets"]:
            fields = {k: d[k] for k in ("name", "digest", "source_type", "source", "profile")}
            context = InputTag("mlflow.data.context", d["context"])
            inputs.append(DatasetInput(Dataset(**fields), tags=[context]))
        self.client.log_inputs(self.run_id, datasets=inputs)

    def _warn(self, err: BaseException) -> None:
        # Once a minute per server and process: a launcher's trackers (the sweep's and every
        # point's) meet the same outage, and say it in one line.
        now = time.monotonic()
        if now - _LAST_WARNING.get(self.cfg.uri, -60.0) < 60:
            return
        _LAST_WARNING[self.cfg.uri] = now
        pending = self.journal.pending_metric_values()
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        log.warning(
            "MLflow (%s) unreachable (%s): %s metric values pending in %s; they are sent "
            "when it answers again (nothing waits for it)",
            self.cfg.uri, first, pending, self.journal.pending_path,
        )  # fmt: skip


_LAST_WARNING: dict[str, float] = {}  # tracking URI -> when this process said it is unreachable


class SweepTracker(MlflowTracker):
    """A sweep's parent run: journaled in `<sweep_dir>/tracking/`, its id in
    `<sweep_dir>/mlflow_parent_run_id`. Whichever process reaches the server first creates
    it (the launcher, a point's job nesting its run, `tools/mlflow_sync.py`); the journal's
    send lock makes that one run per sweep, as for a point's run."""

    @classmethod
    def id_path(cls, directory: str | Path) -> Path:
        return SweepDir(directory).parent_run_id

    @classmethod
    def reach(cls, sweep_dir: str | Path, cfg: TrackingConfig) -> str:
        """The parent run's id, created now if nobody has yet (with the sweep's own config,
        else `cfg`); raises while the server does not answer."""
        run_id = cls.read_id(sweep_dir)
        if run_id is None:
            tracker = cls(sweep_config(sweep_dir) or cfg, sweep_dir, background=False, reopen=False)
            run_id = tracker.run_id
        if run_id is None:
            raise ConnectionError(f"the sweep's parent run ({sweep_dir}) could not be created")
        return run_id


def _requirements(model_dir: str) -> list[str]:
    """The saved model's pip requirements, passed on as they are (MLflow would otherwise
    infer them again by loading the model in a subprocess)."""
    path = Path(model_dir) / "requirements.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [line for line in lines if line.strip() and not line.startswith("#")]


def quick_http_failures() -> None:
    """MLflow's HTTP client retries for minutes by default; our sender retries on its own
    schedule, so one attempt should fail fast (a user's explicit setting wins). urllib3's
    warning on each retry is quiet: the tracker says once that the server is unreachable.
    So are the "View run ... at" lines the client prints on ending a run over HTTP: they
    would land in the middle of a job's log (or a tool's report) from the sending thread."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


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
    """Host, torch version, user and the code's commit: `git.*` (the project's own names)
    and `mlflow.source.git.commit` (what fills MLflow's Version column)."""
    import torch

    tags = {
        "host": socket.gethostname(),
        "torch.version": torch.__version__,
        "mlflow.user": _user(),
    }
    tags.update(git_info(Path(__file__).resolve().parents[1]))
    if tags.get("git.commit", "unknown") != "unknown":
        tags["mlflow.source.git.commit"] = tags["git.commit"]
    return tags

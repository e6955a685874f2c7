"""The run directory's file names, spelled in one place.

The run directory is the only state that survives a job: the resolved config, the MLflow run
id, numbered checkpoints, the final weights, the evaluation results, the stop log and (on
SLURM) the job record and submitit's folder. Every module that reads or writes one of these
files asks a `RunDir` for its path. Two neighbours follow the same rule: `EvalDir`, the
folder the evaluation writes (a run's `eval/`, or any folder a benchmark picks), and
`SweepDir`, the folder above the run directories of a sweep (`-m a=1,2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Dir:
    """A folder whose files are named by properties (nothing is created by asking)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


class EvalDir(_Dir):
    """What the evaluation writes into its folder."""

    @property
    def metrics(self) -> Path:
        """Flat metric keys, fractions in [0, 1] (`metrics.json`)."""
        return self.path / "metrics.json"

    @property
    def segmentations(self) -> Path:
        """Image / ground truth / clusters / linear prediction rows."""
        return self.path / "segmentations.png"

    @property
    def per_class_iou(self) -> Path:
        return self.path / "per_class_iou.png"


class SweepDir(_Dir):
    """The folder of a sweep: one numbered run directory per point, plus these files."""

    @property
    def parent_run_id(self) -> Path:
        """The MLflow run grouping the points' runs."""
        return self.path / "mlflow_parent_run_id"

    @property
    def tracking(self) -> Path:
        """The parent run's tracking journal, laid out as a run directory's (so `Journal(sweep_dir)`
        reads it: `vice.tracking_journal`)."""
        return self.path / "tracking"

    @property
    def tracking_config(self) -> Path:
        """Where and under which name the parent run is created (`tracking.uri`, `experiment`,
        `run_name` as JSON), for whichever process reaches the server first."""
        return self.tracking / "sweep.json"

    @property
    def code(self) -> Path:
        """The code snapshot every job of the launch runs (`jobs/snapshot.py`)."""
        return self.path / "code"

    def summary(self, suffix: str) -> Path:
        """The table of every point's metrics (`.md` or `.csv`)."""
        return self.path / f"sweep_summary{suffix}"

    @property
    def summary_lock(self) -> Path:
        """Serialises the eval jobs that rewrite the summary."""
        return self.path / ".sweep_summary.lock"


class RunDir(_Dir):
    """Paths inside one run directory."""

    @property
    def config(self) -> Path:
        """The resolved, validated config (`config.yaml`)."""
        return self.path / "config.yaml"

    @property
    def mlflow_run_id(self) -> Path:
        """The MLflow run every process and resumed job logs into."""
        return self.path / "mlflow_run_id"

    @property
    def params_long(self) -> Path:
        """Config values longer than MLflow takes as a param, in full."""
        return self.path / "params_long.txt"

    @property
    def checkpoints(self) -> Path:
        """`step_<N>/` folders of complete checkpoints."""
        return self.path / "checkpoints"

    @property
    def final_weights(self) -> Path:
        """The exported network's state dict (`method.export()`), what evaluation loads."""
        return self.path / "model_final.pt"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def eval(self) -> EvalDir:
        return EvalDir(self.eval_dir)

    @property
    def metrics(self) -> Path:
        """The evaluation's metrics (`eval/metrics.json`)."""
        return self.eval.metrics

    @property
    def eval_figures(self) -> tuple[Path, Path]:
        return self.eval.segmentations, self.eval.per_class_iou

    @property
    def stops(self) -> Path:
        """One JSON line per stop on a signal (`stops.jsonl`)."""
        return self.path / "stops.jsonl"

    @property
    def tracking(self) -> Path:
        """The tracking journal (what MLflow has not accepted yet)."""
        return self.path / "tracking"

    @property
    def jobs(self) -> Path:
        """What was submitted to SLURM (`jobs.json`)."""
        return self.path / "jobs.json"

    @property
    def slurm(self) -> Path:
        """submitit's folder: scripts, pickles, one log pair per task."""
        return self.path / "slurm"

    @property
    def sweep(self) -> SweepDir:
        """The folder above; a sweep's when this run is one of its points."""
        return SweepDir(self.path.parent)

    def views_figure(self, index: int) -> Path:
        """What the network is trained on: the views of image `index` of `data.split`."""
        return self.path / f"views_{index}.png"

"""Run-directory level steps shared by every launcher: config I/O, evaluating a run and
drawing what it was trained on. `jobs/stages.py` chains them; file names come from
`vice.run_dir.RunDir`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from vice.config import Config
from vice.hydra_schema import to_config
from vice.hydra_schema import write_config as write_config  # re-exported
from vice.run_dir import RunDir
from vice.tracking import Tracker, build_tracker, dataset_input

log = logging.getLogger(__name__)

# Eval numbers that describe the evaluation rather than score the network: tags, not metrics.
EVAL_BOOKKEEPING = frozenset(
    {"num_images", "num_classes", "image_size", "skipped_images", "linear.train_images",
     "mask_kmeans.clusters"}
)  # fmt: skip
MLFLOW_MODEL_DIR = "mlflow_model"  # the run directory's copy of the logged MLflow model


def load_config(run_dir: str | Path) -> Config:
    path = RunDir(run_dir).config
    if not path.is_file():
        raise FileNotFoundError(
            f"no {path.name} in run directory {run_dir}; pass the directory a launch wrote"
        )
    return to_config(OmegaConf.load(path))


def load_final_model(cfg: Config, run_dir: str | Path, device: torch.device) -> torch.nn.Module:
    """The pretrained network (`method.export()`): the final weights, else the newest
    complete checkpoint's method state."""
    from vice.methods import METHODS, build_method
    from vice.run_dir import RunDir
    from vice.train.checkpoint import CheckpointManager

    rd = RunDir(run_dir)
    method_cls = METHODS[cfg.method.name]
    method = build_method(cfg)
    network = method.export()
    if rd.final_weights.is_file():
        weights = torch.load(rd.final_weights, map_location="cpu", weights_only=True)
        network.load_state_dict(method_cls.upgrade_final_weights(weights))
    else:
        loaded = CheckpointManager(rd.checkpoints, cfg.trainer.keep_checkpoints).load_latest()
        if loaded is None:
            raise FileNotFoundError(
                f"run {run_dir} has neither {rd.final_weights.name} nor a checkpoint"
            )
        state, path = loaded
        method.load_state_dict(method_cls.current_checkpoint(state, str(path))["method"])
    return network.to(device).eval()


def untrained_network(cfg: Config) -> torch.nn.Module:
    """The evaluated architecture as pretraining starts it (`method.export()` right after
    `torch.manual_seed(trainer.seed)`), for the `random_init` floors; the caller's RNG state
    is left as it was."""
    from vice.methods import build_method

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.trainer.seed)
        return build_method(cfg).export().eval()


def evaluate_run(
    cfg: Config,
    run_dir: str | Path,
    tracker: Tracker | None = None,
    model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Evaluates the run's network and the floors (`eval.floors`) on the eval split; logs
    every score as the metric `eval.<key>` into the run's MLflow run, with the headline
    metrics (`headline_metrics`), the strongest floor of each margin as the tag
    `eval.margin.<key>.floor`, the bookkeeping (EVAL_BOOKKEEPING) as `eval.<key>` tags, and
    the eval split as a dataset input."""
    from vice.data.datasets import build_source
    from vice.eval.evaluate import evaluate
    from vice.eval.floors import build_floors

    run = RunDir(run_dir)
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.trainer.device != "cpu" else "cpu"
    )
    tracker = tracker or build_tracker(cfg.tracking, run_dir)
    model = model if model is not None else load_final_model(cfg, run_dir, device)
    eval_source = build_source(cfg.data, split=cfg.data.eval_split, labels=True)
    train_source = None
    if cfg.eval.linear:
        train_source = build_source(cfg.data, split=cfg.eval.linear_train_split, labels=True)
    floors, floors_skipped = [], {}
    if cfg.eval.floors.enabled:
        needs_network = any(n.startswith("random_init") for n in cfg.eval.floors.names)
        floors, floors_skipped = build_floors(
            cfg.eval.floors.names,
            cfg.data.views.mean,
            cfg.data.views.std,
            random_network=untrained_network(cfg) if needs_network else None,
            dim=cfg.eval.floors.dim,
            batch_size=cfg.eval.batch_size,
            device=device,
            amp=cfg.trainer.amp,
        )
    metrics = evaluate(
        model,
        eval_source,
        train_source,
        cfg.eval,
        cfg.data.views.mean,
        cfg.data.views.std,
        device,
        run.eval_dir,
        amp=cfg.trainer.amp,
        floors=floors,
        floors_skipped=list(floors_skipped),
    )
    numeric = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in EVAL_BOOKKEEPING
    }
    scores = {f"eval.{k}": v for k, v in numeric.items()}
    tracker.log_metrics({**scores, **headline_metrics(metrics)}, step=0)
    tags = {
        f"eval.{k}": v
        for k, v in metrics.items()
        if (k.startswith("margin.") and k.endswith(".floor")) or k in EVAL_BOOKKEEPING
    }
    if tags:
        tracker.set_tags(tags)
    if "num_images" in metrics:
        tracker.log_inputs(
            [dataset_input(cfg.data.dataset, cfg.data.root, cfg.data.eval_split,
                           metrics["num_images"], "eval")]
        )  # fmt: skip
    for path in (run.metrics, *run.eval_figures):
        if path.is_file():
            tracker.log_artifact(path, "eval")
    return metrics


def headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """One number to sort runs by: `miou`, clustering mIoU at C = #classes (Hungarian; see
    `vice.eval.summary.headline_key`), and `miou_margin`, its margin over the strongest floor
    when floors were evaluated. {} when the clustering did not run."""
    from vice.eval.summary import headline_key

    key = headline_key(metrics)
    if key is None:
        return {}
    out = {"miou": float(metrics[key])}
    if f"margin.{key}" in metrics:
        out["miou_margin"] = float(metrics[f"margin.{key}"])
    return out


def save_mlflow_model(cfg: Config, run_dir: str | Path) -> Path:
    """The pretrained network (on the CPU) saved as an MLflow pytorch model in the run
    directory (replacing an earlier copy), with the config beside it; the tracker sends it."""
    import shutil

    import mlflow.pytorch

    path = RunDir(run_dir).path / MLFLOW_MODEL_DIR
    if path.exists():
        shutil.rmtree(path)
    network = load_final_model(cfg, run_dir, torch.device("cpu"))
    mlflow.pytorch.save_model(
        network,
        path,
        pip_requirements=[f"torch=={torch.__version__}"],  # no inference pass in a subprocess
        # Pickled (MLflow 3's default, pt2, traces the network and needs an input example);
        # loading it needs the vice package importable.
        serialization_format="pickle",
        extra_files=[str(RunDir(run_dir).config)],
        metadata={"method": cfg.method.name, "backbone": cfg.model.backbone},
    )
    return path


def render_views(cfg: Config, run_dir: str | Path) -> list[Path]:
    """Views figures of `figure.indices` (what the network is trained on) into the run dir.

    Each sample builder's figure comes from `vice.viz.sample_figures.SAMPLE_FIGURES` (views
    with superpixels and masks; crops on the source with their overlap box or mask). A method
    trained on a builder without one gets none (an empty list) rather than a picture of data
    it never saw.
    """
    from vice.data.datasets import build_source
    from vice.methods import METHODS
    from vice.viz.sample_figures import SAMPLE_FIGURES

    builder = METHODS[cfg.method.name].sample_builder
    figure = SAMPLE_FIGURES.get(builder)
    if figure is None:
        log.info(
            "no views figure for method %s (no figure draws its sample builder %s)",
            cfg.method.name,
            builder,
        )
        return []
    source = build_source(cfg.data)
    draw = figure(cfg, source)
    written = []
    for index in cfg.figure.indices:
        if index >= len(source):
            raise ValueError(
                f"invalid config value figure.indices: {index} is past the "
                f"{len(source)} images of data.split={cfg.data.split!r}"
            )
        out = RunDir(run_dir).views_figure(index)
        draw(index).save(out)
        written.append(out)
    return written

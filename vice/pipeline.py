"""Run-directory level steps shared by every launcher: config I/O and evaluating a run.

The run directory is the only state that survives a job: the resolved `config.yaml`, the
MLflow run id, numbered checkpoints, the final weights and the evaluation results.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from vice.config import Config
from vice.hydra_schema import CONFIG_FILE, to_config
from vice.hydra_schema import write_config as write_config  # re-exported
from vice.tracking import Tracker, build_tracker

log = logging.getLogger(__name__)


def load_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in run directory {run_dir}")
    return to_config(OmegaConf.load(path))


def load_final_model(cfg: Config, run_dir: str | Path, device: torch.device) -> torch.nn.Module:
    """The pretrained network: final weights, else the newest complete checkpoint."""
    from vice.models import build_model
    from vice.train.checkpoint import CheckpointManager
    from vice.train.trainer import FINAL_WEIGHTS

    model = build_model(cfg.model)
    final = Path(run_dir) / FINAL_WEIGHTS
    if final.is_file():
        state = torch.load(final, map_location="cpu", weights_only=True)
    else:
        loaded = CheckpointManager(
            Path(run_dir) / "checkpoints", cfg.trainer.keep_checkpoints
        ).load_latest()
        if loaded is None:
            raise FileNotFoundError(f"run {run_dir} has neither {FINAL_WEIGHTS} nor a checkpoint")
        state = loaded[0]["model"]
    model.load_state_dict(state)
    return model.to(device).eval()


def evaluate_run(
    cfg: Config,
    run_dir: str | Path,
    tracker: Tracker | None = None,
    model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Evaluates the run's network on the eval split; logs into the run's MLflow run."""
    from vice.data.datasets import build_source
    from vice.eval.evaluate import evaluate

    run_dir = Path(run_dir)
    device = torch.device(
        "cuda" if torch.cuda.is_available() and cfg.trainer.device != "cpu" else "cpu"
    )
    tracker = tracker or build_tracker(cfg.tracking, run_dir)
    model = model if model is not None else load_final_model(cfg, run_dir, device)
    eval_source = build_source(cfg.data, split=cfg.data.eval_split, labels=True)
    train_source = None
    if cfg.eval.linear:
        train_source = build_source(cfg.data, split=cfg.eval.linear_train_split, labels=True)
    metrics = evaluate(
        model,
        eval_source,
        train_source,
        cfg.eval,
        cfg.data.views.mean,
        cfg.data.views.std,
        device,
        run_dir / "eval",
        amp=cfg.trainer.amp,
    )
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    tracker.log_metrics({f"eval.{k}": v for k, v in numeric.items()}, step=0)
    for name in ("metrics.json", "segmentations.png", "per_class_iou.png"):
        path = run_dir / "eval" / name
        if path.is_file():
            tracker.log_artifact(path, "eval")
    return metrics


def render_views(cfg: Config, run_dir: str | Path) -> list[Path]:
    """Views figures of `figure.indices` (what the network is trained on) into the run dir."""
    from vice.data.datasets import build_source
    from vice.data.pretrain import ViceDataset
    from vice.viz.views_figure import render_views_figure

    source = build_source(cfg.data)
    dataset = ViceDataset(source, cfg.data, keep_debug=True)
    written = []
    for index in cfg.figure.indices:
        if index >= len(source):
            raise ValueError(
                f"invalid config value figure.indices: {index} is past the "
                f"{len(source)} images of data.split={cfg.data.split!r}"
            )
        item = dataset[(cfg.figure.epoch, index)]
        img, ids = dataset.prepare(item["index"])
        fig = render_views_figure(
            img,
            ids,
            item["sample"],
            cfg.data.views.mean,
            cfg.data.views.std,
            title=f"{cfg.data.dataset} {source.key(item['index'])}",
        )
        out = Path(run_dir) / f"views_{index}.png"
        fig.save(out)
        written.append(out)
    return written

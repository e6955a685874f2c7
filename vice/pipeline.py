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
from vice.tracking import Tracker, build_tracker

log = logging.getLogger(__name__)


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
        if "format" not in state:
            state = method_cls.upgrade_checkpoint(state, str(path))
        method.load_state_dict(state["method"])
    return network.to(device).eval()


def evaluate_run(
    cfg: Config,
    run_dir: str | Path,
    tracker: Tracker | None = None,
    model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Evaluates the run's network on the eval split; logs into the run's MLflow run."""
    from vice.data.datasets import build_source
    from vice.eval.evaluate import evaluate

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
    )
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    tracker.log_metrics({f"eval.{k}": v for k, v in numeric.items()}, step=0)
    for path in (run.metrics, *run.eval_figures):
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
        out = RunDir(run_dir).views_figure(index)
        fig.save(out)
        written.append(out)
    return written

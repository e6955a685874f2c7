"""The structured config schema for Hydra (imported by entry points), and the run directory's
resolved config file. Nothing here imports torch: the launcher uses it and must start fast."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from vice.config import Config
from vice.secrets import redact_tree

SCHEMA_NAME = "vice_schema"
CONFIG_FILE = "config.yaml"


def register() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


def to_config(cfg: DictConfig | dict[str, Any]) -> Config:
    """Typed, validated Config from a composed Hydra config (raises ValueError on bad values)."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    merged = OmegaConf.merge(OmegaConf.structured(Config), node)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, Config)
    return config.validate()


def write_config(cfg: Config, run_dir: str | Path) -> Path:
    """Writes `<run_dir>/config.yaml` atomically; returns its path.

    Values that look like secrets (a key such as `password`, an environment secret's value,
    a password inside a URL) are written as `***`: the file is uploaded to MLflow and shared
    with the run directory. Credentials reach jobs through the environment instead
    (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN, AWS_*), which SLURM passes on.
    """
    path = Path(run_dir) / CONFIG_FILE
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(redact_tree(asdict(cfg)))))
    os.replace(tmp, path)
    return path

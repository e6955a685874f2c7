"""Registers the structured config schema with Hydra's ConfigStore (imported by entry points)."""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from vice.config import Config

SCHEMA_NAME = "vice_schema"


def register() -> None:
    ConfigStore.instance().store(name=SCHEMA_NAME, node=Config)


def to_config(cfg: DictConfig | dict[str, Any]) -> Config:
    """Typed, validated Config from a composed Hydra config (raises ValueError on bad values)."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    merged = OmegaConf.merge(OmegaConf.structured(Config), node)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, Config)
    return config.validate()

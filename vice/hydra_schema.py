"""The structured config schema for Hydra (imported by entry points), and the run directory's
resolved config file.

The method's schema comes from the method registry itself (`vice.methods.METHODS[name]
.Config`, stored as `method/<name>_schema` for the files of the `conf/method/` group), so
the schemas import torch: ~1-3 s at the start of the launcher.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from vice.config import Config, MethodConfig, from_dict
from vice.run_dir import RunDir
from vice.secrets import redact_tree

SCHEMA_NAME = "vice_schema"


def register() -> None:
    from vice.methods import METHODS

    store = ConfigStore.instance()
    # `method` is typed by the selected method's own schema (the `method` group's
    # `<name>_schema`), so the root schema leaves it untyped: typed by Config's default
    # (ViceConfig), merging another method's schema into it fails.
    schema = OmegaConf.structured(Config)
    schema.method = {}
    store.store(name=SCHEMA_NAME, node=schema)
    for name, method in METHODS.items():
        store.store(group="method", name=f"{name}_schema", node=method.Config)


def method_config(values: dict[str, Any] | MethodConfig | None) -> MethodConfig:
    """The method's typed schema from its keys (`name` picks the schema in the registry)."""
    if isinstance(values, MethodConfig):
        return values
    from vice.methods import METHODS

    values = dict(values or {})
    name = values.get("name", "vice")
    if name not in METHODS:
        raise ValueError(f"invalid config value method.name={name!r}: one of {sorted(METHODS)}")
    return from_dict(METHODS[name].Config, values, "method")


def _upgrade_legacy(node: DictConfig) -> DictConfig:
    """Keys of a config.yaml written before the method interface: the prototype count was
    `model.num_prototypes` (ViCE's `method.num_prototypes` now), the trunk's start weights
    `model.weights` (`model.init_weights` now)."""
    model = node.get("model")
    if model is None or not ({"num_prototypes", "weights"} & set(model)):
        return node
    node = node.copy()
    with open_dict(node):
        if "num_prototypes" in node.model:
            count = node.model.pop("num_prototypes")
            node.method = node.get("method") or {}
            node.method.setdefault("num_prototypes", count)
        if "weights" in node.model:
            node.model.setdefault("init_weights", node.model.pop("weights"))
    return node


def unknown_keys(values: Any, schema: type, prefix: str = "") -> list[str]:
    """Full names of the keys in `values` (a nested dict) that `schema` (a dataclass) does
    not have. Hydra lets `+trainer.foo=1` through and OmegaConf would then carry the key
    along silently; a free-form dict field (e.g. cluster.additional) takes any key."""
    if not isinstance(values, dict):
        return []
    fields = {f.name: f for f in dataclasses.fields(schema)}
    found = []
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in fields:
            found.append(full)
            continue
        default = fields[key].default_factory  # type: ignore[misc]
        nested = default() if callable(default) else None
        if dataclasses.is_dataclass(nested):
            found.extend(unknown_keys(value, type(nested), f"{full}."))
    return found


def _refuse_unknown(node: DictConfig) -> None:
    from vice.methods import METHODS

    values = OmegaConf.to_container(node, resolve=False)
    assert isinstance(values, dict)
    method = values.pop("method", None) or {}
    unknown = unknown_keys(values, Config)
    name = method.get("name", "vice") if isinstance(method, dict) else "vice"
    if name in METHODS:
        unknown += unknown_keys(method, METHODS[name].Config, "method.")
    if unknown:
        raise ValueError(
            f"unknown config key {unknown[0]}"
            + (f" (and {len(unknown) - 1} more: {unknown[1:4]})" if len(unknown) > 1 else "")
            + "; it is not in the schema (vice/config.py, the method's Config): check the "
            "spelling, or remove it"
        )


def to_config(cfg: DictConfig | dict[str, Any]) -> Config:
    """Typed, validated Config from a composed Hydra config (raises ValueError on bad values)."""
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    node = _upgrade_legacy(node)
    _refuse_unknown(node)
    method = node.get("method")
    # The method's section is typed by its own schema (the `method` group), the rest by
    # Config: built apart, so that any method's schema fits Config's `method: Any`.
    rest = OmegaConf.masked_copy(node, [k for k in node if k != "method"])
    merged = OmegaConf.merge(OmegaConf.structured(Config), rest)
    config = OmegaConf.to_object(merged)
    assert isinstance(config, Config)
    if method is not None:
        values = OmegaConf.to_object(method) if isinstance(method, DictConfig) else method
        config.method = method_config(values)
    return config.validate()


def write_config(cfg: Config, run_dir: str | Path) -> Path:
    """Writes `<run_dir>/config.yaml` atomically; returns its path.

    Values that look like secrets (a key such as `password`, an environment secret's value,
    a password inside a URL) are written as `***`: the file is uploaded to MLflow and shared
    with the run directory. Credentials reach jobs through the environment instead
    (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN, AWS_*), which SLURM passes on.
    """
    path = RunDir(run_dir).config
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(OmegaConf.to_yaml(OmegaConf.create(redact_tree(asdict(cfg)))))
    os.replace(tmp, path)
    return path

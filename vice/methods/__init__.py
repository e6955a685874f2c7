"""Self-supervised methods by name. `METHODS` is the registry: a plain dict.

A method is one entry here: a `vice.methods.base.Method` subclass with its schema
(`Config`), its sample builder (`sample_builder`) and a `conf/method/<name>.yaml`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vice.methods.base import Method
from vice.methods.maskcontrast import MaskContrastConfig, MaskContrastMethod
from vice.methods.slotcon import SlotConConfig, SlotConMethod
from vice.methods.vice import ViceConfig, ViceMethod

if TYPE_CHECKING:
    from vice.config import Config

METHODS: dict[str, type[Method]] = {
    "vice": ViceMethod,
    "slotcon": SlotConMethod,
    "maskcontrast": MaskContrastMethod,
}

__all__ = [
    "METHODS",
    "MaskContrastConfig",
    "MaskContrastMethod",
    "Method",
    "SlotConConfig",
    "SlotConMethod",
    "ViceConfig",
    "ViceMethod",
    "build_method",
]


def build_method(cfg: Config, world_size: int = 1) -> Method:
    """The configured method, its parameters drawn from torch's global RNG (seed it first)."""
    return METHODS[cfg.method.name](cfg, world_size)

"""Self-supervised methods by name. `METHODS` is the registry: a plain dict."""

from __future__ import annotations

from vice.methods.vice import ViceMethod

METHODS = {"vice": ViceMethod}

__all__ = ["METHODS", "ViceMethod"]

"""Dtype helper for the loss path: reduced precision is upcast, float64 is kept.

Embeddings, scores and BatchNorm statistics are computed in float32 under bf16 autocast.
`.float()` would also turn a float64 model's tensors into float32; keeping float64 lets the
whole pipeline run in double precision, which the DDP-equivalence test relies on.
"""

from __future__ import annotations

import torch


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """`t` as float32 when it is of lower precision (bf16, fp16); unchanged otherwise."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()

"""Floors: reference feature maps scored by the same code on the same images as the network.

Shape legend: N images, S square side in px, D feature channels, R regions (instances).

A learned dense embedding counts only as a margin over the strongest floor. Each floor is a
feature map of the eval (and probe-training) images that `vice.eval.evaluate` scores exactly
like the network's embedding (same k-means, matching, probe and region metrics):

| name | features | what it bounds |
|---|---|---|
| `chance` | a seeded Gaussian vector per pixel | nothing learned, nothing grouped |
| `instance_random` | one random vector per ground-truth instance | perfect grouping, no semantics |
| `instance_mean_colour` | the mean normalised colour of each instance | perfect grouping + colour |
| `raw_colour` | each pixel's normalised colour | colour alone |
| `random_init` | the evaluated architecture as pretraining starts it | the architecture's prior |
| `random_init_<layer>` | that network's trunk layer (`TrunkLayer`) | the same, earlier |

The instance floors need the source's instance maps (`ImageSource.has_instances`); without
them they are skipped. `random_init` is the network before training: random weights, or the
`model.init_weights` the trunk starts from when that is set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from vice.eval.baselines import raw_colour_features
from vice.eval.features import extract_features
from vice.eval.regions import region_index
from vice.eval.trunk import TrunkLayer

#: The floors of a default eval, in the order they are scored.
DEFAULT_FLOORS = (
    "chance",
    "instance_random",
    "instance_mean_colour",
    "raw_colour",
    "random_init",
    "random_init_layer2",
)
_FIXED = ("chance", "instance_random", "instance_mean_colour", "raw_colour", "random_init")
_TRUNK = re.compile(r"random_init_(layer[1-4])")
INSTANCE_FLOORS = ("instance_random", "instance_mean_colour")

#: images (N, S, S, 3) uint8, instances (N, S, S) int64 or None, seed -> (N, D, S, S) float32.
FloorFeatures = Callable[[np.ndarray, np.ndarray | None, int], torch.Tensor]


def check_floor_name(name: str) -> None:
    """Raises ValueError unless `name` is a floor (one of DEFAULT_FLOORS' kinds)."""
    if name not in _FIXED and not _TRUNK.fullmatch(name):
        raise ValueError(f"unknown floor {name!r}; one of {list(_FIXED)} or random_init_layer1..4")


def _channels_last(x_NSSD: torch.Tensor) -> torch.Tensor:
    # permute of a (N, S, S, D) tensor is channels-last (N, D, S, S): pixels_PD is a view.
    return x_NSSD.permute(0, 3, 1, 2)


def chance_features(n: int, size: int, dim: int = 32, seed: int = 0) -> torch.Tensor:
    """A standard Gaussian vector per pixel: float32 (N, dim, S, S), channels-last."""
    gen = torch.Generator().manual_seed(seed)
    return _channels_last(torch.randn((n, size, size, dim), generator=gen))


def instance_random_features(
    instances_NSS: np.ndarray, dim: int = 32, seed: int = 0
) -> torch.Tensor:
    """One standard Gaussian vector per ground-truth instance of each image (pixels of one
    instance share it; instances of different images never do): float32 (N, dim, S, S)."""
    region_P, r = region_index(instances_NSS)
    gen = torch.Generator().manual_seed(seed)
    vectors_RD = torch.randn((r, dim), generator=gen)
    n, h, w = np.shape(instances_NSS)
    return _channels_last(vectors_RD[torch.from_numpy(region_P)].reshape(n, h, w, dim))


def instance_mean_colour_features(
    images_NSS3: np.ndarray,
    instances_NSS: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """The mean normalised RGB of each instance of each image, at its pixels: (N, 3, S, S)."""
    region_P, r = region_index(instances_NSS)
    x_P3 = raw_colour_features(images_NSS3, mean, std).permute(0, 2, 3, 1).reshape(-1, 3)
    region_t = torch.from_numpy(region_P)
    sums_R3 = torch.zeros((r, 3), dtype=torch.float64).index_add_(0, region_t, x_P3.double())
    counts_R = torch.bincount(region_t, minlength=r).clamp_min(1)
    mean_R3 = (sums_R3 / counts_R[:, None]).float()
    n, h, w = np.shape(instances_NSS)
    return _channels_last(mean_R3[region_t].reshape(n, h, w, 3))


@dataclass(frozen=True)
class Floor:
    """A named feature map of the eval images; `needs_instances`: skipped without them."""

    name: str
    features: FloorFeatures
    needs_instances: bool = False


def build_floors(
    names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    random_network: nn.Module | None = None,
    dim: int = 32,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    amp: bool = True,
) -> tuple[list[Floor], dict[str, str]]:
    """The named floors.

    Args:
        names: Floor names (see the module docstring); unknown names raise ValueError.
        mean, std: Input normalisation of the network (also the colour floors').
        random_network: The evaluated architecture, not trained (`model(x_BCHW) -> z_BDHW`
            at input resolution, with a `backbone` for the trunk floors); None skips
            `random_init*`.
        dim: Channels of the random floors (`chance`, `instance_random`).
        batch_size, device, amp: How the network floors are run (as the network itself).

    Returns:
        The floors, in the order of `names`, and {name: why} of the floors skipped here.
    """
    floors: list[Floor] = []
    skipped: dict[str, str] = {}
    for name in dict.fromkeys(names):
        check_floor_name(name)
        if name == "chance":
            floors.append(Floor(name, partial(_chance, dim=dim)))
        elif name == "instance_random":
            floors.append(Floor(name, partial(_instance_random, dim=dim), needs_instances=True))
        elif name == "instance_mean_colour":
            floors.append(
                Floor(
                    name, partial(_instance_mean_colour, mean=mean, std=std), needs_instances=True
                )
            )
        elif name == "raw_colour":
            floors.append(Floor(name, partial(_raw_colour, mean=mean, std=std)))
        elif random_network is None:
            skipped[name] = "no untrained network given"
        else:
            trunk = _TRUNK.fullmatch(name)
            model = TrunkLayer(random_network, trunk.group(1)) if trunk else random_network
            run = partial(
                extract_features,
                model,
                mean=list(mean),
                std=list(std),
                batch_size=batch_size,
                device=device,
                amp=amp,
            )
            floors.append(Floor(name, partial(_network, run=run)))
    return floors, skipped


# The floors as FloorFeatures: (images, instances, seed) -> features.
def _chance(images_NSS3, _instances, seed, dim):
    return chance_features(len(images_NSS3), images_NSS3.shape[1], dim, seed)


def _instance_random(_images, instances_NSS, seed, dim):
    return instance_random_features(instances_NSS, dim, seed)


def _instance_mean_colour(images_NSS3, instances_NSS, _seed, mean, std):
    return instance_mean_colour_features(images_NSS3, instances_NSS, mean, std)


def _raw_colour(images_NSS3, _instances, _seed, mean, std):
    return raw_colour_features(images_NSS3, mean, std)


def _network(images_NSS3, _instances, _seed, run):
    return run(images_NSS3)


def margin_keys(metrics: dict) -> list[str]:
    """The network metrics with a margin over the floors: every clustering and probe mIoU,
    the mask k-means mIoU and the region metrics (higher is better for all of them)."""
    return [
        k
        for k in metrics
        if (k.startswith("clustering.") and k.endswith(".miou"))
        or k in ("linear.miou", "mask_kmeans.miou", "region.nn_same_class", "region.probe_acc")
    ]


def margins(metrics: dict, floor_names: Sequence[str]) -> dict:
    """Network minus the strongest floor, for every metric in `margin_keys`.

    Args:
        metrics: The network's metrics (`<key>`) and the floors' (`floors.<name>.<key>`).
        floor_names: The floors scored.

    Returns:
        `margin.<key>`: the difference, and `margin.<key>.floor`: the strongest floor's name,
        for each key that the network and at least one floor have (None/NaN values are left
        out).
    """
    out: dict = {}
    for key in margin_keys(metrics):
        net = metrics[key]
        if not _is_number(net):
            continue
        scores = {
            name: metrics[f"floors.{name}.{key}"]
            for name in floor_names
            if _is_number(metrics.get(f"floors.{name}.{key}"))
        }
        if not scores:
            continue
        best = max(scores, key=lambda name: scores[name])  # ties: the first floor listed
        out[f"margin.{key}"] = float(net) - float(scores[best])
        out[f"margin.{key}.floor"] = best
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

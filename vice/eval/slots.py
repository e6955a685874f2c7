"""Collapse check of a grouping method (SlotCon): are its prototypes and slots in use?

Shape legend: N images, S square side in px.

A grouping method can collapse in two ways that its loss does not show: every pixel of every
image on one prototype (nothing is grouped), or a few prototypes shared by all images (slots
split images into halves, not objects). Hard assignments (each pixel's arg-max prototype)
against the ground-truth instances tell both apart: how many prototypes are in use over the
eval set, and how many distinct slots an image has next to how many objects it has.
"""

from __future__ import annotations

import numpy as np


def slot_usage(assign_NSS: np.ndarray, instances_NSS: np.ndarray, num_prototypes: int) -> dict:
    """Prototype and slot counts of hard assignments, beside ground-truth instance counts.

    Args:
        assign_NSS: int, each pixel's prototype index in [0, num_prototypes).
        instances_NSS: int, ground-truth instance ids (any non-negative ids per image).
        num_prototypes: K, the method's prototypes.

    Returns:
        `prototypes_used` (distinct prototypes over all images), `prototypes_used_frac`
        (of K), `slots_per_image` and `objects_per_image` (means of the distinct
        prototypes / instances per image), `slots_per_object` (their ratio).
    """
    if assign_NSS.shape != instances_NSS.shape:
        raise ValueError(
            f"assignments {assign_NSS.shape} and instances {instances_NSS.shape} differ in shape"
        )
    if assign_NSS.size and (assign_NSS.min() < 0 or assign_NSS.max() >= num_prototypes):
        raise ValueError(f"assignments must lie in [0, {num_prototypes})")
    used = np.unique(assign_NSS)
    slots = [len(np.unique(a)) for a in assign_NSS]
    objects = [len(np.unique(i)) for i in instances_NSS]
    slots_mean, objects_mean = float(np.mean(slots)), float(np.mean(objects))
    return {
        "prototypes_used": int(used.size),
        "prototypes_used_frac": used.size / num_prototypes,
        "slots_per_image": slots_mean,
        "objects_per_image": objects_mean,
        "slots_per_object": slots_mean / objects_mean,
    }

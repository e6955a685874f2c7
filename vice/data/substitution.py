"""Map-style training data sets whose samples are pure functions of (data.seed, epoch, index),
replacing images that cannot give a sample (`SubstitutingDataset`).

An image that cannot give a sample (unreadable, no usable mask prior, ...) is replaced by
another one drawn from the key's own generator, and counted: the batch carries the count to
the trainer, and a warning is logged. Whether an image is passed over for good (unreadable)
or only for this key (a random draw that did not fit) is the sample builder's to say.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import torch

from vice.config import DataConfig
from vice.data.datasets.base import ImageSource

log = logging.getLogger(__name__)

_SUBSTITUTE = 1  # stream tags: generators of different purposes stay independent
_SAMPLE = 2


class SkipImageError(Exception):
    """Image `index` gives no sample; `for_good`: not for any key (else: this key's draw)."""

    def __init__(self, reason: str, for_good: bool = True) -> None:
        super().__init__(reason)
        self.for_good = for_good


class SubstitutingDataset(torch.utils.data.Dataset):
    """Indexed by (epoch, index) keys (a bare int means epoch 0); subclasses `build` one
    sample of image `current` from `rng`, the generator of (seed, epoch, index, current).

    Returns dicts {"sample", "key", "index" (the image used), "skipped" (images replaced)}.
    """

    #: What to check when every try failed (ends the RuntimeError's text).
    hint: ClassVar[str] = "Check data.root and the images it holds."

    def __init__(self, source: ImageSource, cfg: DataConfig) -> None:
        if len(source) == 0:
            raise ValueError(f"data set {type(source).__name__} is empty")
        self.source = source
        self.cfg = cfg
        self.skipped_total = 0  # per process; batches carry their own count to the trainer
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def build(self, current: int, rng: np.random.Generator) -> Any:
        """The sample of image `current`; raises SkipImageError when it gives none."""
        raise NotImplementedError

    def __getitem__(self, key: Any) -> dict[str, Any]:
        epoch, index = (0, int(key)) if np.isscalar(key) else (int(key[0]), int(key[1]))
        seed = self.cfg.seed
        current, skipped = index, 0
        tries = self.cfg.max_resample * 4
        for attempt in range(tries):
            if current not in self._bad:
                try:
                    rng = np.random.default_rng([seed, epoch, index, _SAMPLE, current])
                    sample = self.build(current, rng)
                except SkipImageError as err:
                    skipped += 1
                    self.skipped_total += 1
                    if err.for_good:
                        self._bad.add(current)
                    log.warning(
                        "skipping image %d (%d skipped so far): %s",
                        current, self.skipped_total, err,
                    )  # fmt: skip
                else:
                    return {"sample": sample, "key": (epoch, index), "index": current,
                            "skipped": skipped}  # fmt: skip
            sub = np.random.default_rng([seed, epoch, index, _SUBSTITUTE, attempt])
            current = int(sub.integers(len(self.source)))
        raise RuntimeError(
            f"could not build a sample for index {index} (epoch {epoch}) after {tries} tries; "
            f"{skipped} images skipped on the way. {self.hint}"
        )

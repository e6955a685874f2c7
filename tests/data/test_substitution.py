import logging

import pytest

from vice.config import DataConfig
from vice.data.datasets.synthetic import SyntheticSource
from vice.data.substitution import SkipImageError, SubstitutingDataset


class Picky(SubstitutingDataset):
    """Image 0 never gives a sample; image 1 only on some draws of its key's generator."""

    def build(self, current, rng):
        if current == 0:
            raise SkipImageError("image zero")
        if current == 1 and rng.random() < 0.5:
            raise SkipImageError("unlucky draw", for_good=False)
        return current


def _ds(length=6):
    return Picky(SyntheticSource(length=length, size=32), DataConfig(max_resample=2))


def test_items_are_pure_functions_of_their_key(caplog):
    ds = _ds()
    with caplog.at_level(logging.WARNING):
        first = ds[(0, 0)]
    assert first["sample"] != 0 and first["skipped"] == 1 and first["key"] == (0, 0)
    assert caplog.messages == ["skipping image 0 (1 skipped so far): image zero"]
    assert _ds()[(0, 0)] == first  # a fresh data set gives the same item
    again = ds[(0, 0)]  # image 0 is passed over for good now: not counted again
    assert again["index"] == first["index"] and again["skipped"] == 0
    assert ds[3] == ds[(0, 3)] and ds[(0, 3)]["sample"] == 3


def test_a_draw_that_did_not_fit_bans_the_image_for_that_key_only():
    ds = _ds()
    outcomes = {e: ds[(e, 1)]["index"] for e in range(12)}
    assert 1 in outcomes.values() and any(i != 1 for i in outcomes.values())
    fresh = _ds()
    assert all(fresh[(e, 1)]["index"] == i for e, i in outcomes.items())


def test_no_image_left_is_an_error_with_the_hint():
    with pytest.raises(RuntimeError, match=r"after 8 tries; 1 images skipped on the way\. Check"):
        _ds(length=1)[(0, 0)]

import pytest

from vice.data.batches import ViceBatch
from vice.data.builders import SAMPLE_BUILDERS, build_samples
from vice.data.datasets import build_source
from vice.methods import METHODS


def test_every_method_names_a_registered_builder():
    for name, method in METHODS.items():
        assert method.sample_builder in SAMPLE_BUILDERS, name


def test_a_builder_collates_into_its_typed_batch(small_cfg):
    samples = build_samples("vice_views", build_source(small_cfg), small_cfg)
    batch = samples.collate([samples[(0, 0)], samples[(0, 1)]])
    assert isinstance(batch, ViceBatch) and batch.views.shape[1] == 2


def test_unknown_builder_is_named():
    expected = r"unknown sample builder 'pairs'; known: \['mask_crops', 'two_crops', 'vice_views'\]"
    with pytest.raises(ValueError, match=expected):
        build_samples("pairs", None, None)

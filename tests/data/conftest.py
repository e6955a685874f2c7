import pytest

from vice.config import DataConfig, SuperpixelConfig, SyntheticConfig, ViewConfig


@pytest.fixture
def small_cfg() -> DataConfig:
    """Published sampling at a tenth of the scale: fast enough for unit tests."""
    return DataConfig(
        synthetic=SyntheticConfig(length=64, size=128),
        superpixels=SuperpixelConfig(region_size=10),
        views=ViewConfig(short_side=128, view_size=48),
        num_workers=0,
    )

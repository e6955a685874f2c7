import pytest
from hydra import compose, initialize_config_dir

from vice.config import ViewConfig
from vice.hydra_schema import register, to_config

from .test_packaging import ROOT


def test_hydra_dict_to_typed_config():
    cfg = to_config({"data": {"views": {"view_size": 64}}})
    assert isinstance(cfg.data.views, ViewConfig) and cfg.data.views.view_size == 64
    with pytest.raises(ValueError, match=r"data.views.view_size=4"):
        to_config({"data": {"views": {"view_size": 4}}})


def test_compose_default_and_overrides():
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = to_config(compose("config"))
        assert cfg.data.dataset == "synthetic" and cfg.data.views.view_size == 96
        cfg = to_config(compose("config", ["data=coco", "data.root=/x"]))
        assert cfg.data.views.view_size == 400 and cfg.data.split == "train+unlabeled"

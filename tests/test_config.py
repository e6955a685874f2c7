import pytest

from vice.config import Config, DataConfig, MaskConfig, ViewConfig, from_dict


def test_defaults_are_the_published_settings():
    d = DataConfig()
    assert (d.views.short_side, d.views.view_size, d.views.num_views) == (500, 400, 5)
    assert (d.views.crop_scale_min, d.views.crop_scale_max, d.views.kappa) == (0.5, 1.5, 2.0)
    assert (d.views.brightness, d.views.contrast, d.views.saturation, d.views.hue) == (
        0.8,
        0.8,
        0.8,
        0.2,
    )
    assert (d.views.jitter_prob, d.views.gray_prob, d.views.blur_prob) == (0.8, 0.2, 0.5)
    assert (d.superpixels.region_size, d.superpixels.compactness) == (20, 10.0)
    assert (d.masking.max_box_ratio, d.masking.protect_ratio) == (0.25, 0.25)
    assert (d.masking.noise_low, d.masking.noise_high) == (-1.0, 1.0)
    Config().validate()


@pytest.mark.parametrize(
    "cfg,message",
    [
        (
            DataConfig(dataset="imagenet"),
            "invalid config value data.dataset='imagenet': one of ['cityscapes', 'coco', ",
        ),
        (
            DataConfig(dataset="coco"),
            "invalid config value data.root=None: data set 'coco' needs its directory",
        ),
        (
            DataConfig(views=ViewConfig(num_views=1)),
            "invalid config value data.views.num_views=1: must be in [2, inf]",
        ),
        (
            DataConfig(views=ViewConfig(crop_scale_min=1.0, crop_scale_max=0.9)),
            "invalid config value data.views.crop_scale_max=0.9: must be in [1.0, inf]",
        ),
        (
            DataConfig(views=ViewConfig(hue=0.7)),
            "invalid config value data.views.hue=0.7: must be in [0.0, 0.5]",
        ),
        (
            DataConfig(masking=MaskConfig(protect_ratio=1.5)),
            "invalid config value data.masking.protect_ratio=1.5: must be in [0.0, 1.0]",
        ),
        (
            DataConfig(masking=MaskConfig(max_box_ratio=0.0)),
            "invalid config value data.masking.max_box_ratio=0.0: must be in (0.0, 1.0]",
        ),
        (
            DataConfig(views=ViewConfig(mean=[0.5, 0.5])),
            "invalid config value data.views.mean=[0.5, 0.5]: a list of 3 numbers (R, G, B)",
        ),
        (
            DataConfig(views=ViewConfig(mean=[0.5, float("nan"), 0.5])),
            "invalid config value data.views.mean=[0.5, nan, 0.5]: every entry must be a finite "
            "number",
        ),
        (
            DataConfig(views=ViewConfig(std=[0.2, 0.2, float("inf")])),
            "invalid config value data.views.std=[0.2, 0.2, inf]: every entry must be a finite "
            "number",
        ),
    ],
)
def test_invalid_values_name_key_value_and_what_is_allowed(cfg, message):
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert str(err.value).startswith(message)


def test_from_dict_rejects_unknown_keys_by_full_name():
    with pytest.raises(ValueError, match=r"unknown config key views.viewsize; known keys"):
        from_dict(DataConfig, {"views": {"viewsize": 3}})
    cfg = from_dict(DataConfig, {"views": {"view_size": 64}, "seed": 3})
    assert cfg.views.view_size == 64 and cfg.seed == 3 and cfg.views.num_views == 5

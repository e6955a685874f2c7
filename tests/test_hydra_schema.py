import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from vice.config import ViewConfig
from vice.hydra_schema import register, to_config
from vice.methods import METHODS, ViceConfig

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
        assert cfg.data.dataset == "synthetic" and cfg.data.views.view_size == 64
        cfg = to_config(compose("config", ["data=coco", "data.root=/x"]))
        assert cfg.data.views.view_size == 400 and cfg.data.split == "train+unlabeled"


def test_local_experiment_is_the_recipe_that_learns_at_cpu_scale():
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = to_config(compose("config"))
    # the recipe docs/vice_synthetic_history.md and bench/methods.py were measured with
    assert (cfg.model.backbone, cfg.model.decoder, cfg.method.num_prototypes) == (
        "resnet18", "fpn", 16)  # fmt: skip
    assert (cfg.optim.name, cfg.optim.lr, cfg.method.epsilon, cfg.method.queue_length) == (
        "sgd", 0.05, 0.03, 0)  # fmt: skip
    assert (cfg.data.views.view_size, cfg.data.batch_size, cfg.trainer.max_steps) == (64, 8, 150)
    views = cfg.data.views
    assert (views.crop_scale_min, views.crop_scale_max) == (1.0, 1.0)
    assert (views.jitter_prob, views.gray_prob, views.blur_prob) == (0.0, 0.0, 0.0)


def test_saved_config_holds_no_secrets(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from vice.config import Config
    from vice.hydra_schema import write_config

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-98765")
    cfg = Config()
    cfg.tracking.uri = "https://alice:s3cret@mlflow.example.org"
    cfg.cluster.additional = {"comment": "tok-98765", "api_key": "k-1"}
    text = write_config(cfg, tmp_path).read_text()
    assert "s3cret" not in text and "tok-98765" not in text and "k-1" not in text
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.tracking.uri == "https://alice:***@mlflow.example.org"
    assert saved.cluster.additional.api_key == "***"
    assert saved.optim.lr == cfg.optim.lr


EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = to_config(compose("config", [f"experiment={experiment}", "data.root=/data"]))
    assert type(cfg.method) is METHODS[cfg.method.name].Config


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_composes_with_the_default_recipe(method):
    """`python jobs/launch.py method=<name>`: the local recipe plus the method's own keys at
    that scale (conf/tuning/local_<name>.yaml)."""
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = to_config(compose("config", [f"method={method}"]))
    assert cfg.method.name == method and cfg.trainer.max_steps == 150


def test_method_group_is_typed_by_the_method_schema():
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = to_config(compose("config", ["method=vice", "method.temperature=0.2"]))
        assert isinstance(cfg.method, ViceConfig) and cfg.method.temperature == 0.2
        with pytest.raises(ConfigCompositionException):
            compose("config", ["method=moco"])  # no such method
        with pytest.raises(ConfigCompositionException, match=r"method\.temperature=warm"):
            compose("config", ["method.temperature=warm"])  # a float, by ViceConfig
    with pytest.raises(ValueError, match=r"unknown config key method\.tau"):
        to_config({"method": {"name": "vice", "tau": 1.0}})
    with pytest.raises(
        ValueError, match=r"method\.name='moco': one of \['maskcontrast', 'slotcon', 'vice'\]"
    ):
        to_config({"method": {"name": "moco"}})


def test_config_written_before_the_method_interface_still_loads():
    """`model.num_prototypes` was ViCE's prototype count; it is `method.num_prototypes`."""
    cfg = to_config({"model": {"num_prototypes": 9}, "method": {"name": "vice"}})
    assert cfg.method.num_prototypes == 9 and not hasattr(cfg.model, "num_prototypes")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+trainer.foo=1", "unknown config key trainer.foo; it is not in the schema"),
        ("+method.tau=1", "unknown config key method.tau; it is not in the schema"),
        ("+data.views.sizee=3", "unknown config key data.views.sizee; it is not in the schema"),
        ("optim.lr=nan", "invalid config value optim.lr=nan: must be a finite number"),
        ("optim.weight_decay=inf", "invalid config value optim.weight_decay=inf: must be a"),
        ("method.temperature=-inf", "invalid config value method.temperature=-inf: must be"),
    ],
)
def test_appended_unknown_keys_and_non_finite_numbers_are_refused(override, message):
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        node = compose("config", [override])
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        to_config(node)


def test_free_form_sbatch_options_take_any_key():
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = to_config(compose("config", ["+cluster.additional.mail-type=END"]))
    assert cfg.cluster.additional == {"mail-type": "END"}

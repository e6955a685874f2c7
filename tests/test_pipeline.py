import pytest
import torch

from vice.models import build_model
from vice.pipeline import load_config, load_final_model, write_config
from vice.train.checkpoint import CheckpointManager
from vice.train.trainer import FINAL_WEIGHTS

from .train.test_trainer import tiny_config


def test_config_round_trip(tmp_path):
    cfg = tiny_config()
    cfg.run_dir = str(tmp_path)
    path = write_config(cfg, tmp_path)
    assert path.name == "config.yaml" and not list(tmp_path.glob("*.tmp"))
    again = load_config(tmp_path)
    assert again == cfg


def test_missing_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config.yaml in run directory"):
        load_config(tmp_path)


def test_final_model_prefers_final_weights_then_checkpoint(tmp_path):
    cfg = tiny_config()
    with pytest.raises(FileNotFoundError, match=r"neither model_final\.pt nor a checkpoint"):
        load_final_model(cfg, tmp_path, torch.device("cpu"))
    torch.manual_seed(1)
    ckpt_model = build_model(cfg.model)
    CheckpointManager(tmp_path / "checkpoints").save({"model": ckpt_model.state_dict()}, 5)
    got = load_final_model(cfg, tmp_path, torch.device("cpu"))
    assert torch.equal(got.prototypes.weight, ckpt_model.prototypes.weight)
    assert not got.training
    torch.manual_seed(2)
    final_model = build_model(cfg.model)
    torch.save(final_model.state_dict(), tmp_path / FINAL_WEIGHTS)
    got = load_final_model(cfg, tmp_path, torch.device("cpu"))
    assert torch.equal(got.prototypes.weight, final_model.prototypes.weight)

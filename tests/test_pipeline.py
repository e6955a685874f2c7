import pytest
import torch

from vice.methods import ViceMethod
from vice.pipeline import load_config, load_final_model, write_config
from vice.run_dir import RunDir
from vice.train.checkpoint import CheckpointManager

from .train.test_trainer import tiny_config


def test_config_round_trip(tmp_path):
    cfg = tiny_config()
    cfg.run_dir = str(tmp_path)
    path = write_config(cfg, tmp_path)
    assert path == RunDir(tmp_path).config and not list(tmp_path.glob("*.tmp"))
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
    ckpt_method = ViceMethod(cfg)
    CheckpointManager(RunDir(tmp_path).checkpoints).save(
        {"format": 2, "method_name": "vice", "method": ckpt_method.state_dict()}, 5
    )
    got = load_final_model(cfg, tmp_path, torch.device("cpu"))
    head = "decoder.head.weight"
    assert torch.equal(got.state_dict()[head], ckpt_method.export().state_dict()[head])
    assert not got.training
    torch.manual_seed(2)
    final = ViceMethod(cfg).export()
    torch.save(final.state_dict(), RunDir(tmp_path).final_weights)
    got = load_final_model(cfg, tmp_path, torch.device("cpu"))
    assert torch.equal(got.state_dict()[head], final.state_dict()[head])


def test_format_1_final_weights_and_checkpoints_still_load(tmp_path):
    """Before the method interface, `model` / model_final.pt held network and prototypes."""
    cfg = tiny_config()
    torch.manual_seed(3)
    method = ViceMethod(cfg)
    old = {k.removeprefix("network."): v for k, v in method.state_dict().items()}
    CheckpointManager(RunDir(tmp_path).checkpoints).save({"step": 5, "model": old}, 5)
    head = "decoder.head.weight"
    got = load_final_model(cfg, tmp_path, torch.device("cpu"))
    assert torch.equal(got.state_dict()[head], old[head])
    torch.save(old, RunDir(tmp_path).final_weights)
    got = load_final_model(cfg, tmp_path, torch.device("cpu"))
    assert torch.equal(got.state_dict()[head], old[head])

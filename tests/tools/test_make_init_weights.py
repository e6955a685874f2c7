import pytest
import torch

from tools.make_init_weights import main


@pytest.mark.slow
def test_writes_a_torchvision_format_trunk(tmp_path, capsys):
    out = tmp_path / "init.pt"
    code = main(["--out", str(out), "--images", "8", "--size", "32", "--steps", "2"])
    assert code == 0
    state = torch.load(out, weights_only=True)
    assert "conv1.weight" in state and "layer4.1.bn2.weight" in state
    assert not any(k.startswith("fc.") for k in state)
    assert f"model.init_weights={out}" in capsys.readouterr().out


def test_a_data_set_without_an_init_split_is_named(tmp_path, capsys):
    code = main(["--out", str(tmp_path / "x.pt"), "--dataset", "folder"])
    assert code == 2
    assert "needs an 'init' split" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()

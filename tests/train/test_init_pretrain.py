import numpy as np
import pytest
import torch

from vice.config import ModelConfig
from vice.data.datasets.base import IGNORE_INDEX
from vice.data.datasets.synthetic import SyntheticSource
from vice.models import build_model
from vice.train.init_pretrain import InitRecipe, presence_BC, pretrain_image_level, save_trunk


def test_presence_marks_the_classes_an_image_contains():
    labels = np.array([[[0, 0], [2, IGNORE_INDEX]], [[1, 1], [1, 1]]])
    assert presence_BC(labels, 3).tolist() == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]


def test_init_split_is_disjoint_from_train_and_val():
    init = SyntheticSource(split="init", length=2, size=32)
    for split in ("train", "val"):
        other = SyntheticSource(split=split, length=2, size=32)
        assert not np.array_equal(init.load_image(0), other.load_image(0))


@pytest.mark.slow
def test_trunk_learns_and_loads_as_model_init_weights(tmp_path):
    source = SyntheticSource(split="init", length=16, size=32)
    recipe = InitRecipe(images=16, size=32, steps=12, batch_size=8, lr=0.05)
    trunk, losses = pretrain_image_level(source, recipe, log_every=0)
    assert len(losses) == 12 and np.mean(losses[-4:]) < np.mean(losses[:4])
    path = save_trunk(trunk, tmp_path / "init.pt")
    model = build_model(ModelConfig(backbone="resnet18", output_stride=16, init_weights=str(path)))
    for key, value in trunk.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
    with pytest.raises(ValueError, match=r"model\.init_weights=.*does not match"):
        build_model(ModelConfig(backbone="resnet50", init_weights=str(path)))

"""DenseEmbeddingModel and build_model: unit embeddings at input resolution, layouts, grads."""

from __future__ import annotations

import pytest
import torch
import torchvision

from vice.config import ModelConfig
from vice.models import DenseEmbeddingModel, Prototypes, build_model
from vice.models.backbones import BACKBONES

SLOW = pytest.mark.slow


def unit_norm_everywhere(z_BDHW: torch.Tensor) -> None:
    torch.testing.assert_close(z_BDHW.norm(dim=1), torch.ones_like(z_BDHW[:, 0]))


@pytest.mark.parametrize("decoder", ["deeplabv3plus", "fpn"])
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("size", [(64, 64), (65, 97), (33, 17)])
def test_resnet18_output_shape_and_unit_norm(decoder, output_stride, size) -> None:
    cfg = ModelConfig(
        backbone="resnet18",
        output_stride=output_stride,
        decoder=decoder,
        embed_dim=32,
    )
    model = build_model(cfg).eval()
    assert isinstance(model, DenseEmbeddingModel)
    assert not any(isinstance(m, Prototypes) for m in model.modules())  # the method's
    with torch.no_grad():
        z = model(torch.randn(2, 3, *size))
    assert z.shape == (2, 32, *size) and z.dtype == torch.float32
    unit_norm_everywhere(z)


@pytest.mark.parametrize("backbone", ["resnet50", pytest.param("resnet101", marks=SLOW)])
@pytest.mark.parametrize("decoder", ["deeplabv3plus", "fpn"])
def test_deep_trunks_output_shape(backbone, decoder) -> None:
    model = build_model(ModelConfig(backbone=backbone, decoder=decoder)).eval()
    with torch.no_grad():
        z = model(torch.randn(1, 3, 65, 97))
    assert z.shape == (1, 128, 65, 97)
    unit_norm_everywhere(z)


@pytest.mark.parametrize("decoder", ["deeplabv3plus", "fpn"])
def test_channels_last_equals_contiguous(decoder) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", decoder=decoder)).eval()
    x = torch.randn(2, 3, 49, 33)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("decoder", ["deeplabv3plus", "fpn"])
def test_gradients_reach_every_trunk_and_decoder_parameter(decoder) -> None:
    model = build_model(ModelConfig(backbone="resnet18", decoder=decoder, embed_dim=16))
    z = model(torch.randn(2, 3, 33, 49))
    # z has unit norm per pixel, so z.sum() has degenerate gradients; project randomly instead.
    (z * torch.randn_like(z)).sum().backward()
    for name, p in [*model.backbone.named_parameters(), *model.decoder.named_parameters()]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_keeps_float32_unit_output() -> None:
    model = build_model(ModelConfig(backbone="resnet18", embed_dim=16)).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z = model(torch.randn(1, 3, 48, 40))
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(1, 48, 40), atol=1e-6, rtol=1e-6)


def test_parameter_counts_add_up() -> None:
    cfg = ModelConfig(backbone="resnet18", decoder="fpn", embed_dim=32)
    model = build_model(cfg)
    tv = torchvision.models.resnet18(weights=None)
    trunk = sum(p.numel() for p in tv.parameters()) - tv.fc.weight.numel() - tv.fc.bias.numel()
    assert sum(p.numel() for p in model.backbone.parameters()) == trunk
    # FPN: four 1x1 laterals to 128 (with bias) + a 1x1 head to 32 (with bias).
    fpn = sum(c * 128 + 128 for c in (64, 128, 256, 512)) + 128 * 32 + 32
    assert sum(p.numel() for p in model.decoder.parameters()) == fpn
    assert sum(p.numel() for p in model.parameters()) == trunk + fpn


def test_build_model_is_seeded_by_global_rng() -> None:
    cfg = ModelConfig(backbone="resnet18", decoder="fpn")
    torch.manual_seed(1)
    a = build_model(cfg).state_dict()
    torch.manual_seed(1)
    b = build_model(cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_build_model_loads_local_weights(tmp_path) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    model = build_model(ModelConfig(backbone="resnet18", init_weights=str(path)))
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    with pytest.raises(ValueError, match=r"model\.init_weights"):
        build_model(ModelConfig(backbone="resnet50", init_weights=str(path)))


def test_build_model_validates_config() -> None:
    with pytest.raises(ValueError, match=r"model\.backbone"):
        build_model(ModelConfig(backbone="vgg16"))
    with pytest.raises(ValueError, match=r"model\.output_stride"):
        build_model(ModelConfig(output_stride=32))
    assert set(BACKBONES) == {"resnet18", "resnet50", "resnet101"}

"""Dilated ResNet trunks: feature shapes, dilation convention, parameters, local weights."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn

from vice.models.backbones import BACKBONES, FEATURE_NAMES, build_backbone

EXPECTED_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}


def halve(n: int, times: int) -> int:
    """torchvision's stride-2 ops (7x7 p3, 3x3 p1 conv and maxpool, 1x1 p0) map n -> ceil(n/2)."""
    for _ in range(times):
        n = (n - 1) // 2 + 1
    return n


def expected_sizes(h: int, w: int, output_stride: int) -> dict[str, tuple[int, int]]:
    deep = 3 if output_stride == 8 else 4
    halvings = {"layer1": 2, "layer2": 3, "layer3": deep, "layer4": deep}
    return {k: (halve(h, n), halve(w, n)) for k, n in halvings.items()}


def three_by_three_dilations(layer: nn.Sequential) -> list[int]:
    """Dilation of each block's 3x3 conv(s) (both equal in a BasicBlock)."""
    out = []
    for block in layer:
        convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert len({c.dilation for c in convs}) == 1
        assert all(c.padding == c.dilation for c in convs)
        out.append(convs[0].dilation[0])
    return out


def strides(module: nn.Module) -> list[int]:
    return [m.stride[0] for m in module.modules() if isinstance(m, nn.Conv2d)]


@functools.cache
def cached_trunk(name: str, output_stride: int):
    """Shared by the shape tests, which never modify it (building R101 alone takes ~1 s)."""
    return build_backbone(name, output_stride).eval()


TRUNKS = ["resnet18", "resnet50", pytest.param("resnet101", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", TRUNKS)
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("size", [(64, 64), (65, 97)])
def test_feature_shapes(name: str, output_stride: int, size: tuple[int, int]) -> None:
    trunk = cached_trunk(name, output_stride)
    assert trunk.channels == dict(zip(FEATURE_NAMES, EXPECTED_CHANNELS[name], strict=True))
    with torch.no_grad():
        features = trunk(torch.randn(1, 3, *size))
    assert list(features) == list(FEATURE_NAMES)
    sizes = expected_sizes(*size, output_stride)
    for key, x in features.items():
        assert tuple(x.shape) == (1, trunk.channels[key], *sizes[key]), key


def test_expected_sizes_match_undilated_torchvision() -> None:
    # The size rule itself, checked against torchvision's plain ResNet-18 (stride 32).
    tv = torchvision.models.resnet18(weights=None).eval()
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(torch.randn(1, 3, 65, 97)))))
    for layer, n in zip((tv.layer1, tv.layer2, tv.layer3, tv.layer4), (2, 3, 4, 5), strict=True):
        x = layer(x)
        assert tuple(x.shape[-2:]) == (halve(65, n), halve(97, n))


@pytest.mark.parametrize("output_stride", [8, 16])
def test_resnet18_dilation_follows_torchvision_convention(output_stride: int) -> None:
    """ResNet-18 is dilated by hand; the per-block rule must equal torchvision's Bottleneck one."""
    r18 = build_backbone("resnet18", output_stride)
    r50 = build_backbone("resnet50", output_stride)
    for name in ("layer2", "layer3", "layer4"):
        d18 = three_by_three_dilations(getattr(r18, name))
        d50 = three_by_three_dilations(getattr(r50, name))
        assert d18 == d50[:1] + d50[-1:] * (len(d18) - 1), name
    expected = {8: ([1, 1], [1, 2], [2, 4]), 16: ([1, 1], [1, 1], [1, 2])}[output_stride]
    got = tuple(three_by_three_dilations(getattr(r18, n)) for n in ("layer2", "layer3", "layer4"))
    assert got == expected
    dilated = ("layer3", "layer4") if output_stride == 8 else ("layer4",)
    for name in dilated:
        assert max(strides(getattr(r18, name))) == 1, name


@pytest.mark.parametrize("name", TRUNKS)
def test_parameter_count_equals_torchvision_without_fc(name: str) -> None:
    tv = BACKBONES[name](weights=None)
    expected = sum(p.numel() for p in tv.parameters()) - sum(p.numel() for p in tv.fc.parameters())
    assert sum(p.numel() for p in cached_trunk(name, 8).parameters()) == expected


def test_dilated_resnet50_matches_torchvision_forward(tmp_path) -> None:
    """Same weights, same dilation: our trunk's pooled layer4 equals torchvision's pooled output."""
    tv = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    path = tmp_path / "r50.pth"
    torch.save(tv.state_dict(), path)
    trunk = build_backbone("resnet50", 8, str(path)).eval()
    tv.fc = nn.Identity()
    x = torch.randn(1, 3, 33, 49)
    with torch.no_grad():
        pooled = trunk(x)["layer4"].mean(dim=(2, 3))
        torch.testing.assert_close(pooled, tv.eval()(x))


def test_local_weights_load_and_fc_is_ignored(tmp_path) -> None:
    tv = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for p in tv.parameters():
            p.normal_()
        tv.bn1.running_mean.normal_()
    state = tv.state_dict()
    assert any(k.startswith("fc.") for k in state)
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    trunk = build_backbone("resnet18", 8, str(path))
    loaded = trunk.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key

    no_fc = {k: v for k, v in state.items() if not k.startswith("fc.")}
    torch.save(no_fc, path)
    assert torch.equal(
        build_backbone("resnet18", 16, str(path)).conv1.weight, state["conv1.weight"]
    )


def test_missing_weight_file_names_the_key(tmp_path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(ValueError, match=r"model\.init_weights=.*nope\.pth.*no such file"):
        build_backbone("resnet18", 8, str(path))


def test_wrong_architecture_names_the_key(tmp_path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"model\.init_weights=.*r50\.pth.*does not match") as err:
        build_backbone("resnet18", 8, str(path))
    assert "unexpected keys" in str(err.value)
    assert "shape mismatches" in str(err.value)


def test_missing_key_and_garbage_file(tmp_path) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer2.0.bn1.running_var"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"model\.init_weights.*1 missing keys.*layer2\.0\.bn1"):
        build_backbone("resnet18", 8, str(path))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"model\.init_weights.*cannot be read"):
        build_backbone("resnet18", 8, str(path))
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match=r"model\.init_weights.*a dict of tensors"):
        build_backbone("resnet18", 8, str(path))


def test_unknown_backbone_and_stride() -> None:
    with pytest.raises(ValueError, match="resnet34"):
        build_backbone("resnet34")
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("resnet18", 32)


def test_until_stops_after_the_named_layer_with_the_same_values() -> None:
    torch.manual_seed(0)
    trunk = build_backbone("resnet18", output_stride=16).eval()
    x = torch.randn(1, 3, 32, 32)
    calls: list[str] = []
    for name in FEATURE_NAMES:
        getattr(trunk, name).register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    with torch.no_grad():
        full = trunk(x)
        calls.clear()
        early = trunk(x, until="layer2")
    assert list(early) == ["layer1", "layer2"]
    assert calls == ["layer1", "layer2"]  # layer3 and layer4 never ran
    torch.testing.assert_close(early["layer2"], full["layer2"], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"unknown trunk layer 'layer9'; one of \['layer1'"):
        trunk(x, until="layer9")

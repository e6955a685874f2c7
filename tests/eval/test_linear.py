import numpy as np
import pytest
import torch
from torch import nn

from vice.eval.linear import predict_linear, train_linear_probe


def _separable(n=4, d=6, s=8, k=3, seed=0):
    """Features of class c point near e_c; a quarter of the pixels is ignored (label 255)
    and carries misleading features, which the probe must never train on."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n, s, s), generator=g)
    feats = torch.eye(d)[labels].permute(0, 3, 1, 2) + 0.2 * torch.randn(n, d, s, s, generator=g)
    feats = torch.nn.functional.normalize(feats, dim=1)
    ignore = torch.rand(n, s, s, generator=g) < 0.25
    feats.permute(0, 2, 3, 1)[ignore] = torch.eye(d)[(labels[ignore] + 1) % k]
    labels_np = labels.numpy().copy()
    labels_np[ignore.numpy()] = 255
    return feats, labels_np, labels.numpy()


def test_reaches_full_accuracy_on_linearly_separable_features():
    feats, labels, clean = _separable()
    head = train_linear_probe(feats, labels, 3, iters=150, lr=1.0, batch_pixels=256, seed=0)
    assert isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1)
    assert (head.in_channels, head.out_channels) == (6, 3)
    pred = predict_linear(head, feats)
    assert pred.shape == (4, 8, 8) and pred.dtype == torch.long
    valid = labels != 255
    assert (pred.numpy()[valid] == clean[valid]).mean() == 1.0
    # predict_linear is the conv applied to every pixel.
    with torch.no_grad():
        torch.testing.assert_close(pred, head(feats).argmax(1))


def test_generalises_to_held_out_features_and_is_deterministic():
    feats, labels, _ = _separable(seed=1)
    test_feats, test_labels, test_clean = _separable(seed=2)
    a = train_linear_probe(feats, labels, 3, iters=100, lr=1.0, batch_pixels=128, seed=3)
    b = train_linear_probe(feats, labels, 3, iters=100, lr=1.0, batch_pixels=128, seed=3)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    # Test pixels labelled 255 carry the wrong class's direction on purpose; score the rest.
    valid = test_labels != 255
    assert (predict_linear(a, test_feats).numpy()[valid] == test_clean[valid]).mean() > 0.99


def test_channels_last_features_give_the_same_probe():
    feats, labels, _ = _separable()
    a = train_linear_probe(feats, labels, 3, iters=20, lr=0.5, batch_pixels=64, seed=0)
    cl = feats.contiguous(memory_format=torch.channels_last)
    b = train_linear_probe(cl, labels, 3, iters=20, lr=0.5, batch_pixels=64, seed=0)
    torch.testing.assert_close(a.weight, b.weight)


def test_rejects_all_ignored_labels():
    feats, labels, _ = _separable()
    with pytest.raises(ValueError, match="IGNORE_INDEX"):
        train_linear_probe(feats, np.full_like(labels, 255), 3, iters=1)

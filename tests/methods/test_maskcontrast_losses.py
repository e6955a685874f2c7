"""MaskContrast's losses against per-pixel float64 loops written from the published
description (notes section 2.5), the published F.cross_entropy(weight=...) call, and a batch
split over two "ranks" (offsets, global counts) against one process."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from vice.methods.maskcontrast_losses import (
    balanced_bce,
    foreground_counts,
    mask_contrast,
    mask_pool,
)

T = 0.5


def _batch(b=4, d=6, h=5, w=7, k=3, seed=0, empty=()):
    """Unit query/key maps, random masks (images in `empty` get none), queue, global keys."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, h, w, generator=g, dtype=torch.float64), dim=1)
    k_map = F.normalize(torch.randn(b, d, h, w, generator=g, dtype=torch.float64), dim=1)
    mask = torch.rand(b, h, w, generator=g) < torch.linspace(0.2, 0.7, b)[:, None, None]
    mask[list(empty)] = False
    mask_k = torch.rand(b, h, w, generator=g) < 0.5
    mask_k[:, 0, 0] = True  # no empty key mask
    queue = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    return q, mask, mask_pool(k_map, mask_k), queue


def _contrast_oracle(q, mask, keys, queue, offset, counts, temperature):
    """Per-pixel loop: value of sum_i w_y CE_i, sum_i w_y and d(sum_i w_y CE_i)/dq."""
    classes = [list(map(float, row)) for row in torch.cat([keys, queue])]
    total = float(sum(int(c) for c in counts))
    weights = [1.0 / math.log(1.02 + int(c) / total) for c in counts]
    num, den = 0.0, 0.0
    grad = torch.zeros_like(q)
    b, d, h, w = q.shape
    for img in range(b):
        for r in range(h):
            for c in range(w):
                if not bool(mask[img, r, c]):
                    continue  # background: no anchor
                qi = [float(q[img, j, r, c]) for j in range(d)]
                logits = [sum(a * x for a, x in zip(qi, kc, strict=True)) / temperature
                          for kc in classes]  # fmt: skip
                top = max(logits)
                z = sum(math.exp(v - top) for v in logits)
                label = offset + img
                wy = weights[label]
                num += wy * (top + math.log(z) - logits[label])
                den += wy
                for j in range(d):
                    soft = sum(
                        math.exp(v - top) / z * kc[j] for v, kc in zip(logits, classes, strict=True)
                    )
                    grad[img, j, r, c] = wy * (soft - classes[label][j]) / temperature
    return num, den, grad


def _bce_oracle(logits, mask, pos_fraction=None):
    """Per-pixel loop of the published BalancedCrossEntropyLoss(size_average=True)."""
    flat_x = [float(v) for v in logits.flatten()]
    flat_t = [1.0 if float(v) >= 0.5 else 0.0 for v in mask.flatten().double()]
    n = len(flat_x)
    w = sum(1.0 - t for t in flat_t) / n if pos_fraction is None else 1.0 - pos_fraction
    total, grads = 0.0, []
    for x, t in zip(flat_x, flat_t, strict=True):
        s = 1.0 / (1.0 + math.exp(-x))
        bce = -(t * math.log(s) + (1.0 - t) * math.log(1.0 - s))
        weight = w if t else 1.0 - w
        total += weight * bce
        grads.append(weight * (s - t))  # d BCE / dx = sigmoid(x) - t
    return total, n, torch.tensor(grads, dtype=torch.float64).view_as(logits)


# ---------------------------------------------------------------------------- pooling, counts


def test_foreground_counts_counts_mask_pixels_per_image():
    mask = torch.zeros(3, 4, 4, dtype=torch.bool)
    mask[0, :2] = True
    mask[2, 1, 1] = True
    assert foreground_counts(mask).tolist() == [8, 0, 1]
    assert foreground_counts(mask.double()).tolist() == [8, 0, 1]


def test_mask_pool_of_one_pixel_is_that_pixels_embedding_and_of_none_is_zero():
    q, _, _, _ = _batch()
    mask = torch.zeros(q.shape[0], *q.shape[2:], dtype=torch.bool)
    mask[0, 2, 3] = True
    mask[1, 0, 0] = True
    pooled = mask_pool(q, mask)
    torch.testing.assert_close(pooled[0], q[0, :, 2, 3], rtol=0, atol=1e-15)
    torch.testing.assert_close(pooled[1], q[1, :, 0, 0], rtol=0, atol=1e-15)
    assert pooled[2:].abs().max() == 0  # empty masks: the zero vector


def test_mask_pool_is_the_normalised_sum_over_the_mask():
    q, mask, _, _ = _batch(seed=3)
    pooled = mask_pool(q, mask)
    for b in range(q.shape[0]):
        total = sum(q[b, :, r, c] for r, c in mask[b].nonzero().tolist())
        torch.testing.assert_close(pooled[b], total / total.norm(), rtol=0, atol=1e-14)
    torch.testing.assert_close(pooled.norm(dim=1), torch.ones(q.shape[0], dtype=q.dtype))


# ---------------------------------------------------------------------------- balanced BCE


@pytest.mark.parametrize("float_mask", [False, True])
def test_balanced_bce_matches_the_pixel_loop_value_and_gradient(float_mask):
    g = torch.Generator().manual_seed(1)
    logits = (3 * torch.randn(3, 5, 6, generator=g, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(3, 5, 6, generator=g) < 0.3
    total, count = balanced_bce(logits, mask.double() if float_mask else mask)
    expected, n, grad = _bce_oracle(logits.detach(), mask)
    assert float(count) == n == 90
    assert total.item() == pytest.approx(expected, rel=1e-12)
    total.backward()
    torch.testing.assert_close(logits.grad, grad, rtol=1e-10, atol=1e-14)


def test_balanced_bce_weighs_the_rarer_class_up_and_an_all_foreground_batch_to_zero():
    logits = torch.zeros(1, 2, 5, dtype=torch.float64)
    mask = torch.zeros(1, 2, 5, dtype=torch.bool)
    mask[0, 0, 0] = True  # 1 positive, 9 negatives: w = 0.9 on it, 0.1 on each negative
    total, count = balanced_bce(logits, mask)
    assert float(total / count) == pytest.approx((0.9 + 9 * 0.1) * math.log(2) / 10)
    # published quirk: w = #neg / #total = 0, so a batch without negatives has loss 0
    total, _ = balanced_bce(logits, torch.ones(1, 2, 5, dtype=torch.bool))
    assert float(total) == 0.0


def test_balanced_bce_split_over_two_ranks_with_the_global_fraction_equals_one_process():
    g = torch.Generator().manual_seed(2)
    logits = (2 * torch.randn(4, 6, 6, generator=g, dtype=torch.float64)).requires_grad_()
    mask = torch.rand(4, 6, 6, generator=g) < torch.tensor([0.1, 0.2, 0.6, 0.8])[:, None, None]
    total, count = balanced_bce(logits, mask)
    (total / count).backward()
    whole = logits.grad.clone()
    logits.grad = None

    fraction = foreground_counts(mask).sum().double() / mask.numel()  # all-reduced counts
    parts = [balanced_bce(logits[s], mask[s], fraction) for s in (slice(0, 1), slice(1, 4))]
    global_count = sum(c for _, c in parts)
    split = sum(t for t, _ in parts) / global_count
    assert split.item() == pytest.approx((total / count).item(), rel=1e-13)
    split.backward()
    torch.testing.assert_close(logits.grad, whole, rtol=1e-12, atol=1e-16)
    # the global fraction matters: the local one gives a different loss on an uneven split
    local = sum(balanced_bce(logits[s], mask[s])[0] for s in (slice(0, 1), slice(1, 4)))
    assert abs((local / global_count).item() - split.item()) > 1e-3


def test_balanced_bce_pos_fraction_matches_the_loop():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 3, 3, generator=g) < 0.5
    total, _ = balanced_bce(logits, mask, pos_fraction=0.25)
    assert float(total) == pytest.approx(_bce_oracle(logits, mask, 0.25)[0], rel=1e-12)


# ---------------------------------------------------------------------------- mask contrast


@pytest.mark.parametrize("queue_len", [0, 3])
def test_mask_contrast_matches_the_pixel_loop_value_and_gradient(queue_len):
    q, mask, keys, queue = _batch(k=queue_len, seed=5, empty=(1,))
    counts = foreground_counts(mask)
    q.requires_grad_()
    num, den = mask_contrast(q, mask, keys, queue, 0, counts, T)
    exp_num, exp_den, exp_grad = _contrast_oracle(q.detach(), mask, keys, queue, 0, counts, T)
    assert num.item() == pytest.approx(exp_num, rel=1e-12)
    assert float(den) == pytest.approx(exp_den, rel=1e-12)
    assert not den.requires_grad
    num.backward()
    torch.testing.assert_close(q.grad, exp_grad, rtol=1e-10, atol=1e-13)


def test_mask_contrast_is_the_published_weighted_cross_entropy_on_one_process():
    q, mask, keys, queue = _batch(b=3, k=4, seed=6)
    num, den = mask_contrast(q, mask, keys, queue, 0, foreground_counts(mask), T)

    # the published computation (notes 2.5): labels by image, weights padded over B + K
    q_flat = q.permute(0, 2, 3, 1).reshape(-1, q.shape[1])
    label = (mask.long() + 2 * torch.arange(3)[:, None, None]) * mask.long()
    label = label.flatten()
    fg = label.nonzero().squeeze(1)
    labels = label[fg] // 2
    logits = torch.cat([q_flat[fg] @ keys.T, q_flat[fg] @ queue.T], dim=1) / T
    uniq, freq = torch.unique(labels, return_counts=True)
    p_class = torch.zeros(logits.shape[1], dtype=torch.float64)
    p_class[uniq] = freq.double() / labels.numel()
    w_class = 1 / torch.log(1.02 + p_class)
    published = F.cross_entropy(logits, labels, weight=w_class)
    assert float(num / den) == pytest.approx(float(published), rel=1e-13)
    # the queue columns' weights never enter: any value there gives the same loss
    w_class[3:] = 123.0
    assert float(F.cross_entropy(logits, labels, weight=w_class)) == pytest.approx(
        float(published), rel=1e-13
    )


def test_mask_contrast_split_over_two_ranks_equals_one_process_with_gradients():
    q, mask, keys, queue = _batch(b=5, k=3, seed=7, empty=(3,))
    counts = foreground_counts(mask)
    q.requires_grad_()
    num, den = mask_contrast(q, mask, keys, queue, 0, counts, T)
    (num / den).backward()
    whole = q.grad.clone()
    q.grad = None

    # rank 0 holds images 0-1, rank 1 images 2-4; both see all 5 keys and the global counts
    parts = [
        mask_contrast(q[0:2], mask[0:2], keys, queue, 0, counts, T),
        mask_contrast(q[2:5], mask[2:5], keys, queue, 2, counts, T),
    ]
    global_den = sum(d for _, d in parts)  # all-reduced
    split = sum(n for n, _ in parts) / global_den
    assert split.item() == pytest.approx((num / den).item(), rel=1e-13)
    split.backward()
    torch.testing.assert_close(q.grad, whole, rtol=1e-12, atol=1e-15)


def test_images_with_empty_masks_contribute_no_anchors():
    q, mask, keys, queue = _batch(b=3, seed=8, empty=(1,))
    counts = foreground_counts(mask)
    assert counts[1] == 0
    q.requires_grad_()
    num, den = mask_contrast(q, mask, keys, queue, 0, counts, T)
    num.backward()
    assert q.grad[1].abs().max() == 0
    # per image (offset = its row) sums to the batch: the empty image gives exactly (0, 0)
    per_image = [mask_contrast(q[i : i + 1], mask[i : i + 1], keys, queue, i, counts, T)
                 for i in range(3)]  # fmt: skip
    assert [n.item() for n in per_image[1]] == [0.0, 0.0]
    assert sum(n for n, _ in per_image).item() == pytest.approx(num.item(), rel=1e-13)
    assert float(sum(d for _, d in per_image)) == pytest.approx(float(den), rel=1e-13)


def test_a_batch_without_anchors_gives_zero_sums_and_zero_gradients():
    q, mask, keys, queue = _batch(b=2, seed=9, empty=(0, 1))
    q.requires_grad_()
    num, den = mask_contrast(q, mask, keys, queue, 0, foreground_counts(mask), T)
    assert (num.item(), den.item()) == (0.0, 0.0)
    num.backward()  # still part of q's graph (DDP sees every parameter used)
    assert q.grad is not None and q.grad.abs().max() == 0


def test_smaller_masks_weigh_more():
    q, mask, keys, queue = _batch(b=2, seed=10)
    mask[:] = False
    mask[0, :, :] = True  # 35 pixels
    mask[1, 0, 0] = True  # 1 pixel
    counts = foreground_counts(mask)
    _, den = mask_contrast(q, mask, keys, queue, 0, counts, T)
    w_big, w_small = 1 / math.log(1.02 + 35 / 36), 1 / math.log(1.02 + 1 / 36)
    assert w_small > 10 * w_big
    assert float(den) == pytest.approx(35 * w_big + w_small, rel=1e-13)


def test_the_loss_decreases_when_the_query_map_is_optimised():
    q, mask, keys, queue = _batch(b=3, k=4, seed=11)
    raw = q.clone().requires_grad_()
    opt = torch.optim.SGD([raw], lr=0.5)
    losses = []
    for _ in range(20):
        num, den = mask_contrast(F.normalize(raw, dim=1), mask, keys, queue, 0,
                                 foreground_counts(mask), T)  # fmt: skip
        loss = num / den
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(b < a for a, b in itertools.pairwise(losses))
    assert losses[-1] < 0.8 * losses[0]  # measured 2.09 -> 1.58 in 20 steps

"""Vectorised superpixel pooling against naive per-region Python loops (values and gradients).

Shapes: V views, B images, D dims, K prototypes, H x W view, N pixels, S segments.
"""

import pytest
import torch
import torch.nn.functional as F

from vice.ops import pooling
from vice.ops.pooling import (
    pool_regions,
    region_index,
    representative_pool,
    segment_argmax,
    segment_mean,
)

# ---------------------------------------------------------------- naive references


def naive_segment_mean(x_ND, seg_N, num_segments):
    rows = []
    for s in range(num_segments):
        members = x_ND[seg_N == s]
        rows.append(members.mean(0) if len(members) else x_ND.new_zeros(x_ND.shape[1]))
    return torch.stack(rows)


def naive_segment_argmax(values_N, seg_N, num_segments):
    out = []
    for s in range(num_segments):
        rows = torch.nonzero(seg_N == s).flatten()
        out.append(int(rows[torch.argmax(values_N[rows])]) if len(rows) else -1)
    return torch.tensor(out)


def naive_representative(x_ND, scores_NK, seg_N, num_segments, detach=False):
    reps, dists = [], []
    for s in range(num_segments):
        rows = torch.nonzero(seg_N == s).flatten()
        if not len(rows):
            reps.append(x_ND.new_zeros(x_ND.shape[1]))
            continue
        best = rows[torch.argmax(scores_NK[rows].max(dim=1).values)]
        rep = x_ND[best]
        target = rep.detach() if detach else rep
        dists.append(torch.linalg.vector_norm(x_ND[rows] - target, dim=1).mean())
        reps.append(rep)
    return torch.stack(reps), torch.stack(dists).mean()


def naive_pool_regions(z, ids, num_regions, mode, prototypes=None):
    """Loops over views, images and region ids with boolean masks, like the published code."""
    V, B, D = z.shape[:3]
    views, dists = [], []
    for v in range(V):
        rows = []
        for b in range(B):
            emb_PD = z[v, b].reshape(D, -1).t()
            ids_P = ids[v, b].reshape(-1)
            for r in range(int(num_regions[b])):
                emb_nD = emb_PD[ids_P == r]
                if not len(emb_nD):
                    rows.append(z.new_zeros(D))
                elif mode == "mean":
                    rows.append(emb_nD.mean(0))
                else:
                    best = torch.argmax((emb_nD @ prototypes.t()).max(dim=1).values)
                    rows.append(emb_nD[best])
                    dists.append(torch.linalg.vector_norm(emb_nD - emb_nD[best], dim=1).mean())
        views.append(torch.stack(rows))
    coherence = torch.stack(dists).mean() if dists else z.new_zeros(())
    return F.normalize(torch.stack(views), dim=2), coherence


# ---------------------------------------------------------------- inputs


def random_rows(seed=0, n=200, d=6, k=5, num_segments=9):
    """Rows with a global segment each: -1 rows, unequal sizes, segments 3 and 7 empty."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    scores = torch.randn(n, k, generator=gen, dtype=torch.float64)
    seg = torch.randint(-1, num_segments, (n,), generator=gen)
    seg[seg == 3] = 0
    seg[seg == 7] = -1
    seg[:40] = 5  # one large segment
    return x, scores, seg


def random_batch(seed=0, V=3, B=3, D=5, H=7, W=9, K=6):
    """Collate-layout batch: unequal region counts, -1 pixels, region 1 of image 2 missing in
    view 1, every other region present in every view."""
    gen = torch.Generator().manual_seed(seed)
    num_regions = torch.tensor([4, 1, 6])
    ids = torch.full((V, B, H, W), -1, dtype=torch.int64)
    for b, r in enumerate(num_regions.tolist()):
        for v in range(V):
            layout = torch.randint(-1, r, (H, W), generator=gen)
            layout.view(-1)[:r] = torch.arange(r)  # every region at least once
            ids[v, b] = layout
    missing = ids[1, 2]
    missing[missing == 1] = -1
    z = F.normalize(torch.randn(V, B, D, H, W, generator=gen, dtype=torch.float64), dim=2)
    prototypes = F.normalize(torch.randn(K, D, generator=gen, dtype=torch.float64), dim=1)
    return z, ids, num_regions, prototypes


# ---------------------------------------------------------------- region_index


def test_region_index_numbers_a_hand_made_batch():
    # V=2 views, B=2 images with 2 and 3 regions: R = 5, image 1 starts at row 2.
    ids = torch.tensor(
        [
            [[[0, 1], [-1, 1]], [[2, 0], [1, -1]]],
            [[[1, 1], [0, -1]], [[-1, 2], [2, 0]]],
        ]
    )
    seg = region_index(ids, torch.tensor([2, 3]))
    expected = torch.tensor(
        [
            [[[0, 1], [-1, 1]], [[4, 2], [3, -1]]],
            [[[6, 6], [5, -1]], [[-1, 9], [9, 7]]],
        ]
    )
    assert torch.equal(seg, expected)


def test_region_index_rejects_num_regions_of_the_wrong_length():
    with pytest.raises(ValueError, match=r"num_regions has shape \(3,\), expected \(2,\)"):
        region_index(torch.zeros(1, 2, 3, 3, dtype=torch.int64), torch.tensor([1, 1, 1]))


# ---------------------------------------------------------------- segment_mean


def test_segment_mean_matches_loop_in_values_counts_and_gradients():
    x, _, seg = random_rows()
    x_a = x.clone().requires_grad_()
    x_b = x.clone().requires_grad_()
    mean, count = segment_mean(x_a, seg, 9)
    expected = naive_segment_mean(x_b, seg, 9)
    torch.testing.assert_close(mean, expected, rtol=1e-12, atol=1e-12)
    assert count.tolist() == [int((seg == s).sum()) for s in range(9)]
    assert count[3] == 0 and count[7] == 0 and torch.all(mean[[3, 7]] == 0)
    weights = torch.randn_like(expected)
    (mean * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x_a.grad, x_b.grad, rtol=1e-12, atol=1e-12)
    assert torch.all(x_a.grad[seg == -1] == 0)


# ---------------------------------------------------------------- segment_argmax


def test_segment_argmax_breaks_ties_towards_the_smallest_index_and_ignores_minus_one():
    values = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 9.0])
    seg = torch.tensor([0, 0, 1, 1, 0, -1])
    for impl in (segment_argmax, pooling._segment_argmax_sorted):
        assert impl(values, seg, 3).tolist() == [1, 2, -1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segment_argmax_matches_loop_with_many_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(0, 4, (300,), generator=gen).float()  # ties everywhere
    seg = torch.randint(-1, 40, (300,), generator=gen)
    seg[seg == 13] = -1  # an empty segment
    expected = naive_segment_argmax(values, seg, 41)
    assert expected[13] == -1 and expected[40] == -1
    assert torch.equal(pooling._segment_argmax_scatter(values, seg, 41), expected)
    assert torch.equal(pooling._segment_argmax_sorted(values, seg, 41), expected)


def test_segment_argmax_of_no_rows_is_all_minus_one():
    empty = torch.zeros(0)
    assert segment_argmax(empty, empty.long(), 3).tolist() == [-1, -1, -1]
    assert pooling._segment_argmax_sorted(empty, empty.long(), 3).tolist() == [-1, -1, -1]


# ---------------------------------------------------------------- representative_pool


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("chunk", [2048, 7])
def test_representative_pool_matches_loop_with_gradients(detach, chunk, monkeypatch):
    monkeypatch.setattr(pooling, "_CHUNK_PIXELS_CPU", chunk)  # 7: many chunks per group
    x, scores, seg = random_rows(seed=3)
    x_a = x.clone().requires_grad_()
    x_b = x.clone().requires_grad_()
    rep, coherence = representative_pool(x_a, scores, seg, 9, detach_representative=detach)
    rep_ref, coherence_ref = naive_representative(x_b, scores, seg, 9, detach=detach)
    torch.testing.assert_close(rep, rep_ref, rtol=0, atol=0)
    torch.testing.assert_close(coherence, coherence_ref, rtol=1e-12, atol=1e-12)
    assert torch.all(rep[[3, 7]] == 0)
    weights = torch.randn_like(rep)
    ((rep * weights).sum() + 3 * coherence).backward()
    ((rep_ref * weights).sum() + 3 * coherence_ref).backward()
    torch.testing.assert_close(x_a.grad, x_b.grad, rtol=1e-10, atol=1e-12)


def test_representative_backward_runs_once_per_forward():
    # The backward turns its saved differences into the gradient in place (one full-size
    # buffer for the whole op), so a second backward through the same graph must refuse.
    x, scores, seg = random_rows(seed=4, n=30, d=3, k=2, num_segments=5)
    x.requires_grad_()
    _, coherence = representative_pool(x, scores, seg, 5)
    coherence.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="cannot run twice"):
        coherence.backward()


def test_representative_pool_without_rows_gives_zeros():
    x = torch.zeros(0, 4, requires_grad=True)
    rep, coherence = representative_pool(x, torch.zeros(0, 3), torch.zeros(0).long(), 2)
    assert rep.shape == (2, 4) and torch.all(rep == 0) and coherence.item() == 0.0
    coherence.backward()


# ---------------------------------------------------------------- pool_regions


@pytest.mark.parametrize("mode", ["mean", "representative"])
@pytest.mark.parametrize("chunk", [2048, 10])
def test_pool_regions_matches_loop_with_gradients(mode, chunk, monkeypatch):
    monkeypatch.setattr(pooling, "_CHUNK_PIXELS_CPU", chunk)
    z, ids, num_regions, prototypes = random_batch()
    z_a = z.clone().requires_grad_()
    z_b = z.clone().requires_grad_()
    regions, coherence = pool_regions(z_a, ids, num_regions, mode, prototypes)
    regions_ref, coherence_ref = naive_pool_regions(z_b, ids, num_regions, mode, prototypes)
    assert regions.shape == (3, 11, 5)
    torch.testing.assert_close(regions, regions_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(coherence, coherence_ref, rtol=1e-12, atol=1e-12)
    # Region 1 of image 2 (row 4 + 1 + 1 = 6) has no pixel in view 1: a zero row.
    assert torch.all(regions[1, 6] == 0) and torch.all(regions[0, 6] != 0)
    norms = torch.linalg.vector_norm(regions, dim=2)
    norms[1, 6] = 1.0
    torch.testing.assert_close(norms, torch.ones_like(norms))
    weights = torch.randn_like(regions)
    ((regions * weights).sum() + 2 * coherence).backward()
    ((regions_ref * weights).sum() + 2 * coherence_ref).backward()
    torch.testing.assert_close(z_a.grad, z_b.grad, rtol=1e-10, atol=1e-12)
    assert torch.all(z_a.grad.permute(0, 1, 3, 4, 2)[ids < 0] == 0)


def test_pool_regions_mean_has_zero_coherence_and_needs_no_prototypes():
    z, ids, num_regions, _ = random_batch(seed=1)
    regions, coherence = pool_regions(z, ids, num_regions)
    assert regions.shape == (3, 11, 5) and coherence.item() == 0.0


def test_pool_regions_pools_half_precision_in_float32():
    z, ids, num_regions, prototypes = random_batch(seed=2)
    z16 = z.bfloat16()
    for mode in ("mean", "representative"):
        expected, _ = pool_regions(z16.float(), ids, num_regions, mode, prototypes.float())
        got, coherence = pool_regions(z16, ids, num_regions, mode, prototypes.float())
        assert got.dtype == torch.float32 and coherence.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_pool_regions_ignores_autocast():
    z, ids, num_regions, prototypes = random_batch(seed=3)
    z, prototypes = z.float(), prototypes.float()
    for mode in ("mean", "representative"):
        expected = pool_regions(z, ids, num_regions, mode, prototypes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = pool_regions(z, ids, num_regions, mode, prototypes)
        for a, b in zip(got, expected, strict=True):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_pool_regions_with_no_regions_at_all():
    z, ids, _, prototypes = random_batch()
    for mode in ("mean", "representative"):
        regions, coherence = pool_regions(
            z, torch.full_like(ids, -1), torch.zeros(3, dtype=torch.int64), mode, prototypes
        )
        assert regions.shape == (3, 0, 5) and coherence.item() == 0.0


def test_pool_regions_rejects_bad_arguments():
    z, ids, num_regions, prototypes = random_batch()
    with pytest.raises(ValueError, match="needs prototypes_KD"):
        pool_regions(z, ids, num_regions, "representative")
    with pytest.raises(ValueError, match="unknown pooling mode 'max'"):
        pool_regions(z, ids, num_regions, "max", prototypes)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"ids has shape \(3, 3, 7, 8\)"):
        pool_regions(z, ids[..., :8], num_regions)
    with pytest.raises(ValueError, match=r"num_regions has shape \(2,\)"):
        pool_regions(z, ids, num_regions[:2])

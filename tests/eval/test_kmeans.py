import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vice.eval.kmeans import _centroid_sums, _lloyd, _onehot_sums, kmeans


def _blobs(n_per: int = 200, d: int = 8, noise: float = 0.05, seed: int = 0):
    """Three tight blobs around orthogonal unit vectors e0, e1, e2 (on the sphere)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(d)[:3]
    labels = torch.arange(3).repeat_interleave(n_per)
    x = centres[labels] + noise * torch.randn(3 * n_per, d, generator=g)
    # Different norms must not matter: the clustering is by direction.
    x = x * (0.5 + torch.rand(3 * n_per, 1, generator=g))
    return x, labels


def _is_permutation_of(assign: torch.Tensor, labels: torch.Tensor, k: int) -> bool:
    table = np.zeros((k, k), dtype=np.int64)
    np.add.at(table, (assign.numpy(), labels.numpy()), 1)
    return bool(((table > 0).sum(0) == 1).all() and ((table > 0).sum(1) == 1).all())


def test_recovers_well_separated_blobs_up_to_permutation():
    x, labels = _blobs()
    centroids, assign = kmeans(x, 3, iters=20, seed=0, fit_samples=10_000)
    assert centroids.shape == (3, 8) and assign.shape == (600,) and assign.dtype == torch.long
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(3))
    assert _is_permutation_of(assign, labels, 3)


def test_fits_on_a_subset_and_assigns_every_row():
    x, labels = _blobs(n_per=300)
    _, assign = kmeans(x, 3, iters=20, seed=1, fit_samples=60)
    assert assign.shape == (900,)
    assert _is_permutation_of(assign, labels, 3)


def test_same_seed_same_result_and_restarts_pick_a_valid_solution():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2000, 6, generator=g)
    c1, a1 = kmeans(x, 7, iters=15, seed=5, fit_samples=500, restarts=2)
    c2, a2 = kmeans(x, 7, iters=15, seed=5, fit_samples=500, restarts=2)
    assert torch.equal(c1, c2) and torch.equal(a1, a2)
    _, a3 = kmeans(x, 7, iters=15, seed=6, fit_samples=500)
    assert not torch.equal(a1, a3)
    # Every row is assigned its most similar centroid.
    best = (F.normalize(x, dim=1) @ c1.T).argmax(1)
    assert torch.equal(a1, best)


def test_more_restarts_never_lower_the_objective():
    g = torch.Generator().manual_seed(4)
    x = F.normalize(torch.randn(1500, 5, generator=g), dim=1)

    def objective(c):
        return (x @ c.T).max(1).values.mean().item()

    single, _ = kmeans(x, 6, iters=10, seed=0, fit_samples=10_000, restarts=1)
    multi, _ = kmeans(x, 6, iters=10, seed=0, fit_samples=10_000, restarts=4)
    assert objective(multi) >= objective(single) - 1e-6


def test_empty_cluster_is_reseeded_with_the_farthest_point():
    x, labels = _blobs(n_per=100)
    x = F.normalize(x, dim=1)
    # Seed 1 sits between blobs 1 and 2 and takes both; seed 2 points away from every row,
    # so it is empty after the first assignment and must be re-seeded to split them.
    seeds = F.normalize(
        torch.stack([torch.eye(8)[0], torch.eye(8)[1] + torch.eye(8)[2], -torch.ones(8)]), dim=1
    )
    centroids, assign, _ = _lloyd(x, seeds, iters=20)
    assert torch.bincount(assign, minlength=3).min() > 0
    assert _is_permutation_of(assign, labels, 3)
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(3))


def test_more_clusters_than_distinct_points_does_not_fail():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(50, 1)
    centroids, assign = kmeans(x, 4, iters=5, seed=0)
    assert torch.isfinite(centroids).all() and assign.max() < 4


def test_onehot_sums_equal_index_add_sums():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 4, generator=g)
    assign = torch.randint(0, 9, (1000,), generator=g)
    torch.testing.assert_close(_onehot_sums(x, assign, 9), _centroid_sums(x, assign, 9))


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k <= N"):
        kmeans(torch.randn(5, 3), 6)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        kmeans(torch.randn(5, 3, 2), 2)

"""Sinkhorn-Knopp: marginals, numerics, and exactness across 2 real gloo processes.

Shapes: N rows (samples), K prototypes.
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vice.ops.sinkhorn import sinkhorn


def unit_scores(n, k, seed=0, d=32, dtype=torch.float64):
    """Cosine scores of random unit embeddings and prototypes, in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=gen, dtype=dtype), dim=1)
    c = F.normalize(torch.randn(k, d, generator=gen, dtype=dtype), dim=1)
    return x @ c.t()


def linear_sinkhorn(scores_NK, epsilon, iterations, row_mass_N=None):
    """SwAV's published linear-domain recurrence in one process (float64).

    row_mass_N: the per-row target c of each row; the published code uses 1 / (local rows *
    world size) on every rank, so rows of ranks of different sizes get different c.
    """
    q_KN = torch.exp(scores_NK.double() / epsilon - (scores_NK.double() / epsilon).max()).t()
    q_KN = q_KN / q_KN.sum()
    K, N = q_KN.shape
    c_N = torch.full((N,), 1.0 / N, dtype=torch.float64) if row_mass_N is None else row_mass_N
    for _ in range(iterations):
        q_KN = q_KN * ((1.0 / K) / q_KN.sum(dim=1))[:, None]
        q_KN = q_KN * (c_N / q_KN.sum(dim=0))[None, :]
    return (q_KN / q_KN.sum(dim=0, keepdim=True)).t()


def column_deviation(q_NK):
    """Largest relative deviation of a prototype's total from the equal share N / K."""
    n, k = q_NK.shape
    return ((q_NK.sum(dim=0) / (n / k)) - 1).abs().max().item()


# ---------------------------------------------------------------- one process


@pytest.mark.parametrize("n,k", [(300, 128), (1000, 128), (500, 16)])
def test_matches_the_linear_domain_swav_recurrence(n, k):
    scores = unit_scores(n, k, seed=n)
    for iterations in (0, 1, 3, 10):
        torch.testing.assert_close(
            sinkhorn(scores, 0.05, iterations),
            linear_sinkhorn(scores, 0.05, iterations),
            rtol=1e-10,
            atol=1e-12,
        )


@pytest.mark.parametrize("n,k,seed", [(300, 128, 0), (1000, 128, 1), (500, 16, 2)])
def test_marginals_rows_sum_to_one_and_prototypes_balance(n, k, seed):
    # Scores in [-0.7, 1]; later prototypes favoured by up to +0.3, so the plain softmax
    # (0 iterations) is far from balanced.
    bias_K = torch.linspace(0, 0.3, k, dtype=torch.float64)
    scores = 0.7 * unit_scores(n, k, seed=seed) + bias_K
    deviation = {it: column_deviation(sinkhorn(scores, 0.05, it)) for it in (0, 3, 10, 100)}
    # Measured: 0 iterations 2.6-4.7, 3 iterations (the default) 0.011-0.071, 10 iterations
    # 2e-6 to 9e-5, 100 iterations ~1e-15 (relative deviation of a prototype's total from N/K).
    assert deviation[0] > 2.0
    assert deviation[3] < 0.1
    assert deviation[10] < 1e-3
    assert deviation[100] < 1e-12
    q = sinkhorn(scores, 0.05, 3)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(n, dtype=torch.float64))
    assert torch.all(q >= 0)


@pytest.mark.parametrize(
    "scale,epsilon",
    [(1.0, 0.05), (100.0, 0.05), (1.0, 1e-4), (1e4, 0.05)],
)
def test_no_nan_or_inf_for_extreme_scores(scale, epsilon):
    scores = unit_scores(200, 128, seed=5, dtype=torch.float32) * scale
    scores[:, 0] += 3 * scale  # one prototype dominates every row by far
    q = sinkhorn(scores, epsilon, 3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(200))
    # The linear-domain recurrence underflows to 0 / 0 here; the log domain does not.
    if scale >= 100.0:
        assert torch.isnan(linear_sinkhorn(scores, epsilon, 3)).any()


def test_adding_a_constant_to_every_score_changes_nothing():
    scores = unit_scores(400, 128, seed=6)
    q = sinkhorn(scores, 0.05, 3)
    for shift in (-50.0, 7.5, 1e3):
        torch.testing.assert_close(sinkhorn(scores + shift, 0.05, 3), q, rtol=1e-9, atol=1e-12)


def test_result_is_detached_and_float32_unless_float64():
    scores = unit_scores(50, 8, dtype=torch.float32).requires_grad_()
    q = sinkhorn(scores)
    assert not q.requires_grad and q.dtype == torch.float32
    assert sinkhorn(scores.detach().bfloat16()).dtype == torch.float32
    assert sinkhorn(scores.detach().double()).dtype == torch.float64


def test_zero_iterations_is_the_tempered_softmax():
    scores = unit_scores(40, 8)
    torch.testing.assert_close(sinkhorn(scores, 0.1, 0), torch.softmax(scores / 0.1, dim=1))


def test_rejects_non_finite_scores_and_bad_arguments():
    scores = unit_scores(10, 4)
    scores[3, 2] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite entries"):
        sinkhorn(scores)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        sinkhorn(unit_scores(10, 4), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations must be >= 0"):
        sinkhorn(unit_scores(10, 4), iterations=-1)


def test_no_rows_gives_an_empty_result():
    assert sinkhorn(torch.zeros(0, 5)).shape == (0, 5)


def test_published_world_size_scaling_is_exact_only_for_equal_splits():
    """The published code gives each rank's rows c = 1 / (local rows * world size)."""
    scores = unit_scores(26, 16, seed=7)
    exact = sinkhorn(scores, 0.05, 3)
    for split in ((13, 13), (7, 19)):
        c_N = torch.cat([torch.full((n,), 1.0 / (n * len(split))) for n in split]).double()
        published = linear_sinkhorn(scores, 0.05, 3, row_mass_N=c_N)
        if split[0] == split[1]:
            torch.testing.assert_close(published, exact, rtol=1e-10, atol=1e-12)
        else:
            assert (published - exact).abs().max() > 1e-3


# ---------------------------------------------------------------- two gloo processes

SPLITS = ((7, 19), (13, 13), (0, 11))  # rows held by rank 0 and rank 1
K_PROTOTYPES = 16


def published_distributed_sinkhorn(scores_NK, epsilon, iterations):
    """The published SwAV/ViCE distributed recurrence: N = local rows * world size."""
    q_KN = scores_NK.double().t() / epsilon
    top = q_KN.max() if q_KN.numel() else q_KN.new_tensor(float("-inf"))
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    q_KN = torch.exp(q_KN - top)
    total = q_KN.sum()
    dist.all_reduce(total)
    q_KN = q_KN / total
    K, n = q_KN.shape
    c = 1.0 / (n * dist.get_world_size())
    for _ in range(iterations):
        u_K = q_KN.sum(dim=1)
        dist.all_reduce(u_K)
        q_KN = q_KN * ((1.0 / K) / u_K)[:, None]
        q_KN = q_KN * (c / q_KN.sum(dim=0))[None, :]
    return (q_KN / q_KN.sum(dim=0, keepdim=True)).t()


def _worker(rank, world_size, init_file, out_dir):
    # a file rendezvous: a free TCP port picked here can be taken by another process (the
    # suite runs beside the cluster's torchrun jobs) before the ranks bind it
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        group = dist.new_group([0, 1])  # every rank creates every group
        results = {}
        for split in SPLITS:
            scores = unit_scores(sum(split), K_PROTOTYPES, seed=sum(split), dtype=torch.float32)
            start = sum(split[:rank])
            local = scores[start : start + split[rank]]
            results[split] = {
                # the parent compares with these very inputs: a float32 matmul's last bits
                # depend on the thread count, which differs between these ranks and the parent
                "scores": local.clone(),
                "ours": sinkhorn(local, 0.05, 3),
                "ours_group": sinkhorn(local, 0.05, 3, group=group),
                "ours64": sinkhorn(local.double(), 0.05, 3),
            }
            if min(split) > 0:  # the published code divides by zero on an empty rank
                results[split]["published"] = published_distributed_sinkhorn(local, 0.05, 3)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_with_unequal_rows_match_one_process(tmp_path):
    init = tmp_path / "rendezvous"
    mp.spawn(_worker, args=(2, str(init), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for split in SPLITS:
        scores = torch.cat([ranks[r][split]["scores"] for r in range(2)])
        single = sinkhorn(scores, 0.05, 3)
        single64 = sinkhorn(scores.double(), 0.05, 3)
        for key in ("ours", "ours_group"):
            gathered = torch.cat([ranks[r][split][key] for r in range(2)])
            torch.testing.assert_close(gathered, single, rtol=0, atol=1e-6)
        gathered64 = torch.cat([ranks[r][split]["ours64"] for r in range(2)])
        torch.testing.assert_close(gathered64, single64, rtol=1e-12, atol=1e-14)
        if split[0] == 0:
            continue
        published = torch.cat([ranks[r][split]["published"] for r in range(2)])
        error = (published - single64).abs().max().item()
        if split[0] == split[1]:
            assert error < 1e-6  # equal rows per rank: the published scaling is right
        else:
            # 7 vs 19 rows: the smaller rank's rows weigh 19/7 times more in the
            # prototype sums, so its assignments come out visibly different.
            assert error > 1e-3, error

"""ViCE's superpixel pooling + loss: our vectorised ops against a per-superpixel Python loop.

Both sides compute, from the same inputs, the full ViCE loss of methods.md section 1 and its
backward (gradients w.r.t. the per-pixel embeddings and the prototypes):

* region vectors per view: superpixel mean ("mean", FPN runs) or the most prototype-confident
  pixel plus the coherence loss ("representative", DeepLab runs, the published default);
* scores s = normalised region vectors @ C^T; targets Q = Sinkhorn-Knopp on the center view
  (epsilon 0.05, 3 iterations); SwAV loss = mean over views m > 0 of CE(Q, softmax(s_m / 0.1));
  total = swav (mean) or (coherence + swav) / 2 (representative).

Ours: `vice.ops.pooling.pool_regions` (one scatter / chunked gather over all pixels of the
batch) + `vice.ops.sinkhorn.sinkhorn`. Baseline: the same loss written like the published ViCE
code (robin-karlsson0/vice, vissl/losses/dense_swav_loss.py): per-pixel scores of every view
from the head (with gradient), then Python loops over views, images and region ids, each
region cut out with a boolean mask (``emb[:, ids == r]``), reduced and stacked. The baseline
uses the same Sinkhorn and cross-entropy, so the ratio measures the pooling. Before timing,
the two losses must agree (allclose) and so must their gradients (w.r.t. z after projecting
out the component along z: ours scores the normalised representative, the published code the
raw pixel, which differ only there, and the network's output normalisation removes it). The
loop is the conservative anchor: the published code's own per-region ops (``masked_select``
with a broadcast (n, 1) mask on a transposed view) took 5-8x longer, forward + backward, for
one (view, image) of this size in a side measurement.

Inputs: 5 views x 4 images of 200x200 px (the published views are 400x400; 200 keeps the loop
baseline to about a minute per pass), D = 128, K = 128, unit-norm random embeddings and
prototypes, Voronoi superpixels seen through 5 shifted, scaled crops, ~230-300 regions common
to all views per image, a masked box of ignored (-1) pixels per view. Everything runs on the
CPU, on one torch thread by default (``--threads``): on a shared machine a multi-threaded
OpenMP region stalls whenever one of its threads is descheduled, which penalises the loop's
thousands of small ops far more than our few large ones, so ratios at 2+ threads swing
several-fold with background load; one thread measures the work.
Each method is warmed up once (the correctness check); passes of the two are interleaved so
background load hits both alike. The table shows the median and best wall-clock pass and the
median process CPU time. The last two lines are ``mean_speedup_vs_loop=<x>`` and
``speedup_vs_loop=<x>`` (representative pooling, the published DeepLab configuration): loop
median wall time / ours median wall time.

Usage: python bench/pooling.py [--quick] [--size 200] [--reps 5] [--loop-reps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    import vice  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from vice.ops.pooling import pool_regions
from vice.ops.sinkhorn import sinkhorn

EPSILON = 0.05
SINKHORN_ITERS = 3
TEMPERATURE = 0.1


@dataclass
class Batch:
    z_VBDHW: torch.Tensor  # leaf, requires grad
    ids_VBHW: torch.Tensor
    num_regions_B: torch.Tensor
    prototypes_KD: torch.Tensor  # leaf, requires grad


def make_batch(views: int, images: int, size: int, dim: int, protos: int, seed: int) -> Batch:
    """Voronoi superpixels of a source square seen through `views` random crops per image."""
    gen = torch.Generator().manual_seed(seed)
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    grid_P2 = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    ids = torch.full((views, images, size, size), -1, dtype=torch.int64)
    counts = []
    for b in range(images):
        seeds_S2 = torch.rand(int(torch.randint(260, 420, (1,), generator=gen)), 2, generator=gen)
        view_ids = []
        for _ in range(views):
            scale = 0.85 + 0.15 * torch.rand(1, generator=gen)
            offset = (1 - scale) * torch.rand(2, generator=gen)
            vid = torch.cdist(grid_P2 * scale + offset, seeds_S2).argmin(dim=1)
            vid = vid.reshape(size, size)
            # A masked box per view: ignored pixels, like regional masking.
            y, x = torch.randint(0, size - size // 5, (2,), generator=gen).tolist()
            vid[y : y + size // 5, x : x + size // 5] = -1
            view_ids.append(vid)
        # Targets are the superpixels with pixels in every view (as the data pipeline keeps).
        common = view_ids[0].unique()
        for vid in view_ids[1:]:
            common = common[torch.isin(common, vid)]
        common = common[common >= 0]
        remap = torch.full((seeds_S2.shape[0] + 1,), -1, dtype=torch.int64)
        remap[common] = torch.arange(common.numel())
        for v, vid in enumerate(view_ids):
            ids[v, b] = remap[vid]  # -1 indexes the last entry, which stays -1
        counts.append(common.numel())
    z = torch.randn(views, images, dim, size, size, generator=gen)
    z = F.normalize(z, dim=2).requires_grad_()
    prototypes = F.normalize(torch.randn(protos, dim, generator=gen), dim=1).requires_grad_()
    return Batch(z, ids, torch.tensor(counts), prototypes)


def swav_loss(scores_VRK: torch.Tensor) -> torch.Tensor:
    """Mean over views m > 0 of CE(Q, softmax(s_m / T)), Q from the center view."""
    q_RK = sinkhorn(scores_VRK[0], EPSILON, SINKHORN_ITERS)
    log_p_MRK = F.log_softmax(scores_VRK[1:] / TEMPERATURE, dim=2)
    return -(q_RK * log_p_MRK).sum(dim=2).mean()


def ours(batch: Batch, mode: str) -> torch.Tensor:
    regions_VRD, coherence = pool_regions(
        batch.z_VBDHW, batch.ids_VBHW, batch.num_regions_B, mode, batch.prototypes_KD
    )
    swav = swav_loss(regions_VRD @ batch.prototypes_KD.t())
    return swav if mode == "mean" else (coherence + swav) / 2


def loop(batch: Batch, mode: str) -> torch.Tensor:
    """The published code's structure: per view, per image, per region id, a boolean mask."""
    z, ids, C = batch.z_VBDHW, batch.ids_VBHW, batch.prototypes_KD
    V, B, D = z.shape[:3]
    view_scores = []
    distances = []
    for v in range(V):
        image_scores = []
        for b in range(B):
            emb_DP = z[v, b].reshape(D, -1)
            ids_P = ids[v, b].reshape(-1)
            if mode == "representative":
                scores_PK = emb_DP.t() @ C.t()  # the head scores every pixel
            region_scores = []
            for r in range(int(batch.num_regions_B[b])):
                mask_P = ids_P == r
                emb_Dn = emb_DP[:, mask_P]
                if mode == "mean":
                    region_scores.append(F.normalize(emb_Dn.mean(dim=1), dim=0) @ C.t())
                else:
                    score_nK = scores_PK[mask_P]
                    best = torch.argmax(score_nK.max(dim=1).values)
                    rep_D = emb_Dn[:, best]
                    region_scores.append(score_nK[best])
                    distances.append(torch.linalg.vector_norm(emb_Dn - rep_D[:, None], dim=0))
            image_scores.append(torch.stack(region_scores))
        view_scores.append(torch.cat(image_scores))
    swav = swav_loss(torch.stack(view_scores))
    if mode == "mean":
        return swav
    coherence = torch.stack([d.mean() for d in distances]).mean()
    return (coherence + swav) / 2


def forward_backward(fn: Callable[[Batch, str], torch.Tensor], batch: Batch, mode: str):
    batch.z_VBDHW.grad = None
    batch.prototypes_KD.grad = None
    loss = fn(batch, mode)
    loss.backward()
    return loss.detach(), batch.z_VBDHW.grad, batch.prototypes_KD.grad


def check_same(batch: Batch, mode: str) -> None:
    """Loss and both gradients of ours must match the loop before anything is timed."""
    loss_a, gz_a, gc_a = (t.clone() for t in forward_backward(ours, batch, mode))
    loss_b, gz_b, gc_b = forward_backward(loop, batch, mode)
    # Ours L2-normalises the representative pixel before scoring it, the published code
    # scores it as is: equal values for unit-norm embeddings, but the gradients w.r.t. z then
    # differ by a component along z, which the network's own output normalisation removes.
    # Compare what reaches the network: the gradients projected orthogonally to z.
    z = batch.z_VBDHW.detach()
    gz_a, gz_b = (g - z * (g * z).sum(dim=2, keepdim=True) for g in (gz_a, gz_b))
    checks = {
        "loss": torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6),
        "grad z": torch.allclose(gz_a, gz_b, rtol=1e-4, atol=1e-8),
        "grad prototypes": torch.allclose(gc_a, gc_b, rtol=1e-4, atol=1e-6),
    }
    print(
        f"# {mode}: loss ours {loss_a.item():.6f} loop {loss_b.item():.6f}; "
        + ", ".join(f"{k} {'equal' if ok else 'DIFFERENT'}" for k, ok in checks.items())
    )
    if not all(checks.values()):
        raise SystemExit(f"{mode}: ours and the loop disagree; not timing")


def time_pass(
    fn: Callable[[Batch, str], torch.Tensor], batch: Batch, mode: str
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward + backward."""
    wall, cpu = time.perf_counter(), time.process_time()
    forward_backward(fn, batch, mode)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_mode(
    batch: Batch, mode: str, reps: int, loop_reps: int
) -> dict[str, list[tuple[float, float]]]:
    """`loop_reps` loop passes, each followed by its share of the `reps` passes of ours."""
    times: dict[str, list[tuple[float, float]]] = {"ours": [], "loop": []}
    per_round = [reps // loop_reps + (i < reps % loop_reps) for i in range(loop_reps)]
    for n_ours in per_round:
        times["loop"].append(time_pass(loop, batch, mode))
        times["ours"].extend(time_pass(ours, batch, mode) for _ in range(n_ours))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=None, help="view side in px (default 200)")
    parser.add_argument("--reps", type=int, default=None, help="timed passes of ours (5)")
    parser.add_argument("--loop-reps", type=int, default=None, help="timed loop passes (3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="96 px views, 3 + 1 passes")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines while the loop runs
    torch.set_num_threads(args.threads)
    size = args.size or (96 if args.quick else 200)
    reps = args.reps or (3 if args.quick else 5)
    loop_reps = args.loop_reps or (1 if args.quick else 3)
    if reps < loop_reps:
        raise SystemExit("--reps must be >= --loop-reps (ours runs at least once per round)")

    views, images, dim, protos = 5, 4, 128, 128
    batch = make_batch(views, images, size, dim, protos, seed=0)
    regions = batch.num_regions_B.tolist()
    ignored = float((batch.ids_VBHW < 0).float().mean())
    print(
        f"# {views} views x {images} images of {size}x{size} px, D={dim}, K={protos}; "
        f"regions per image {regions}; {ignored:.1%} of pixels ignored; "
        f"CPU, {torch.get_num_threads()} threads; forward + backward per pass"
    )
    print(f"{'pooling':<15} {'method':<6} {'median s':>9} {'best s':>9} {'CPU s':>9} passes")
    speedups = {}
    for mode in ("mean", "representative"):
        check_same(batch, mode)  # also the warm-up pass of both
        times = bench_mode(batch, mode, reps, loop_reps)
        median = {}
        for name, ts in times.items():
            walls = [w for w, _ in ts]
            median[name] = statistics.median(walls)
            cpu = statistics.median(c for _, c in ts)
            print(
                f"{mode:<15} {name:<6} {median[name]:>9.3f} {min(walls):>9.3f} {cpu:>9.3f} "
                f"{len(ts):>6}"
            )
        speedups[mode] = median["loop"] / median["ours"]
    print(f"mean_speedup_vs_loop={speedups['mean']:.2f}")
    print(f"speedup_vs_loop={speedups['representative']:.2f}")


if __name__ == "__main__":
    main()

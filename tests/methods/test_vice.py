import math

import pytest
import torch
import torch.nn.functional as F

from vice.methods.vice import ViceMethod, swav_cross_entropy
from vice.ops.sinkhorn import sinkhorn

from ..train.test_trainer import tiny_config


def test_swav_cross_entropy_matches_the_formula():
    q = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    s = torch.tensor([[[0.0, math.log(3) * 0.1], [0.0, 0.0]]])  # one predicting view
    # view 0 region 0: softmax([0, log 3]) = [1/4, 3/4] -> -log(1/4); region 1: -log(1/2)
    expected = math.log(4) + math.log(2)
    assert float(swav_cross_entropy(q, s, 0.1)) == pytest.approx(expected, rel=1e-6)


def test_loss_uses_center_targets_and_other_views_predictions():
    cfg = tiny_config()
    cfg.method.pooling = "mean"
    cfg.method.queue_length = 0
    from vice.data.collate import collate_vice
    from vice.data.datasets import build_source
    from vice.data.pretrain import ViceDataset
    from vice.ops.pooling import pool_regions

    torch.manual_seed(0)
    ds = ViceDataset(build_source(cfg.data), cfg.data)
    batch = collate_vice([ds[(0, i)] for i in range(2)])
    method = ViceMethod(cfg)
    loss, terms = method(batch, step=0)

    with torch.no_grad():
        model = method.export()
        z = model(batch.views.flatten(0, 1)).unflatten(0, batch.views.shape[:2])
        regions, _ = pool_regions(z, batch.ids, batch.num_regions, mode="mean")
        scores = regions @ method.prototypes.weight.T
        q = sinkhorn(scores[0], 0.05, 3)
        per_view = [-(q * F.log_softmax(scores[m] / 0.1, -1)).sum(-1).mean() for m in (1, 2)]
    assert loss.item() == pytest.approx(float(sum(per_view) / 2), rel=1e-5)
    assert terms["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert terms["regions_per_image"] == pytest.approx(float(batch.num_regions.float().mean()))


def test_queue_joins_from_queue_start_and_fills():
    cfg = tiny_config()
    cfg.method.queue_length, cfg.method.queue_start = 1000, 1
    method = ViceMethod(cfg, world_size=2)
    assert method.queue is not None and method.queue.capacity == 500  # per rank
    assert method.prototypes_frozen(0) and not method.prototypes_frozen(1)
    cfg.method.queue_length = 0
    assert ViceMethod(cfg).queue is None


def test_frozen_prototypes_get_no_update_and_stay_unit_norm():
    cfg = tiny_config()
    method = ViceMethod(cfg)  # frozen for step 0 only
    method.prototypes.weight.grad = torch.ones_like(method.prototypes.weight)
    method.before_optimizer_step(0)
    assert method.prototypes.weight.grad is None
    method.prototypes.weight.grad = torch.ones_like(method.prototypes.weight)
    method.before_optimizer_step(1)
    assert method.prototypes.weight.grad is not None
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0)
    method.after_optimizer_step(1)
    norms = method.prototypes.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)


def test_state_is_split_into_replicated_and_per_rank():
    cfg = tiny_config()
    method = ViceMethod(cfg)
    method.queue.push(torch.randn(5, cfg.model.embed_dim))
    replicated = method.state_dict()
    assert "prototypes.weight" in replicated
    assert all(k.startswith(("network.", "prototypes.")) for k in replicated)
    mine = method.rank_state()
    assert set(mine) == {"queue"} and int(mine["queue"]["count"]) == 5
    other = ViceMethod(cfg)
    other.load_rank_state(mine)
    assert torch.equal(other.queue.tensor(), method.queue.tensor())
    assert method.export() is method.network


def test_format_1_checkpoint_is_upgraded():
    cfg = tiny_config()
    method = ViceMethod(cfg)
    old_model = {
        k.removeprefix("network."): v for k, v in method.state_dict().items()
    }  # format 1: the network's and the prototypes' keys at the top level
    old = {
        "step": 3,
        "model": old_model,
        "prototypes_frozen": False,
        "ranks": [{"rng": {}, "method": {"queue": None}}],
    }
    new = ViceMethod.upgrade_checkpoint(old, "step_3")
    assert new["method_name"] == "vice" and "model" not in new
    fresh = ViceMethod(cfg)
    fresh.load_state_dict(new["method"])  # strict: every key maps
    assert torch.equal(fresh.prototypes.weight, method.prototypes.weight)


def test_a_single_view_is_refused_naming_the_key():
    cfg = tiny_config()
    cfg.data.views.num_views = 1
    with pytest.raises(ValueError, match=r"data\.views\.num_views=1"):
        cfg.validate()


@pytest.mark.slow
def test_loss_decreases_on_a_fixed_batch(tmp_path):
    from vice.data.collate import collate_vice
    from vice.data.datasets import build_source
    from vice.data.pretrain import ViceDataset
    from vice.methods import ViceMethod
    from vice.train.optim import build_optimizer

    cfg = tiny_config()
    cfg.method.queue_length = 0
    cfg.method.freeze_prototypes_iters = 0
    torch.manual_seed(0)
    ds = ViceDataset(build_source(cfg.data), cfg.data)
    batch = collate_vice([ds[(0, i)] for i in range(2)])
    method = ViceMethod(cfg)
    opt = build_optimizer(method.param_groups(cfg.optim.weight_decay), cfg.optim)
    for group in opt.param_groups:
        group["lr"] = 0.5
    losses = []
    for step in range(15):
        loss, _ = method(batch, step)
        opt.zero_grad()
        loss.backward()
        method.before_optimizer_step(step)
        opt.step()
        method.after_optimizer_step(step)
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def _swav_sinkhorn(scores_NK, epsilon, iterations):
    """SwAV's published Sinkhorn-Knopp, one process (the oracle's)."""
    q_KN = torch.exp(scores_NK / epsilon - (scores_NK / epsilon).max()).t()
    q_KN = q_KN / q_KN.sum()
    k, n = q_KN.shape
    for _ in range(iterations):
        q_KN = q_KN / q_KN.sum(dim=1, keepdim=True) / k
        q_KN = q_KN / q_KN.sum(dim=0, keepdim=True) / n
    return (q_KN * n).t()


def _loop_vice_loss(z_VBDSS, ids_VBSS, num_regions_B, c_KD, cfg, queue_MD):
    """ViCE's loss written from the published pseudo-code, one region at a time."""
    V, B = z_VBDSS.shape[:2]
    scores = {}  # (view, image, region) -> (K,) scores of the region's vector
    group_coherence = []
    for m in range(V):
        for b in range(B):
            z_PD = z_VBDSS[m, b].flatten(1).t()
            sp_P = ids_VBSS[m, b].flatten()
            s_PK = z_PD @ c_KD.t()
            distances = []
            for r in range(int(num_regions_B[b])):
                idx = (sp_P == r).nonzero().squeeze(1)
                if cfg.pooling == "mean":
                    vec = F.normalize(z_PD[idx].mean(0), dim=0)
                else:
                    i_star = int(s_PK[idx].max(dim=1).values.argmax())
                    vec = z_PD[idx][i_star]
                    rep = vec.detach()
                    distances.append((z_PD[idx] - rep).norm(dim=1).mean())
                scores[m, b, r] = vec @ c_KD.t()
            if distances:
                group_coherence.append(torch.stack(distances).mean())
    keys = [(b, r) for b in range(B) for r in range(int(num_regions_B[b]))]
    s0_NK = torch.stack([scores[0, b, r] for b, r in keys])
    with torch.no_grad():
        rows = torch.cat([s0_NK, queue_MD @ c_KD.t()]) if queue_MD is not None else s0_NK
        q_NK = _swav_sinkhorn(rows, cfg.epsilon, cfg.sinkhorn_iterations)[: len(keys)]
    swav = 0
    for m in range(1, V):
        sm_NK = torch.stack([scores[m, b, r] for b, r in keys])
        swav = swav + -(q_NK * F.log_softmax(sm_NK / cfg.temperature, dim=1)).sum(1).mean()
    swav = swav / (V - 1)
    if cfg.pooling == "mean":
        return swav
    coherence = torch.stack(group_coherence).mean()
    return (cfg.coherence_weight * coherence + swav) / 2


def _loss_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    V, B, D, S, K = 3, 2, 8, 6, 5
    num_regions_B = torch.tensor([3, 4])
    ids_VBSS = torch.empty(V, B, S, S, dtype=torch.int64)
    for b, n in enumerate(num_regions_B.tolist()):
        for m in range(V):
            ids = torch.randint(0, n, (S * S,), generator=g)
            ids[:n] = torch.arange(n)  # every region has pixels in every view
            ids[torch.rand(S * S, generator=g) < 0.15] = -1  # masked / not common
            ids[:n] = torch.arange(n)
            ids_VBSS[m, b] = ids.reshape(S, S)
    y_VBDSS = torch.randn(V, B, D, S, S, generator=g, dtype=torch.float64, requires_grad=True)
    c_KD = F.normalize(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1)
    c_KD.requires_grad_(True)
    queue_MD = F.normalize(torch.randn(4, D, generator=g, dtype=torch.float64), dim=1)
    return y_VBDSS, ids_VBSS, num_regions_B, c_KD, queue_MD


@pytest.mark.parametrize("pooling", ["representative", "mean"])
@pytest.mark.parametrize("with_queue", [False, True])
def test_loss_equals_the_published_per_region_loop_in_float64(pooling, with_queue):
    """Values and gradients (into the network's pre-normalisation features and the
    prototypes): representative detached inside coherence, coherence averaged per (view,
    image) then over them, Sinkhorn on the center view (+ queue), other views predict."""
    from vice.methods.vice import ViceConfig, vice_loss

    cfg = ViceConfig(pooling=pooling, epsilon=0.3, sinkhorn_iterations=3, coherence_weight=0.7)
    results = []
    for fast in (True, False):
        y, ids, num_regions, c, queue = _loss_inputs(seed=1)
        z = F.normalize(y, dim=2)  # the network's unit embeddings
        queue = queue if with_queue else None
        if fast:
            loss = vice_loss(z, ids, num_regions, c, cfg, queue)[0]
        else:
            loss = _loop_vice_loss(z, ids, num_regions, c, cfg, queue)
        loss.backward()
        results.append((loss.detach(), y.grad, c.grad))
    (fast_loss, fast_gy, fast_gc), (loop_loss, loop_gy, loop_gc) = results
    torch.testing.assert_close(fast_loss, loop_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast_gy, loop_gy, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast_gc, loop_gc, rtol=1e-10, atol=1e-12)
    assert fast_gy.abs().max() > 0 and fast_gc.abs().max() > 0


def test_the_queue_joining_is_a_tag_at_its_step_not_a_flat_metric():
    from vice.data.collate import collate_vice
    from vice.data.datasets import build_source
    from vice.data.pretrain import ViceDataset

    cfg = tiny_config()
    cfg.method.queue_length, cfg.method.queue_start = 64, 2
    torch.manual_seed(0)
    ds = ViceDataset(build_source(cfg.data), cfg.data)
    batch = collate_vice([ds[(0, i)] for i in range(2)])
    method = ViceMethod(cfg)
    tags = []
    for step in range(4):
        _, terms = method(batch, step)
        tags.append(method.run_tags())
    assert "queue_used" not in terms
    assert tags == [{}, {}, {"queue_used_from_step": "2"}, {"queue_used_from_step": "2"}]
    resumed = ViceMethod(cfg)  # a job resumed at step 4 with its queue: the tag stands as set
    resumed.load_rank_state(method.rank_state())
    resumed(batch, 4)
    assert resumed.run_tags() == {}
    cfg.method.queue_start = 0  # the queue is empty at step 0: it joins at step 1
    fresh = ViceMethod(cfg)
    fresh(batch, 0)
    fresh(batch, 1)
    assert fresh.run_tags() == {"queue_used_from_step": "1"}

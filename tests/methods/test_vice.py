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

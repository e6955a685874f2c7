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
    from vice.models import build_model
    from vice.ops.pooling import pool_regions

    torch.manual_seed(0)
    ds = ViceDataset(build_source(cfg.data), cfg.data)
    batch = collate_vice([ds[(0, i)] for i in range(2)])
    model = build_model(cfg.model)
    method = ViceMethod(cfg.method, cfg.model.embed_dim)
    loss, terms = method.loss(model, model.prototypes, batch, step=0)

    with torch.no_grad():
        z = model(batch["views"].flatten(0, 1)).unflatten(0, batch["views"].shape[:2])
        regions, _ = pool_regions(z, batch["ids"], batch["num_regions"], mode="mean")
        scores = regions @ model.prototypes.weight.T
        q = sinkhorn(scores[0], 0.05, 3)
        per_view = [-(q * F.log_softmax(scores[m] / 0.1, -1)).sum(-1).mean() for m in (1, 2)]
    assert loss.item() == pytest.approx(float(sum(per_view) / 2), rel=1e-5)
    assert terms["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert terms["regions_per_image"] == pytest.approx(float(batch["num_regions"].float().mean()))


def test_queue_joins_from_queue_start_and_fills():
    cfg = tiny_config()
    cfg.method.queue_length, cfg.method.queue_start = 1000, 1
    method = ViceMethod(cfg.method, cfg.model.embed_dim, world_size=2)
    assert method.queue is not None and method.queue.capacity == 500  # per rank
    assert method.prototypes_frozen(0) and not method.prototypes_frozen(1)
    assert ViceMethod(cfg.method.__class__(queue_length=0), 8).queue is None


@pytest.mark.slow
def test_loss_decreases_on_a_fixed_batch(tmp_path):
    from vice.data.collate import collate_vice
    from vice.data.datasets import build_source
    from vice.data.pretrain import ViceDataset
    from vice.methods import ViceMethod
    from vice.models import build_model
    from vice.train.optim import build_optimizer

    cfg = tiny_config()
    cfg.method.queue_length = 0
    cfg.method.freeze_prototypes_iters = 0
    torch.manual_seed(0)
    ds = ViceDataset(build_source(cfg.data), cfg.data)
    batch = collate_vice([ds[(0, i)] for i in range(2)])
    model = build_model(cfg.model)
    method = ViceMethod(cfg.method, cfg.model.embed_dim)
    opt = build_optimizer(model, cfg.optim)
    for group in opt.param_groups:
        group["lr"] = 0.5
    losses = []
    for step in range(15):
        loss, _ = method.loss(model, model.prototypes, batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.prototypes.normalize_()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses

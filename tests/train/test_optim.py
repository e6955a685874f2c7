import itertools
import math

import pytest
import torch

from vice.config import OptimConfig
from vice.train.optim import LARCSGD, build_optimizer, learning_rate, param_groups


def test_schedule_warmup_then_cosine():
    cfg = OptimConfig(lr=0.32, start_lr=0.02, final_lr=0.00032, warmup_iters=10)
    assert learning_rate(0, 110, cfg) == pytest.approx(0.02)
    assert learning_rate(5, 110, cfg) == pytest.approx(0.17)
    assert learning_rate(10, 110, cfg) == pytest.approx(0.32)
    assert learning_rate(60, 110, cfg) == pytest.approx((0.32 + 0.00032) / 2)
    assert learning_rate(110, 110, cfg) == pytest.approx(0.00032)
    values = [learning_rate(s, 110, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_poly_schedules_per_step_and_per_epoch():
    cfg = OptimConfig(lr=0.004, warmup_iters=0, schedule="poly", poly_power=0.9)
    assert learning_rate(0, 100, cfg) == pytest.approx(0.004)
    assert learning_rate(50, 100, cfg) == pytest.approx(0.004 * 0.5**0.9)
    assert learning_rate(100, 100, cfg) == 0.0
    # MaskContrast: (1 - e / E)^0.9 per epoch, 40 epochs of 10 steps
    cfg.schedule = "poly_epoch"
    assert learning_rate(0, 400, cfg, 10) == learning_rate(9, 400, cfg, 10) == 0.004
    assert learning_rate(10, 400, cfg, 10) == pytest.approx(0.004 * (39 / 40) ** 0.9)
    assert learning_rate(399, 400, cfg, 10) == pytest.approx(0.004 * (1 / 40) ** 0.9)


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match=r"optim.schedule='step': one of \['cosine', 'poly'"):
        OptimConfig(schedule="step").validate()


def test_no_decay_for_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = param_groups(model, 1e-4)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert len(no_decay["params"]) == 3 and no_decay["larc_weight_decay"] == 0.0


def test_larc_clips_the_step_to_the_trust_ratio():
    w = torch.nn.Parameter(torch.full((10,), 2.0))  # ||w|| = 2 * sqrt(10)
    opt = LARCSGD(
        [{"params": [w]}],
        lr=1.0,
        momentum=0.0,
        weight_decay=0.0,
        trust_coefficient=0.001,
        clip=True,
    )
    w.grad = torch.full((10,), 5.0)  # ||g|| = 5 * sqrt(10)
    opt.step()
    # ratio = 0.001 * 2/5 / lr = 4e-4 < 1 -> step = lr * ratio * g = 4e-4 * 5 = 0.002
    torch.testing.assert_close(w.detach(), torch.full((10,), 2.0 - 0.002))


def test_larc_leaves_small_steps_alone_and_lars_scales():
    # ||w|| = ||g|| = 2, eta = 0.001 -> trust ratio 0.001; lr = 1e-4 -> ratio / lr = 10.
    for clip, expected in ((True, 1.0 - 1e-4), (False, 1.0 - 1e-4 * 0.001)):
        w = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
        opt = LARCSGD(
            [{"params": [w]}],
            lr=1e-4,
            momentum=0.0,
            weight_decay=0.0,
            trust_coefficient=0.001,
            clip=clip,
        )
        w.grad = torch.ones(4, dtype=torch.float64)
        opt.step()
        assert float(w.detach()[0]) == pytest.approx(expected, rel=1e-12)


def test_build_optimizer_variants():
    model = torch.nn.Linear(3, 3)
    for name, cls in (("sgd_larc", LARCSGD), ("sgd_lars", LARCSGD), ("sgd", torch.optim.SGD)):
        opt = build_optimizer(model, OptimConfig(name=name))
        assert type(opt) is cls
        assert opt.param_groups[0]["lr"] == pytest.approx(0.02)
    assert not math.isnan(learning_rate(0, 1, OptimConfig(warmup_iters=0)))

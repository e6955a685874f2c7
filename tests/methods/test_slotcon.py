"""SlotCon (method=slotcon): the losses against per-image loops of the published description,
the overlap alignment, the teacher and centre schedules, configs through Hydra, and the real
loop (bit-exact resume with teacher and centre, 2 gloo ranks equal 1 process, export)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from torch import nn

from vice import dist
from vice.config import EvalConfig, MaskConfig, OptimConfig, ViewConfig
from vice.data.sampler import ResumableDistributedSampler
from vice.hydra_schema import register, to_config
from vice.methods.slotcon import SlotConConfig, SlotConMethod, slotcon_loss
from vice.methods.slotcon_losses import semantic_grouping, teacher_momentum
from vice.pipeline import evaluate_run, load_final_model
from vice.run_dir import RunDir
from vice.train.checkpoint import CheckpointManager
from vice.train.optim import OPTIMIZERS, param_groups, set_lr
from vice.train.trainer import Runtime, build_data, train

from ..train.test_ddp import run_torchrun
from ..train.test_trainer import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def slotcon_config(steps: int = 6, backbone_output: str = "decoder", view_size: int = 48):
    cfg = tiny_config(steps=steps)
    cfg.method = SlotConConfig(
        backbone_output=backbone_output, num_prototypes=8, hidden_dim=16, out_dim=8
    )
    cfg.data.masking = MaskConfig(enabled=False)
    cfg.data.views = ViewConfig(view_size=view_size, crop_scale_min=0.2, crop_scale_max=1.0)
    cfg.optim = OptimConfig(name="sgd_lars", lr=0.2, start_lr=0.02, warmup_iters=2)
    return cfg.validate()


# ---------------------------------------------------------------------------- configuration


def test_published_defaults():
    c = SlotConConfig()
    assert (c.backbone_output, c.num_prototypes, c.hidden_dim, c.out_dim) == ("c5", 256, 4096, 256)
    assert (c.grouping_temperature, c.student_temperature, c.teacher_temperature) == (
        0.07, 0.1, 0.07)  # fmt: skip
    assert (c.center_momentum, c.teacher_momentum, c.slot_temperature) == (0.9, 0.99, 0.2)
    assert (c.group_loss_weight, c.total_steps) == (0.5, 0)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("num_prototypes", 1, r"method\.num_prototypes=1: must be in \[2, inf\]"),
        ("backbone_output", "c4", r"method\.backbone_output='c4': one of \('c5', 'decoder'\)"),
        ("teacher_temperature", 0.0, r"method\.teacher_temperature=0\.0: must be in \(0"),
        ("teacher_momentum", 1.5, r"method\.teacher_momentum=1\.5: must be in \[0\.0, 1\.0\]"),
        ("total_steps", -1, r"method\.total_steps=-1"),
    ],
)
def test_bad_method_values_are_named(key, value, match):
    cfg = slotcon_config()
    setattr(cfg.method, key, value)
    with pytest.raises(ValueError, match=match):
        cfg.validate()


def test_settings_slotcon_cannot_use_are_refused_by_name():
    cfg = slotcon_config()
    cfg.data.masking.enabled = True
    with pytest.raises(ValueError, match=r"data\.masking\.enabled=True: slotcon does not mask"):
        cfg.validate()
    cfg = slotcon_config()
    cfg.data.views.crop_scale_max = 1.5  # ViCE's default: a side factor, not an area fraction
    with pytest.raises(ValueError, match=r"data\.views\.crop_scale_max=1\.5: slotcon's crops"):
        cfg.validate()
    cfg = slotcon_config()
    cfg.method.backbone_output = "c5"  # 48 px views: a 2 x 2 C5 map needs 64
    with pytest.raises(ValueError, match=r"data\.views\.view_size=48: method\.backbone_output=c5"):
        cfg.validate()


def _compose(overrides):
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides)


def test_method_slotcon_composes_through_hydra_with_its_schema():
    # The default recipe (experiment=local) with SlotCon's own keys at that scale
    # (conf/tuning/local_slotcon.yaml); everything else is the published default.
    cfg = to_config(_compose(["method=slotcon"]))
    assert isinstance(cfg.method, SlotConConfig)
    assert cfg.method.teacher_temperature == 0.07  # the yaml holds the schema's defaults
    assert (cfg.method.backbone_output, cfg.data.masking.enabled) == ("decoder", False)
    cfg = to_config(_compose(["method=slotcon", "method.num_prototypes=9"]))
    assert cfg.method.num_prototypes == 9
    with pytest.raises(ValueError, match=r"data\.masking\.enabled=True: slotcon does not mask"):
        to_config(_compose(["method=slotcon", "data.masking.enabled=true"]))
    with pytest.raises(ValueError, match=r"method\.num_prototypes=1"):
        to_config(_compose(["method=slotcon", "method.num_prototypes=1"]))
    with pytest.raises(ConfigCompositionException, match=r"method\.slot_temperature=warm"):
        _compose(["method=slotcon", "method.slot_temperature=warm"])  # a float, by SlotConConfig
    with pytest.raises(ConfigCompositionException, match=r"Could not override 'method\.pooling'"):
        _compose(["method=slotcon", "method.pooling=mean"])  # a ViCE key
    with pytest.raises(ValueError, match=r"unknown config key method\.epsilon"):
        to_config({"method": {"name": "slotcon", "epsilon": 0.05}})  # a ViCE key


def test_smoke_recipe_runs_the_decoder_trunk_small():
    cfg = to_config(_compose(["experiment=slotcon_smoke"]))
    assert isinstance(cfg.method, SlotConConfig) and cfg.method.backbone_output == "decoder"
    assert (cfg.trainer.max_steps, cfg.data.masking.enabled, cfg.optim.name) == (
        8, False, "sgd_lars")  # fmt: skip


def test_coco_recipe_is_the_published_one():
    cfg = to_config(_compose(["experiment=slotcon_coco", "data.root=/data"]))
    m, o, d = cfg.method, cfg.optim, cfg.data
    assert (m.backbone_output, m.num_prototypes, cfg.model.backbone) == ("c5", 256, "resnet50")
    assert (o.name, o.lr, o.weight_decay, o.trust_coefficient, o.momentum) == (
        "sgd_lars", 2.0, 1e-5, 0.001, 0.9)  # fmt: skip
    assert (o.start_lr, o.final_lr) == (0.02, 1e-6)  # warm-up from lr / 100, cosine to 1e-6
    # 512 images a step: 8 processes x 64; 5 warm-up epochs of COCO train2017 (118287 images)
    assert d.batch_size * cfg.trainer.gpus_per_node * cfg.trainer.nodes == 512
    assert o.warmup_iters == 5 * (118287 // 512) and cfg.trainer.epochs == 800
    assert (d.dataset, d.split, d.views.view_size) == ("coco", "train", 224)
    assert d.max_resample == 10  # view 2's tries for an overlap with view 1
    assert (d.views.crop_scale_min, d.views.crop_scale_max, d.masking.enabled) == (0.08, 1.0, False)
    v = d.views
    assert (v.jitter_prob, v.brightness, v.contrast, v.saturation, v.hue, v.gray_prob) == (
        0.8, 0.4, 0.4, 0.2, 0.1, 0.2)  # fmt: skip


# ---------------------------------------------------------------------------- loss oracles


def _bilinear(m_Chw, y, x):
    """torchvision's RoIAlign bilinear sample (zero beyond one pixel outside the map)."""
    c, h, w = m_Chw.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return m_Chw.new_zeros(c)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
    if y0 >= h - 1:
        y0, y = h - 1, float(h - 1)
    if x0 >= w - 1:
        x0, x = w - 1, float(w - 1)
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * m_Chw[:, y0, x0]
        + (1 - ly) * lx * m_Chw[:, y0, x1]
        + ly * (1 - lx) * m_Chw[:, y1, x0]
        + ly * lx * m_Chw[:, y1, x1]
    )


def _align_loop(m_Chw, box, flip):
    """The score map cropped to the overlap box with RoIAlign (output = map size, aligned,
    adaptive sampling grid) and flipped back if the view was flipped."""
    _, h, w = m_Chw.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    roi_w, roi_h = (x2 - x1) * w, (y2 - y1) * h
    bin_w, bin_h = roi_w / w, roi_h / h
    grid_w, grid_h = max(math.ceil(roi_w / w), 1), max(math.ceil(roi_h / h), 1)
    out = torch.stack([torch.stack([
        sum(_bilinear(m_Chw, y1 * h - 0.5 + i * bin_h + (gy + 0.5) * bin_h / grid_h,
                      x1 * w - 0.5 + j * bin_w + (gx + 0.5) * bin_w / grid_w)
            for gy in range(grid_h) for gx in range(grid_w)) / (grid_h * grid_w)
        for j in range(w)], dim=-1) for i in range(h)], dim=-2)  # fmt: skip
    return out.flip(-1) if flip else out


def _grouping_loop(x_Dhw, P_KD, temp, eps=1e-6):
    _, h, w = x_Dhw.shape
    pixels = [(i, j) for i in range(h) for j in range(w)]
    scores = torch.stack([torch.stack([torch.stack([
        torch.dot(P_KD[k] / P_KD[k].norm(), x_Dhw[:, i, j] / x_Dhw[:, i, j].norm())
        for j in range(w)]) for i in range(h)]) for k in range(len(P_KD))])  # fmt: skip
    attn = torch.softmax(scores / temp, dim=0) + eps  # per pixel, over prototypes
    slots = torch.stack([
        sum(x_Dhw[:, i, j] * attn[k, i, j] for i, j in pixels) / attn[k].sum()
        for k in range(len(P_KD))])  # fmt: skip
    return slots, scores


def _active(scores_Khw):
    return {int(scores_Khw[:, i, j].argmax()) for i in range(scores_Khw.shape[1])
            for j in range(scores_Khw.shape[2])}  # fmt: skip


def _oracle(xs, ys, P, Pt, center, boxes, flips, predictor, cfg):
    """methods.md section 3, one image, pixel and slot at a time."""
    n = xs[0].shape[0]
    temp = cfg.grouping_temperature
    S = [[_grouping_loop(xs[v][b], P, temp) for b in range(n)] for v in range(2)]
    T = [[_grouping_loop(ys[v][b].detach(), Pt, temp) for b in range(n)] for v in range(2)]
    group = slot = 0.0
    for s, t in ((0, 1), (1, 0)):
        ce, pixels = 0.0, 0
        for b in range(n):
            a_s = _align_loop(S[s][b][1], boxes[s][b], bool(flips[s][b]))
            a_t = _align_loop(T[t][b][1], boxes[t][b], bool(flips[t][b]))
            for i in range(a_s.shape[1]):
                for j in range(a_s.shape[2]):
                    q = torch.softmax((a_t[:, i, j] - center) / cfg.teacher_temperature, 0)
                    logp = torch.log_softmax(a_s[:, i, j] / cfg.student_temperature, 0)
                    ce, pixels = ce - (q * logp).sum(), pixels + 1
        group = group + ce / pixels
        keys = [(b, k) for b in range(n) for k in sorted(_active(T[t][b][1]))]
        key_vecs = [F.normalize(T[t][b][0][k], dim=0) for b, k in keys]
        losses = []
        for b in range(n):
            for k in sorted(_active(S[s][b][1]) & _active(T[t][b][1])):
                p = F.normalize(predictor(S[s][b][0][k][None])[0], dim=0)
                logits = torch.stack([p @ kv for kv in key_vecs]) / cfg.slot_temperature
                nll = torch.logsumexp(logits, 0) - logits[keys.index((b, k))]
                losses.append(nll * 2 * cfg.slot_temperature)
        slot = slot + sum(losses) / len(losses)
    w = cfg.group_loss_weight
    return w * group + (1 - w) * slot, group, slot


@pytest.mark.parametrize("grouping_temperature", [0.07, 0.3])
def test_losses_match_per_image_loops_in_values_and_gradients(grouping_temperature):
    torch.manual_seed(0)
    dt = torch.float64
    n, d, k, h, w = 3, 5, 6, 5, 4
    cfg = SlotConConfig(num_prototypes=k, out_dim=d, grouping_temperature=grouping_temperature)
    xs = [torch.randn(n, d, h, w, dtype=dt, requires_grad=True) for _ in range(2)]
    ys = [torch.randn(n, d, h, w, dtype=dt) for _ in range(2)]
    P = torch.randn(k, d, dtype=dt, requires_grad=True)
    Pt = P.detach() + 0.3 * torch.randn(k, d, dtype=dt)
    center = 0.1 * torch.randn(k, dtype=dt)
    lo = torch.rand(2, n, 2) * 0.5
    boxes = torch.cat([lo, (lo + 0.2 + torch.rand(2, n, 2) * (0.8 - lo)).clamp(max=1)], -1)
    flips = torch.tensor([[True, False, True], [False, True, True]])
    predictor = nn.Linear(d, d).to(dt)  # applied per anchor by the loop: no BatchNorm here

    got = slotcon_loss(xs, ys, P, Pt, center, boxes, flips, predictor, cfg)
    want = _oracle(xs, ys, P, Pt, center, boxes.double(), flips, predictor, cfg)
    for a, b in zip((got.total, got.group, got.slot), want, strict=True):
        assert a.item() == pytest.approx(b.item(), rel=1e-12)
    assert got.anchors > 1  # the slot term has anchors in both directions
    params = [*xs, P, *predictor.parameters()]
    for a, b in zip(torch.autograd.grad(got.total, params),
                    torch.autograd.grad(want[0], params), strict=True):  # fmt: skip
        assert b.abs().max() > 0
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-12  # measured: ~1e-15


def test_a_direction_with_fewer_than_two_anchors_adds_zero_but_keeps_the_predictor_in_graph():
    torch.manual_seed(1)
    cfg = SlotConConfig(num_prototypes=4, out_dim=3)
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    P = torch.randn(4, 3)
    # teacher == student and one image: the anchors are this image's active prototypes
    y = F.normalize(P[:1], dim=1).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()  # 1 active
    predictor = nn.Linear(3, 3)
    boxes = torch.tensor([0.0, 0.0, 1.0, 1.0]).expand(2, 1, 4)
    out = slotcon_loss([x, x], [y, y], P, P, torch.zeros(4), boxes, torch.zeros(2, 1, dtype=bool),
                       predictor, cfg)  # fmt: skip
    assert out.slot.item() == 0.0 and out.slot.requires_grad
    out.total.backward()
    assert predictor.weight.grad is not None and predictor.weight.grad.abs().max() == 0


# ---------------------------------------------------------------------------- alignment


def test_ema_moves_teacher_parameters_and_prototypes_but_not_its_batchnorm_statistics():
    torch.manual_seed(0)
    method = SlotConMethod(slotcon_config(steps=10))
    student = dict(method.student.named_parameters())
    for (name, t), s in zip(method.teacher.named_parameters(), student.values(), strict=True):
        assert torch.equal(t, s), name  # a copy to start with
    with torch.no_grad():
        for p in [*student.values(), method.prototypes]:
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.after_optimizer_step(3)
    m = teacher_momentum(4, 10, 0.99)
    for name, t in method.teacher.named_parameters():
        want = m * before[f"teacher.{name}"] + (1 - m) * before[f"student.{name}"]
        assert torch.allclose(t, want, rtol=0, atol=1e-6), name
    want = m * before["teacher_prototypes"] + (1 - m) * before["prototypes"]
    assert torch.allclose(method.teacher_prototypes, want, rtol=0, atol=1e-6)
    for name, buf in method.teacher.named_buffers():
        assert torch.equal(buf, before[f"teacher.{name}"]), name
    frozen = {k: v.clone() for k, v in method.state_dict().items()}
    method.after_optimizer_step(9)  # the last step: momentum 1
    assert all(torch.equal(v, frozen[k]) for k, v in method.state_dict().items())


def test_centre_is_the_momentum_average_of_the_teachers_full_score_maps():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = slotcon_config()
    method = SlotConMethod(cfg)
    from vice.data.datasets import build_source
    from vice.data.two_crops import TwoCropDataset

    ds = TwoCropDataset(build_source(cfg.data), cfg.data)
    batch = ds.collate([ds[(0, i)] for i in range(2)])
    with torch.no_grad():  # the same teacher forward (batch statistics) the step makes
        scores = [semantic_grouping(method.teacher.features(v), method.teacher_prototypes,
                                    0.07)[1] for v in batch.views]  # fmt: skip
    mean_K = torch.cat([s.permute(0, 2, 3, 1).flatten(0, 2) for s in scores]).mean(0)
    _, terms = method(batch, 0)
    assert torch.allclose(method.center, 0.1 * mean_K, atol=1e-6)
    assert 1 <= terms["active_prototypes"] <= 8 and terms["slots_per_image"] <= 8
    method.update_center([torch.ones(2, 8, 3, 3)])
    assert torch.allclose(method.center, 0.09 * mean_K + 0.1, atol=1e-6)


def test_schedule_length_is_the_trainers_step_count():
    cfg = slotcon_config(steps=0)
    cfg.trainer.epochs, cfg.data.synthetic.length = 3, 37
    cpu = torch.device("cpu")
    rt = Runtime(dist.DistInfo(0, 1, 0, cpu, None), cpu, False, 1)
    _, _, steps_per_epoch = build_data(cfg, rt)
    assert SlotConMethod(cfg).total_steps() == 3 * steps_per_epoch == 3 * 18
    per_rank = ResumableDistributedSampler(37, num_replicas=2).per_rank
    assert SlotConMethod(cfg, world_size=2).total_steps() == 3 * (per_rank // 2) == 27
    cfg.trainer.max_steps = 5
    assert SlotConMethod(cfg).total_steps() == 5
    cfg.method.total_steps = 1000  # e.g. a short run on a long run's schedule
    assert SlotConMethod(cfg).total_steps() == 1000


# ---------------------------------------------------------------------------- networks


@pytest.mark.parametrize(("mode", "side", "map_side"), [("decoder", 48, 12), ("c5", 64, 2)])
def test_export_is_the_teacher_mapping_images_to_unit_embeddings(mode, side, map_side):
    torch.set_num_threads(1)
    method = SlotConMethod(slotcon_config(backbone_output=mode, view_size=side))
    assert method.export() is method.teacher
    assert not any(p.requires_grad for p in method.teacher.parameters())
    assert {id(p) for p in method.parameters() if p.requires_grad}.isdisjoint(
        id(p) for p in [*method.teacher.parameters(), method.teacher_prototypes]
    )
    x = torch.randn(2, 3, side, side)
    assert method.student.features(x).shape == (2, 8, map_side, map_side)
    z = method.export().eval()(x)
    assert z.shape == (2, 8, side, side)
    assert torch.allclose(z.norm(dim=1), torch.ones(2, side, side), atol=1e-5)
    if mode == "c5":  # PixPro's init: every residual block starts as the identity
        assert all(b.bn2.weight.abs().max() == 0 for b in method.student.backbone.layer4)


def test_assignments_are_the_teachers_arg_max_prototype_per_pixel():
    torch.set_num_threads(1)
    method = SlotConMethod(slotcon_config(backbone_output="decoder", view_size=48)).eval()
    x = torch.randn(2, 3, 48, 48)
    features = method.teacher.features(x)
    with torch.no_grad():
        method.teacher_prototypes[:2].copy_(features[0, :, :2, 0].T)  # pixels (0,0), (1,0)
    assign = method.assignments(x)
    assert assign.shape == (2, 12, 12) and assign.dtype == torch.int64
    assert assign[0, 0, 0] == 0 and assign[0, 1, 0] == 1  # each its own prototype
    cos = torch.einsum(
        "kd,bdhw->bkhw", F.normalize(method.teacher_prototypes, dim=1), F.normalize(features, dim=1)
    )
    assert torch.equal(assign, cos.argmax(dim=1))


def test_sgd_lars_is_the_published_lars():
    """Barlow Twins' LARS (SlotCon's utils/lars.py): 1-D parameters get neither weight decay
    nor the trust ratio; every other one (prototypes included) gets both."""
    torch.manual_seed(0)
    dt = torch.float64
    module = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(dt)
    module.register_parameter("prototypes", nn.Parameter(torch.randn(5, 3, dtype=dt)))
    ref = {n: p.detach().clone() for n, p in module.named_parameters()}
    mu = {n: torch.zeros_like(p) for n, p in ref.items()}
    cfg = OptimConfig(name="sgd_lars", weight_decay=1e-2, trust_coefficient=0.001, momentum=0.9)
    opt = OPTIMIZERS["sgd_lars"](param_groups(module, cfg.weight_decay), cfg)
    for _ in range(3):
        grads = {n: torch.randn_like(p) for n, p in ref.items()}
        for n, p in module.named_parameters():
            p.grad = grads[n].clone()
            g = grads[n]
            if p.ndim != 1:
                g = g + 1e-2 * ref[n]
                g = g * (0.001 * ref[n].norm() / g.norm())
            mu[n] = 0.9 * mu[n] + g
            ref[n] = ref[n] - 0.5 * mu[n]
        set_lr(opt, 0.5)
        opt.step()
    for n, p in module.named_parameters():
        assert torch.allclose(p, ref[n], rtol=1e-10, atol=0), n


# ---------------------------------------------------------------------------- distributed


def _method_state(run_dir: Path) -> dict:
    state, _ = CheckpointManager(RunDir(run_dir).checkpoints).load_latest()
    assert state["method_name"] == "slotcon"
    return state["method"]


@pytest.mark.slow
def test_trains_resumes_bit_exactly_with_teacher_and_centre_and_evaluates_the_teacher(tmp_path):
    cfg = slotcon_config(steps=6)
    straight = train(cfg, tmp_path / "a")
    assert straight["status"] == "completed"
    stopped = train(cfg, tmp_path / "b", should_stop=lambda step: step == 3)
    assert stopped["status"] == "stopped" and stopped["steps"] == 3
    resumed = train(cfg, tmp_path / "b")
    assert resumed["status"] == "completed" and resumed["steps"] == 6

    a, b = _method_state(tmp_path / "a"), _method_state(tmp_path / "b")
    assert a.keys() == b.keys() and {"center", "teacher_prototypes"} <= a.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert a["center"].abs().max() > 0
    head = "projector.6.weight"
    assert not torch.equal(a[f"teacher.{head}"], a[f"student.{head}"])

    final = torch.load(RunDir(tmp_path / "a").final_weights, weights_only=True)
    assert final.keys() == {k[len("teacher.") :] for k in a if k.startswith("teacher.")}
    assert all(torch.equal(v, a[f"teacher.{k}"]) for k, v in final.items())
    network = load_final_model(cfg, tmp_path / "a", torch.device("cpu"))
    assert torch.equal(network.state_dict()[head], a[f"teacher.{head}"])
    cfg.eval = EvalConfig(
        image_size=32, max_images=4, cluster_counts=[4], linear=False, kmeans_iters=3
    )
    metrics = evaluate_run(cfg, tmp_path / "a")
    assert 0.0 <= metrics["clustering.4.miou"] <= 1.0


# Biases of the layers right before a BatchNorm (1x1 convs of the projector and predictor,
# and the decoder's head, which feeds the projector's first conv).
SHIFTED_BEFORE_BATCHNORM = (
    "projector.0.bias", "projector.3.bias", "predictor.mlp.0.bias", "predictor.mlp.3.bias",
    "decoder.head.bias",
)  # fmt: skip


def _torchrun(cfg, run_dir: Path, procs: int) -> dict:
    worker = str(ROOT / "tests" / "train" / "ddp_worker.py")  # the trainer under torchrun
    run_torchrun(cfg, run_dir, procs, [worker, "float64"])
    return _method_state(run_dir)


def _first_step_counts_per_rank(cfg) -> tuple[list[int], list[int]]:
    """Anchors and active teacher slots (view 1 -> 2) of the first global batch of 4 that
    each of 2 ranks holds (rank r gets images r and r + 2 of the 1-process batch), from the
    network the trainer builds (seed 0, float64)."""
    from vice.data.datasets import build_source
    from vice.data.two_crops import TwoCropDataset
    from vice.methods.slotcon_losses import active_prototypes

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(cfg.trainer.seed)
        method = SlotConMethod(cfg)
        ds = TwoCropDataset(build_source(cfg.data), cfg.data)
        sampler = ResumableDistributedSampler(len(ds), seed=cfg.data.seed)
        views = ds.collate([ds[k] for k in list(sampler)[:4]]).views.double()
        with torch.no_grad():
            student = method.student.features(views[0])
            teacher = method.teacher.features(views[1])
        temp = cfg.method.grouping_temperature
        act_s = active_prototypes(semantic_grouping(student, method.prototypes, temp)[1])
        act_t = active_prototypes(semantic_grouping(teacher, method.teacher_prototypes, temp)[1])
    finally:
        torch.set_default_dtype(default)
    anchors, keys = (act_s & act_t).sum(1), act_t.sum(1)
    return [int(anchors[r::2].sum()) for r in (0, 1)], [int(keys[r::2].sum()) for r in (0, 1)]


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_in_float64(tmp_path):
    def config():
        cfg = slotcon_config(steps=3)
        cfg.data.synthetic.length = 8  # 2 global batches of 4 per epoch: crosses an epoch
        cfg.method.num_prototypes = 64  # of 144 pixels: images differ in active prototypes
        return cfg

    # The ranks' first batches hold different numbers of anchors and keys (gathered with
    # padding): 56 / 52 anchors and 73 / 72 keys from view 1 to view 2.
    anchors, keys = _first_step_counts_per_rank(config())
    assert anchors[0] != anchors[1] and keys[0] != keys[1], (anchors, keys)
    one = _torchrun(config(), tmp_path / "one", 1)
    two = _torchrun(config(), tmp_path / "two", 2)
    assert one.keys() == two.keys()
    worst, worst_key = 0.0, None
    for key, value in one.items():
        if not value.dtype.is_floating_point:
            assert torch.equal(value, two[key]), key
            continue
        assert value.dtype == torch.float64, key
        gap = (value - two[key]).abs().max().item()
        if key.endswith(SHIFTED_BEFORE_BATCHNORM):
            # Their gradient is 0 in exact arithmetic (BatchNorm removes any constant shift):
            # they hold rounding noise (~1e-15 here), which no relative check can compare.
            assert gap < 1e-12 and value.abs().max() < 1e-12, (key, gap)
            continue
        rel = gap / value.abs().max().clamp_min(1e-12).item()
        if rel > worst:
            worst, worst_key = rel, key
    # float64 rounding through 3 steps (student, teacher, predictor, centre and BatchNorm
    # buffers): measured 8.8e-14. Per-rank anchor means, rank-local BatchNorm or centre
    # statistics differ by >1e-4.
    assert worst < 1e-9, (worst_key, worst)

"""MaskContrast as a method: configuration and recipes, network, key encoder (EMA, shuffled
BN), queue, the loss the method back-propagates, resume and DDP equivalence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from vice.config import EvalConfig, MaskConfig, MaskPriorConfig, OptimConfig, ViewConfig
from vice.hydra_schema import register, to_config
from vice.methods.maskcontrast import (
    LocalBatchNorm2d,
    MaskContrastConfig,
    MaskContrastMethod,
    maskcontrast_loss,
)
from vice.pipeline import evaluate_run, load_final_model
from vice.run_dir import RunDir
from vice.train.checkpoint import CheckpointManager
from vice.train.trainer import train

from ..train.test_ddp import run_torchrun
from ..train.test_trainer import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def mc_config(steps: int = 6, **method) -> object:
    cfg = tiny_config(steps=steps)
    cfg.method = MaskContrastConfig(queue_size=8, **method)
    cfg.data.batch_size = 4
    cfg.data.masking = MaskConfig(enabled=False)
    cfg.data.mask_prior = MaskPriorConfig(source="gt")
    cfg.data.views = ViewConfig(view_size=32, crop_scale_min=0.2, crop_scale_max=1.0)
    cfg.optim = OptimConfig(name="sgd", lr=0.05, start_lr=0.05, warmup_iters=0, schedule="poly")
    return cfg.validate()


def _compose(overrides: list[str]):
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides)


# ---------------------------------------------------------------------------- configuration


def test_published_defaults():
    c = MaskContrastConfig()
    assert (c.temperature, c.momentum, c.queue_size, c.saliency_weight) == (0.5, 0.999, 128, 1.0)
    assert (c.dropout, c.shuffle_bn, c.frozen) == (0.5, True, [])


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("temperature", 0.0, r"method\.temperature=0\.0"),
        ("momentum", 1.5, r"method\.momentum=1\.5"),
        ("queue_size", -1, r"method\.queue_size=-1"),
        ("frozen", ["layer9"], r"method\.frozen=\['layer9'\]: trunk modules among"),
    ],
)
def test_bad_method_values_are_named(key, value, match):
    with pytest.raises(ValueError, match=match):
        MaskContrastConfig(**{key: value}).validate()


def test_settings_maskcontrast_cannot_use_are_refused_by_name():
    cfg = mc_config()
    cfg.data.masking.enabled = True
    with pytest.raises(ValueError, match=r"data\.masking\.enabled=True: maskcontrast does not"):
        cfg.validate()
    cfg = mc_config()
    cfg.data.views.crop_scale_max = 1.5
    with pytest.raises(ValueError, match=r"data\.views\.crop_scale_max=1\.5: .* at most 1"):
        cfg.validate()
    cfg = mc_config()
    cfg.data.batch_size = 1
    with pytest.raises(ValueError, match=r"data\.batch_size=1: .* at least 2 images per step"):
        cfg.validate()
    cfg = mc_config()
    cfg.data.mask_prior.source = "basnet"
    with pytest.raises(ValueError, match=r"data\.mask_prior\.source='basnet': one of"):
        cfg.validate()


def test_method_maskcontrast_composes_on_the_embedded_default():
    cfg = to_config(_compose(["method=maskcontrast"]))
    assert isinstance(cfg.method, MaskContrastConfig)
    assert (cfg.data.dataset, cfg.data.mask_prior.source, cfg.data.masking.enabled) == (
        "synthetic", "gt", False)  # fmt: skip
    assert (cfg.model.embed_dim, cfg.method.temperature) == (32, 0.5)


def test_voc_recipe_is_the_published_one():
    cfg = to_config(_compose(["experiment=maskcontrast_voc", "data.root=/data/VOC2012"]))
    m, o, d, t = cfg.method, cfg.optim, cfg.data, cfg.trainer
    assert (cfg.model.backbone, cfg.model.output_stride, cfg.model.embed_dim) == (
        "resnet50", 8, 32)  # fmt: skip
    assert (m.temperature, m.momentum, m.queue_size) == (0.5, 0.999, 128)
    assert m.frozen == ["conv1", "bn1", "layer1", "layer2"]
    assert (o.name, o.lr, o.momentum, o.weight_decay, o.warmup_iters) == (
        "sgd", 0.004, 0.9, 1e-4, 0)  # fmt: skip
    assert (o.schedule, o.poly_power, t.epochs) == ("poly_epoch", 0.9, 40)
    assert d.batch_size * t.gpus_per_node * t.nodes == 64
    assert (d.dataset, d.split, d.eval_split) == ("voc", "trainaug", "val")
    v = d.views
    assert (v.view_size, v.crop_scale_min, v.crop_scale_max) == (224, 0.2, 1.0)
    assert (v.jitter_prob, v.brightness, v.contrast, v.saturation, v.hue, v.gray_prob) == (
        0.8, 0.4, 0.4, 0.4, 0.1, 0.2)  # fmt: skip
    assert (v.blur_prob, v.flip_prob) == (0.0, 0.5)
    p = d.mask_prior
    assert (p.source, p.threshold, p.min_component, p.min_area) == ("files", 0.5, 0.01, 0.01)


# ---------------------------------------------------------------------------- networks


def test_network_outputs_unit_embeddings_and_saliency_at_input_size():
    torch.manual_seed(0)
    method = MaskContrastMethod(mc_config()).eval()
    x = torch.randn(2, 3, 32, 32)
    z, sal = method.query.outputs(x)
    assert z.shape == (2, 16, 32, 32) and sal.shape == (2, 32, 32)
    assert torch.allclose(z.norm(dim=1), torch.ones(2, 32, 32), atol=1e-5)
    assert method.export() is method.query
    assert torch.equal(method.export()(x), z)
    assert torch.equal(method.query.foreground(x), sal > 0)
    assert method.query.saliency.bias is None
    assert not any(p.requires_grad for p in method.key.parameters())
    assert all(type(m) is LocalBatchNorm2d for m in method.key.modules()
               if isinstance(m, torch.nn.BatchNorm2d))  # fmt: skip


def test_frozen_trunk_modules_get_no_gradient_and_keep_their_statistics():
    method = MaskContrastMethod(mc_config(frozen=["conv1", "bn1", "layer1"])).train()
    assert not any(p.requires_grad for p in method.query.backbone.layer1.parameters())
    assert all(p.requires_grad for p in method.query.backbone.layer2.parameters())
    assert not method.query.backbone.bn1.training and not method.query.backbone.layer1.training
    assert method.query.backbone.layer2.training
    trained = {id(p) for g in method.param_groups(1e-4) for p in g["params"]}
    assert id(method.query.backbone.conv1.weight) not in trained


def test_key_encoder_is_the_momentum_average_of_the_query():
    method = MaskContrastMethod(mc_config(momentum=0.9))
    q0 = {n: p.detach().clone() for n, p in method.query.named_parameters()}
    k0 = {n: p.detach().clone() for n, p in method.key.named_parameters()}
    assert all(torch.equal(q0[n], k0[n]) for n in q0)
    with torch.no_grad():
        for p in method.query.parameters():
            p.add_(1.0)
    method.after_optimizer_step(0)
    for n, p in method.key.named_parameters():
        assert torch.allclose(p, 0.9 * k0[n] + 0.1 * (q0[n] + 1.0), atol=1e-6), n


def test_queue_takes_the_newest_keys_and_wraps():
    method = MaskContrastMethod(mc_config())  # queue of 8
    first = F.normalize(torch.randn(6, 16), dim=1)
    method.enqueue(first)
    assert torch.equal(method.queue[:6], first) and int(method.queue_ptr) == 6
    second = F.normalize(torch.randn(4, 16), dim=1)
    method.enqueue(second)
    assert torch.equal(method.queue[6:], second[:2]) and torch.equal(method.queue[:2], second[2:])
    assert int(method.queue_ptr) == 2
    many = F.normalize(torch.randn(11, 16), dim=1)  # more than the queue: the newest 8 stay
    method.enqueue(many)
    assert {tuple(r.tolist()) for r in method.queue} == {tuple(r.tolist()) for r in many[-8:]}


# ---------------------------------------------------------------------------- the loss


def test_training_step_is_the_published_loss_from_the_definitions():
    """Float64, one process: the method's loss equals F.cross_entropy with ENet weights over
    [keys of the batch, queue] for every foreground pixel of the query, plus the balanced
    BCE of the saliency logits, computed here from the network's outputs."""
    from vice.data.batches import MaskCropBatch

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        method = MaskContrastMethod(mc_config(dropout=0.0)).train()
        b, s = 4, 32
        views = torch.randn(2, b, 3, s, s)
        masks = torch.zeros(2, b, s, s, dtype=torch.bool)
        for i in range(b):
            masks[:, i, 4 + i : 20 + 2 * i, 6 : 18 + i] = True
        batch = MaskCropBatch(
            skipped=0, views=views, masks=masks, flips=torch.zeros(2, b, dtype=torch.bool),
            crops=torch.zeros(2, b, 4), keys=[(0, i) for i in range(b)],
            indices=torch.arange(b),
        )  # fmt: skip
        queue = method.queue.clone()
        loss, terms = method.training_step(batch, 0)
        # the reference, from the same networks in the same modes
        q, sal = method.query.outputs(views[0])
        with torch.no_grad():
            k = method.key(views[1])
        keys = F.normalize((k * masks[1][:, None]).sum(dim=(2, 3)), dim=1)
        fg = masks[0]
        anchors = q.permute(0, 2, 3, 1)[fg]
        labels = torch.arange(b)[:, None, None].expand(b, s, s)[fg]
        logits = anchors @ torch.cat([keys, queue]).T / 0.5
        p = torch.bincount(labels, minlength=b).double() / len(labels)
        weight = torch.cat([1 / torch.log(1.02 + p), torch.zeros(len(queue))])
        contrast = F.cross_entropy(logits, labels, weight=weight)
        w = 1 - fg.double().mean()
        bce = F.binary_cross_entropy_with_logits(sal, fg.double(), reduction="none")
        saliency = (torch.where(fg, w, 1 - w) * bce).mean()
        assert torch.allclose(loss, contrast + saliency, rtol=1e-10, atol=0)
        assert terms["loss_contrast"] == pytest.approx(float(contrast.detach()), rel=1e-10)
        assert terms["loss_saliency"] == pytest.approx(float(saliency.detach()), rel=1e-10)
        assert terms["fg_fraction"] == pytest.approx(float(fg.double().mean()))
        # the batch's keys entered the queue, newest last
        assert torch.allclose(method.queue[:b], keys, atol=1e-12)
    finally:
        torch.set_default_dtype(default)


def test_loss_of_a_batch_without_anchors_is_the_saliency_term_only():
    torch.manual_seed(0)
    cfg = mc_config()
    q = F.normalize(torch.randn(2, 16, 8, 8, requires_grad=True), dim=1)
    sal = torch.randn(2, 8, 8, requires_grad=True)
    empty = torch.zeros(2, 8, 8, dtype=torch.bool)
    out = maskcontrast_loss(q, sal, empty, torch.zeros(2, 16), 0, torch.zeros(0, 16), cfg.method)
    assert float(out.contrast) == 0.0 and out.anchors == 0.0
    out.total.backward()
    assert torch.isfinite(sal.grad).all()


# ---------------------------------------------------------------------------- shuffled BN


def _shuffle_worker(rank: int, out: str) -> None:
    import torch.distributed as torch_dist

    # a file rendezvous: a free TCP port picked in the test could be taken before it is bound
    torch_dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank,
                                  world_size=2)  # fmt: skip
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        shuffled = MaskContrastMethod(mc_config(shuffle_bn=True))
        torch.manual_seed(0)
        plain = MaskContrastMethod(mc_config(shuffle_bn=False))
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own 3 images
        x = torch.randn(3, 3, 32, 32, generator=gen)
        masks = torch.rand(3, 32, 32, generator=gen) > 0.5
        result = {}
        for mode in ("eval", "train"):
            for m in (shuffled, plain):
                m.train(mode == "train")
            a, offset = shuffled.keys(x, masks, step=5)
            b, _ = plain.keys(x, masks, step=5)
            result[mode] = (a, b, offset)
        torch.save(result, f"{out}/rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow
def test_shuffled_bn_keys_equal_unshuffled_in_eval_mode_and_differ_in_training(tmp_path):
    torch.multiprocessing.spawn(_shuffle_worker, args=(str(tmp_path),), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for r, result in enumerate(ranks):
        a, b, offset = result["eval"]
        assert a.shape == (6, 16) and offset == 3 * r
        # the same keys of the 6 images, in the same (rank) order: running statistics
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
        a, b, _ = result["train"]
        # per-rank batch statistics of another subset of the images: not the same keys
        assert (a - b).abs().max() > 1e-3
    assert torch.equal(ranks[0]["train"][0], ranks[1]["train"][0])  # every rank: all keys


# ---------------------------------------------------------------------------- training


def _method_state(run_dir: Path) -> dict:
    state, _ = CheckpointManager(RunDir(run_dir).checkpoints).load_latest()
    assert state["method_name"] == "maskcontrast"
    return state["method"]


@pytest.mark.slow
def test_trains_resumes_bit_exactly_with_key_encoder_and_queue_and_evaluates(tmp_path):
    cfg = mc_config(steps=6)
    straight = train(cfg, tmp_path / "a")
    assert straight["status"] == "completed"
    stopped = train(cfg, tmp_path / "b", should_stop=lambda step: step == 3)
    assert stopped["status"] == "stopped" and stopped["steps"] == 3
    resumed = train(cfg, tmp_path / "b")
    assert resumed["status"] == "completed" and resumed["steps"] == 6

    a, b = _method_state(tmp_path / "a"), _method_state(tmp_path / "b")
    assert a.keys() == b.keys() and {"queue", "queue_ptr"} <= a.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert int(a["queue_ptr"]) == (6 * 4) % 8
    head = "embed.weight"
    assert not torch.equal(a[f"key.{head}"], a[f"query.{head}"])

    final = torch.load(RunDir(tmp_path / "a").final_weights, weights_only=True)
    assert final.keys() == {k[len("query.") :] for k in a if k.startswith("query.")}
    network = load_final_model(cfg, tmp_path / "a", torch.device("cpu"))
    assert torch.equal(network.state_dict()[head], a[f"query.{head}"])
    cfg.eval = EvalConfig(
        image_size=32, max_images=12, cluster_counts=[4], linear=False, kmeans_iters=3
    )
    metrics = evaluate_run(cfg, tmp_path / "a")
    assert 0.0 <= metrics["clustering.4.miou"] <= 1.0
    assert 0.0 <= metrics["saliency.iou"] <= 1.0
    assert "mask_kmeans.miou" in metrics or "mask_kmeans.skipped" in metrics


def _torchrun(cfg, run_dir: Path, procs: int) -> dict:
    worker = str(ROOT / "tests" / "train" / "ddp_worker.py")
    run_torchrun(cfg, run_dir, procs, [worker, "float64"])
    return _method_state(run_dir)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_in_float64(tmp_path):
    def config():
        # no dropout (each process draws its own), key BN global like the query's
        cfg = mc_config(steps=3, dropout=0.0, shuffle_bn=False)
        cfg.data.synthetic.length = 8  # 2 global batches of 4 per epoch: crosses an epoch
        return cfg

    one = _torchrun(config(), tmp_path / "one", 1)
    two = _torchrun(config(), tmp_path / "two", 2)
    assert one.keys() == two.keys()
    # Rank r holds images r and r + 2 of the global batch, so the gathered keys enter the
    # queue in another row order (which no logit depends on): compare the rows as a set.
    for state in (one, two):
        state["queue"] = state["queue"][state["queue"][:, 0].argsort()]
    worst, worst_key = 0.0, None
    for key, value in one.items():
        if not value.dtype.is_floating_point:
            assert torch.equal(value, two[key]), key
            continue
        gap = (value - two[key]).abs().max().item()
        scale = value.abs().max().clamp_min(1e-12).item()
        if scale < 1e-10:  # biases before BatchNorm: 0 gradient in exact arithmetic
            assert gap < 1e-12, (key, gap)
            continue
        if gap / scale > worst:
            worst, worst_key = gap / scale, key
    # float64 rounding through 3 steps; per-rank keys, weights or BN statistics differ >1e-4
    assert worst < 1e-9, (worst_key, worst)

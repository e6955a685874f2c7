"""The D3SSL switches (method.decoupling / method.depositioning) on vice and slotcon: losses
equal per-region loops in float64 (values and gradients), methods that cannot take them
refuse them by name, and training with both on resumes bit-exactly."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vice.config import RegionSwitchConfig
from vice.methods import METHODS
from vice.methods.maskcontrast import MaskContrastConfig
from vice.methods.slotcon import SlotConConfig, slot_prediction
from vice.methods.slotcon_losses import active_prototypes, masked_grouping, semantic_grouping
from vice.methods.vice import ViceConfig, predict_targets, present_regions
from vice.run_dir import RunDir
from vice.train.trainer import train

from ..train.test_trainer import tiny_config
from .test_slotcon import slotcon_config

ON = RegionSwitchConfig(weight=0.3)

# ---------------------------------------------------------------------------- ViCE


def _vice_loop(z_BDSS, ids_BSS, num_regions_B, c_KD, q_RK, cfg):
    """Per image, per region present in the input: pool (mean of unit pixels, normalised, or
    the most prototype-confident pixel), score against the prototypes, CE with its target."""
    total, row = 0.0, 0
    for b in range(z_BDSS.shape[0]):
        z_PD = z_BDSS[b].flatten(1).t()
        ids_P = ids_BSS[b].flatten()
        for r in range(int(num_regions_B[b])):
            idx = (ids_P == r).nonzero().squeeze(1)
            if len(idx):
                if cfg.pooling == "mean":
                    vec = F.normalize(z_PD[idx].mean(0), dim=0)
                else:
                    vec = z_PD[idx][int((z_PD[idx] @ c_KD.detach().t()).max(1).values.argmax())]
                log_p = F.log_softmax(vec @ c_KD.t() / cfg.temperature, dim=0)
                total = total - (q_RK[row + r] * log_p).sum()
        row += int(num_regions_B[b])
    return total


@pytest.mark.parametrize("pooling", ["representative", "mean"])
def test_vice_input_loss_equals_a_per_region_loop_in_float64(pooling):
    g = torch.Generator().manual_seed(4)
    B, D, S, K = 3, 6, 7, 5
    num_regions = torch.tensor([3, 4, 2])
    ids = torch.stack([torch.randint(-1, int(n), (S, S), generator=g) for n in num_regions])
    ids[0][ids[0] == 1] = -1  # region 1 of image 0 is cut away entirely: it adds nothing
    y = torch.randn(B, D, S, S, generator=g, dtype=torch.float64, requires_grad=True)
    c = F.normalize(torch.randn(K, D, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    q = torch.softmax(torch.randn(int(num_regions.sum()), K, generator=g), 1).double()
    cfg = ViceConfig(pooling=pooling, temperature=0.3)
    assert present_regions(ids, num_regions).tolist() == [
        True, False, True, True, True, True, True, True, True]  # fmt: skip
    got = predict_targets(F.normalize(y, dim=1), ids, num_regions, c, q, cfg)
    want = _vice_loop(F.normalize(y, dim=1), ids, num_regions, c, q, cfg)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    for a, b in zip(torch.autograd.grad(got, [y, c]), torch.autograd.grad(want, [y, c]),
                    strict=True):  # fmt: skip
        assert b.abs().max() > 0
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-10


# ---------------------------------------------------------------------------- SlotCon


def test_masked_grouping_with_everything_kept_is_semantic_grouping():
    torch.manual_seed(0)
    x, P = torch.randn(2, 4, 3, 5, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    slots, scores = masked_grouping(x, P, 0.1, torch.ones(2, 3, 5, dtype=torch.float64))
    want_slots, want_scores = semantic_grouping(x, P, 0.1)
    torch.testing.assert_close(slots, want_slots, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(scores, want_scores, rtol=0, atol=0)


def test_active_prototypes_count_only_pixels_in_the_mask():
    scores = torch.zeros(1, 3, 1, 3)
    scores[0, 0, 0, 0] = scores[0, 1, 0, 1] = scores[0, 2, 0, 2] = 1.0  # pixel j wins k = j
    where = torch.tensor([[[True, False, True]]])
    assert active_prototypes(scores, where).tolist() == [[True, False, True]]
    assert active_prototypes(scores).tolist() == [[True, True, True]]


def _slot_loop(x_BDhw, keep_Bhw, P, slots_t, active_t, predictor, cfg):
    """Per image: attention x kept fraction pools the slots; anchors are prototypes that win
    a kept pixel and are active in the teacher; InfoNCE x 2 tau against every active teacher
    slot of the batch; mean over anchors."""
    B, _, h, w = x_BDhw.shape
    keys = [(b, k) for b in range(B) for k in range(P.shape[0]) if active_t[b, k]]
    key_vecs = torch.stack([F.normalize(slots_t[b, k], dim=0) for b, k in keys])
    losses = []
    for b in range(B):
        pix = [(i, j) for i in range(h) for j in range(w)]
        score = {
            (i, j): F.normalize(P, dim=1) @ F.normalize(x_BDhw[b, :, i, j], dim=0) for i, j in pix
        }
        attn = {p: torch.softmax(score[p] / cfg.grouping_temperature, 0) + 1e-6 for p in pix}
        won = {int(score[p].argmax()) for p in pix if keep_Bhw[b, p[0], p[1]] > 0}
        for k in sorted(won):
            if not active_t[b, k]:
                continue
            weights = [attn[p][k] * keep_Bhw[b, p[0], p[1]] for p in pix]
            pooled = zip(weights, pix, strict=True)
            slot = sum(wt * x_BDhw[b, :, i, j] for wt, (i, j) in pooled) / sum(weights)
            pred = F.normalize(predictor(slot[None])[0], dim=0)
            logits = key_vecs @ pred / cfg.slot_temperature
            nll = torch.logsumexp(logits, 0) - logits[keys.index((b, k))]
            losses.append(nll * 2 * cfg.slot_temperature)
    return sum(losses) / len(losses)


def test_slotcon_input_loss_equals_a_per_anchor_loop_in_float64():
    torch.manual_seed(2)
    dt = torch.float64
    B, D, K, h, w = 3, 5, 6, 4, 4
    cfg = SlotConConfig(num_prototypes=K, out_dim=D, grouping_temperature=0.3)
    x = torch.randn(B, D, h, w, dtype=dt, requires_grad=True)
    P = torch.randn(K, D, dtype=dt, requires_grad=True)
    keep = (torch.rand(B, h, w, dtype=dt) > 0.3) * torch.rand(B, h, w, dtype=dt)
    slots_t = torch.randn(B, K, D, dtype=dt)
    active_t = torch.rand(B, K) > 0.3
    predictor = nn.Linear(D, D).to(dt)  # per anchor in the loop: no BatchNorm here
    got = slot_prediction(x, keep, P, slots_t, active_t, predictor, cfg)
    want = _slot_loop(x, keep, P, slots_t, active_t, predictor, cfg)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    params = [x, P, *predictor.parameters()]
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(want, params),
                    strict=True):  # fmt: skip
        assert b.abs().max() > 0
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-10


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize("switch", ["decoupling", "depositioning"])
def test_a_method_without_regions_refuses_a_switch_by_name(switch):
    cfg = MaskContrastConfig(**{switch: ON})
    with pytest.raises(ValueError) as err:
        cfg.validate()
    text = str(err.value)
    assert f"invalid config value method.{switch}.weight=0.3" in text
    assert "method=maskcontrast cannot take" in text and "['slotcon', 'vice']" in text
    assert "set it to 0" in text


def test_negative_weights_are_refused_and_switches_off_make_no_inputs():
    with pytest.raises(ValueError, match=r"method.decoupling.weight=-0.1: must be in \[0.0"):
        ViceConfig(decoupling=RegionSwitchConfig(-0.1)).validate()
    off = tiny_config()
    assert METHODS["vice"].region_views(off) is None
    off.method.depositioning = ON
    assert METHODS["vice"].region_views(off) == (1, 2)
    assert METHODS["maskcontrast"].region_views(off) is None


# ---------------------------------------------------------------------------- training


def _weights(run_dir):
    return torch.load(RunDir(run_dir).final_weights, weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vice", "slotcon"])
def test_training_with_both_switches_resumes_bit_exactly(method, tmp_path, capfd):
    cfg = tiny_config(steps=4) if method == "vice" else slotcon_config(steps=4)
    cfg.method.decoupling = cfg.method.depositioning = ON
    cfg.validate()
    straight = train(cfg, tmp_path / "a")
    assert straight["status"] == "completed"
    progress = capfd.readouterr()
    assert "decoupling " in progress.out + progress.err  # both terms logged by name
    assert "depositioning " in progress.out + progress.err
    assert train(cfg, tmp_path / "b", should_stop=lambda step: step == 2)["steps"] == 2
    assert train(cfg, tmp_path / "b")["status"] == "completed"
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_small_copy_too_small_for_the_c5_trunk_is_refused_before_training():
    cfg = slotcon_config(backbone_output="c5", view_size=96)
    cfg.method.decoupling = ON
    with pytest.raises(ValueError) as err:
        cfg.validate()
    assert "data.views.region_aug.small_scale=0.5" in str(err.value)
    assert "small copy is 48 px of a 96 px view" in str(err.value)
    cfg.data.views.region_aug.small_scale = 0.7
    cfg.validate()

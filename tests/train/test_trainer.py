"""The loop end to end on CPU: loss goes down, resume is bit-exact, checkpoints are complete."""

import pytest
import torch

from vice.config import (
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    SuperpixelConfig,
    SyntheticConfig,
    TrackingConfig,
    TrainerConfig,
    ViewConfig,
)
from vice.methods import ViceConfig
from vice.run_dir import RunDir
from vice.tracking import Tracker
from vice.train.checkpoint import CheckpointManager
from vice.train.stop import read_stops
from vice.train.trainer import CHECKPOINT_FORMAT, train


def tiny_config(steps: int = 6, workers: int = 0) -> Config:
    return Config(
        data=DataConfig(
            batch_size=2,
            num_workers=workers,
            synthetic=SyntheticConfig(length=32, size=64),
            superpixels=SuperpixelConfig(region_size=8),
            views=ViewConfig(short_side=64, view_size=48, num_views=3),
        ),
        model=ModelConfig(backbone="resnet18", output_stride=16, embed_dim=16),
        method=ViceConfig(
            num_prototypes=8, queue_length=64, queue_start=2, freeze_prototypes_iters=1
        ),
        optim=OptimConfig(warmup_iters=2, lr=0.2),
        trainer=TrainerConfig(
            max_steps=steps, log_every=2, checkpoint_every=100, threads_per_process=1
        ),
        eval=EvalConfig(enabled=False),
        tracking=TrackingConfig(enabled=False),
    ).validate()


def _weights(run_dir):
    return torch.load(RunDir(run_dir).final_weights, weights_only=True)


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path):
    cfg = tiny_config(steps=6)
    straight = train(cfg, tmp_path / "a")
    assert straight["status"] == "completed" and straight["steps"] == 6

    stopped = train(cfg, tmp_path / "b", should_stop=lambda step: step == 3)
    assert stopped["status"] == "stopped" and stopped["steps"] == 3
    ckpts = CheckpointManager(tmp_path / "b" / "checkpoints").list()
    assert [c.step for c in ckpts] == [3]
    state, _ = CheckpointManager(tmp_path / "b" / "checkpoints").load_latest()
    assert state["sampler"] == {"epoch": 0, "position": 6, "seed": 0}
    assert state["format"] == CHECKPOINT_FORMAT and state["method_name"] == "vice"
    assert state["ranks"][0]["method"]["queue"] is not None
    assert "prototypes.weight" in state["method"] and "network.decoder.head.weight" not in state
    resumed = train(cfg, tmp_path / "b")
    assert resumed["status"] == "completed" and resumed["steps"] == 6

    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_a_stop_asked_for_during_setup_ends_before_the_first_step(tmp_path):
    """A time limit's signal can land in a restart's imports and setup, before any step: the
    run stops at the step it started from (a fresh run saves its step 0 first; a resumed one
    has that step's checkpoint already), and the restart after it goes on bit-exact."""
    cfg = tiny_config(steps=4)
    run, ckpts = tmp_path / "b", CheckpointManager(tmp_path / "b" / "checkpoints")
    early = train(cfg, run, should_stop=lambda step: "SIGUSR2")
    assert (early["status"], early["steps"], early["signal"]) == ("stopped", 0, "SIGUSR2")
    assert [c.step for c in ckpts.list()] == [0]
    train(cfg, run, should_stop=lambda step: step == 2)
    saved = {c.step: c.path.stat().st_mtime_ns for c in ckpts.list()}
    again = train(cfg, run, should_stop=lambda step: "SIGTERM")  # resumed at step 2
    assert (again["status"], again["steps"]) == ("stopped", 2)
    assert {c.step: c.path.stat().st_mtime_ns for c in ckpts.list()} == saved  # no new save
    assert [(e.signal, e.step) for e in read_stops(run)] == [
        ("SIGUSR2", 0),
        ("stop", 2),
        ("SIGTERM", 2),
    ]
    assert train(cfg, run)["status"] == "completed"
    train(cfg, tmp_path / "a")
    a, b = _weights(tmp_path / "a"), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_across_an_epoch_boundary_with_workers(tmp_path):
    cfg = tiny_config(steps=20, workers=1)  # 16 batches per epoch
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b", should_stop=lambda step: step in (5, 16))
    train(cfg, tmp_path / "b", should_stop=lambda step: step == 16)
    train(cfg, tmp_path / "b")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


class _Recorder(Tracker):
    def __init__(self):
        self.metrics, self.tags = {}, []

    def log_metrics(self, metrics, step):
        self.metrics[step] = metrics

    def set_tags(self, tags):
        self.tags.append(tags)


@pytest.mark.slow
def test_logged_metrics_carry_information(tmp_path):
    """No flat bookkeeping lines: `epoch` is logged where it steps, the queue's start is a tag."""
    tracker = _Recorder()
    train(tiny_config(steps=20), tmp_path, tracker=tracker)  # 16 steps per epoch, log every 2
    assert sorted(tracker.metrics) == list(range(2, 21, 2))
    assert {s: m["epoch"] for s, m in tracker.metrics.items() if "epoch" in m} == {18: 1.0}
    assert not any("queue_used" in m for m in tracker.metrics.values())
    queue = [tags for tags in tracker.tags if "queue_used_from_step" in tags]
    assert queue == [{"queue_used_from_step": "2"}]  # method.queue_start=2, set once

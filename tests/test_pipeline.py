import json

import pytest
import torch

from vice.config import EvalConfig, FloorsConfig
from vice.methods import ViceMethod
from vice.pipeline import (
    evaluate_run,
    load_config,
    load_final_model,
    untrained_network,
    write_config,
)
from vice.run_dir import RunDir
from vice.tracking import Tracker
from vice.train.checkpoint import CheckpointManager

from .train.test_trainer import tiny_config


def test_config_round_trip(tmp_path):
    cfg = tiny_config()
    cfg.run_dir = str(tmp_path)
    path = write_config(cfg, tmp_path)
    assert path == RunDir(tmp_path).config and not list(tmp_path.glob("*.tmp"))
    again = load_config(tmp_path)
    assert again == cfg


def test_missing_config_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config.yaml in run directory"):
        load_config(tmp_path)


def test_final_model_prefers_final_weights_then_checkpoint(tmp_path):
    cfg = tiny_config()
    with pytest.raises(FileNotFoundError, match=r"neither model_final\.pt nor a checkpoint"):
        load_final_model(cfg, tmp_path, torch.device("cpu"))
    torch.manual_seed(1)
    ckpt_method = ViceMethod(cfg)
    CheckpointManager(RunDir(tmp_path).checkpoints).save(
        {"format": 2, "method_name": "vice", "method": ckpt_method.state_dict()}, 5
    )
    got = load_final_model(cfg, tmp_path, torch.device("cpu"))
    head = "decoder.head.weight"
    assert torch.equal(got.state_dict()[head], ckpt_method.export().state_dict()[head])
    assert not got.training
    torch.manual_seed(2)
    final = ViceMethod(cfg).export()
    torch.save(final.state_dict(), RunDir(tmp_path).final_weights)
    got = load_final_model(cfg, tmp_path, torch.device("cpu"))
    assert torch.equal(got.state_dict()[head], final.state_dict()[head])


def test_format_1_final_weights_and_checkpoints_still_load(tmp_path):
    """Before the method interface, `model` / model_final.pt held network and prototypes."""
    cfg = tiny_config()
    torch.manual_seed(3)
    method = ViceMethod(cfg)
    old = {k.removeprefix("network."): v for k, v in method.state_dict().items()}
    CheckpointManager(RunDir(tmp_path).checkpoints).save({"step": 5, "model": old}, 5)
    head = "decoder.head.weight"
    got = load_final_model(cfg, tmp_path, torch.device("cpu"))
    assert torch.equal(got.state_dict()[head], old[head])
    torch.save(old, RunDir(tmp_path).final_weights)
    got = load_final_model(cfg, tmp_path, torch.device("cpu"))
    assert torch.equal(got.state_dict()[head], old[head])


@pytest.fixture
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (tests/eval/conftest)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Recorder(Tracker):
    def __init__(self):
        self.metrics, self.tags, self.artifacts, self.inputs = {}, {}, [], []

    def log_metrics(self, metrics, step):
        assert step == 0
        self.metrics.update(metrics)

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_artifact(self, path, artifact_path=None):
        self.artifacts.append((path.name, artifact_path))

    def log_inputs(self, datasets):
        self.inputs += datasets


def test_untrained_network_is_the_seeded_export_and_leaves_the_rng_alone():
    cfg = tiny_config()
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    net = untrained_network(cfg)
    assert torch.equal(torch.get_rng_state(), before) and not net.training
    torch.manual_seed(cfg.trainer.seed)
    want = ViceMethod(cfg).export().state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, want[key]), key


def _eval_config(**floors) -> EvalConfig:
    return EvalConfig(
        image_size=32,
        max_images=4,
        cluster_counts=[8],
        kmeans_iters=3,
        linear_train_images=4,
        linear_iters=20,
        linear_batch_pixels=1024,
        floors=FloorsConfig(**floors),
    )


def test_evaluate_run_logs_floors_and_margins(tmp_path, one_thread):
    cfg = tiny_config()
    cfg.eval = _eval_config()
    cfg.validate()
    torch.manual_seed(5)
    trained = ViceMethod(cfg).export()  # stands for the trained network
    tracker = _Recorder()
    metrics = evaluate_run(cfg, tmp_path, tracker, model=trained)

    on_disk = json.loads(RunDir(tmp_path).metrics.read_text())
    assert on_disk == metrics
    assert metrics["floors.names"] == list(FloorsConfig().names)
    assert metrics["floors.skipped"] == []
    keys = ("clustering.8.miou", "linear.miou", "region.nn_same_class", "region.probe_acc")
    for key in keys:
        assert tracker.metrics[f"eval.{key}"] == metrics[key]
        for name in metrics["floors.names"]:
            assert tracker.metrics[f"eval.floors.{name}.{key}"] == metrics[f"floors.{name}.{key}"]
        assert tracker.metrics[f"eval.margin.{key}"] == metrics[f"margin.{key}"]
        assert tracker.tags[f"eval.margin.{key}.floor"] == metrics[f"margin.{key}.floor"]
    assert all(isinstance(v, float) for v in tracker.metrics.values())
    assert ("metrics.json", "eval") in tracker.artifacts
    # one headline to sort runs by, and its margin over the strongest floor
    assert tracker.metrics["miou"] == metrics["clustering.8.miou"]
    assert tracker.metrics["miou_margin"] == metrics["margin.clustering.8.miou"]
    # bookkeeping is tags, not metrics
    for key in ("num_images", "image_size", "num_classes", "linear.train_images"):
        assert f"eval.{key}" not in tracker.metrics and tracker.tags[f"eval.{key}"] == metrics[key]
    assert tracker.tags["eval.image_size"] == 32 and tracker.tags["eval.num_images"] == 4
    (eval_input,) = tracker.inputs
    assert eval_input["name"] == "synthetic/val" and eval_input["context"] == "eval"
    assert json.loads(eval_input["profile"]) == {"split": "val", "num_images": 4}

    # The random_init floor is the untrained network: evaluated directly, it scores the same.
    cfg.eval.floors.enabled = False
    again = evaluate_run(cfg, tmp_path / "b", _Recorder(), model=untrained_network(cfg))
    for key in keys:
        assert again[key] == metrics[f"floors.random_init.{key}"]


def test_evaluate_run_without_floors(tmp_path, one_thread):
    cfg = tiny_config()
    cfg.eval = _eval_config(enabled=False)
    cfg.validate()
    tracker = _Recorder()
    metrics = evaluate_run(cfg, tmp_path, tracker, model=untrained_network(cfg))
    assert not any(k.startswith(("floors.", "margin.")) for k in metrics)
    assert "eval.region.nn_same_class" in tracker.metrics
    assert not any(k.startswith("eval.margin.") for k in tracker.tags)
    assert tracker.metrics["miou"] == metrics["clustering.8.miou"]
    assert "miou_margin" not in tracker.metrics


def test_floor_names_are_validated():
    with pytest.raises(ValueError, match=r"eval\.floors\.names=\['chance', 'best'\]: unknown"):
        _eval_config(names=["chance", "best"]).validate()
    with pytest.raises(ValueError, match=r"eval\.floors\.dim=0"):
        _eval_config(dim=0).validate()

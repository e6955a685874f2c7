"""The method interface carries a teacher-student method that the library does not know.

`tests/methods/twin.py` (two views, EMA teacher, predictor head) trains through the real
loop, stops and resumes bit-exactly with its teacher, is evaluated through `export()`, and
runs as 2 gloo ranks equal to 1 process.
"""

from pathlib import Path

import pytest
import torch

from vice.config import EvalConfig, MaskConfig
from vice.pipeline import evaluate_run, load_final_model
from vice.run_dir import RunDir
from vice.train.checkpoint import CheckpointManager
from vice.train.trainer import train

from ..train.test_ddp import run_torchrun
from ..train.test_trainer import tiny_config
from .twin import TwinConfig, register, unregister

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def twin_registered():
    register()
    yield
    unregister()


def twin_config(steps: int = 6):
    cfg = tiny_config(steps=steps)
    cfg.method = TwinConfig()
    cfg.data.views.num_views = 2
    cfg.data.masking = MaskConfig(enabled=False)
    return cfg.validate()


def _method_state(run_dir: Path) -> dict:
    state, _ = CheckpointManager(RunDir(run_dir).checkpoints).load_latest()
    assert state["method_name"] == "twin"
    return state["method"]


def test_settings_the_method_cannot_use_are_refused_by_name():
    cfg = twin_config()
    cfg.data.masking.enabled = True
    with pytest.raises(ValueError, match=r"data\.masking\.enabled=True: twin does not mask"):
        cfg.validate()
    cfg = twin_config()
    cfg.data.views.num_views = 3
    with pytest.raises(ValueError, match=r"data\.views\.num_views=3: twin uses 2 views"):
        cfg.validate()


def test_method_keys_of_another_method_are_refused():
    cfg = twin_config()
    cfg.method.name = "vice"  # a TwinConfig that says vice
    with pytest.raises(ValueError, match=r"method\.name='vice': the method's keys must be a"):
        cfg.validate()


@pytest.mark.slow
def test_trains_resumes_bit_exactly_with_its_teacher_and_evaluates_through_export(tmp_path):
    cfg = twin_config(steps=6)
    straight = train(cfg, tmp_path / "a")
    assert straight["status"] == "completed"
    stopped = train(cfg, tmp_path / "b", should_stop=lambda step: step == 3)
    assert stopped["status"] == "stopped" and stopped["steps"] == 3
    assert int(_method_state(tmp_path / "b")["ema_updates"]) == 3
    resumed = train(cfg, tmp_path / "b")
    assert resumed["status"] == "completed" and resumed["steps"] == 6

    a, b = _method_state(tmp_path / "a"), _method_state(tmp_path / "b")
    assert a.keys() == b.keys() and any(k.startswith("teacher.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert int(a["ema_updates"]) == 6
    # the teacher moved towards the student, and is not the student
    head = "decoder.head.weight"
    assert not torch.equal(a[f"teacher.{head}"], a[f"student.{head}"])

    # model_final.pt is the exported teacher, and evaluation reads it
    final = torch.load(RunDir(tmp_path / "a").final_weights, weights_only=True)
    assert torch.equal(final[head], a[f"teacher.{head}"])
    network = load_final_model(cfg, tmp_path / "a", torch.device("cpu"))
    assert torch.equal(network.state_dict()[head], a[f"teacher.{head}"])
    cfg.eval = EvalConfig(
        image_size=32, max_images=4, cluster_counts=[8], linear=False, kmeans_iters=3
    )
    metrics = evaluate_run(cfg, tmp_path / "a")
    assert 0.0 <= metrics["clustering.8.miou"] <= 1.0
    assert RunDir(tmp_path / "a").metrics.is_file()


def _torchrun(cfg, run_dir: Path, procs: int) -> dict:
    worker = str(ROOT / "tests" / "train" / "ddp_worker.py")
    run_torchrun(cfg, run_dir, procs, [worker, "float64", "tests.methods.twin"])
    return _method_state(run_dir)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_in_float64(tmp_path):
    def config():
        cfg = twin_config(steps=3)
        cfg.data.synthetic.length = 8  # 2 global batches of 4 per epoch: crosses an epoch
        return cfg

    one = _torchrun(config(), tmp_path / "one", 1)
    two = _torchrun(config(), tmp_path / "two", 2)
    assert one.keys() == two.keys()
    worst, worst_key = 0.0, None
    for key, value in one.items():
        if not value.dtype.is_floating_point:
            assert torch.equal(value, two[key]), key
            continue
        assert value.dtype == torch.float64, key
        scale = value.abs().max().clamp_min(1e-12)
        rel = ((value - two[key]).abs().max() / scale).item()
        if rel > worst:
            worst, worst_key = rel, key
    # float64 rounding through 3 steps (teacher, predictor and BatchNorm buffers included);
    # rank-local BatchNorm statistics or an unaveraged gradient differ by >1e-3.
    assert worst < 1e-9, (worst_key, worst)


def test_a_checkpoint_from_before_the_interface_is_refused_by_a_later_method():
    """Format 1 (no `format` key) was ViCE's alone: another method says what wrote it and
    what to do, instead of a KeyError deep in load_state_dict."""
    from vice.methods import METHODS

    with pytest.raises(ValueError) as err:
        METHODS["twin"].current_checkpoint({"model": {}, "step": 4}, "/r/checkpoints/step_4")
    assert str(err.value) == (
        "checkpoint /r/checkpoints/step_4 was written by vice before the method interface "
        "(checkpoint format 1, when ViCE was the only method); method='twin' cannot resume "
        "it. Start a new run directory, or resume it with method=vice"
    )


@pytest.mark.slow
def test_a_run_dir_of_another_method_is_refused_naming_both(tmp_path):
    train(twin_config(steps=2), tmp_path, should_stop=lambda step: step == 1)
    (path,) = [c.path for c in CheckpointManager(RunDir(tmp_path).checkpoints).list()]
    with pytest.raises(ValueError) as err:
        train(tiny_config(steps=2), tmp_path)  # method=vice in twin's run directory
    assert str(err.value) == (
        f"invalid config value method.name='vice': the run's checkpoint {path} was written "
        "by method 'twin'; use a new run directory"
    )

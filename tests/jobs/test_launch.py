"""`python jobs/launch.py` end to end: pretrain (torchrun) -> evaluate -> MLflow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _launch(tmp_path, *overrides, timeout=600, env=None):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "launch.py"),
            f"hydra.run.dir={tmp_path}/run",
            f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env=env,
    )


@pytest.mark.slow
def test_smoke_experiment_end_to_end(tmp_path):
    proc = _launch(tmp_path, "experiment=smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "run"
    out = proc.stdout
    assert f"run_dir: {run}" in out
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for key in (
        "clustering.8.miou",
        "clustering.8.acc",
        "clustering.16.miou",
        "linear.miou",
        "linear.acc",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert (run / "eval" / "segmentations.png").stat().st_size > 5000
    assert (run / "model_final.pt").is_file()
    assert (run / "views_0.png").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_000000004",
        "step_000000008",
    ]
    # progress lines when stdout is not a terminal
    assert "step 8/8 | loss" in out and "img/s" in out

    from mlflow.tracking import MlflowClient

    run_id = (run / "mlflow_run_id").read_text().strip()
    assert f"mlflow_run_id: {run_id}" in out
    # the venv's own mlflow, on a free port: works pasted as printed
    ui = f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri sqlite:///{tmp_path}"
    assert ui in out and " --port " in out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED"
    assert r.info.run_name == "smoke"  # hydra.run.dir and tracking.uri do not name it
    assert r.data.tags["mlflow.source.type"] == "LOCAL"
    assert not any(k.startswith("cluster.") for k in r.data.params)
    assert r.data.params["model.backbone"] == "resnet18"
    assert r.data.params["trainer.max_steps"] == "8"
    assert "git.commit" in r.data.tags and "torch.version" in r.data.tags
    assert abs(r.data.metrics["eval.clustering.8.miou"] - metrics["clustering.8.miou"]) < 1e-9
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert steps == [2, 4, 6, 8]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "eval", "views"} <= artifacts


def test_invalid_value_fails_before_anything_is_written(tmp_path):
    proc = _launch(tmp_path, "data.views.num_views=1")
    assert proc.returncode == 2
    assert "invalid config value data.views.num_views=1: must be in [2, inf]" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_more_nodes_without_m_are_refused_before_anything_is_written(tmp_path):
    # A local run is standalone torchrun on this machine: trainer.nodes=2 would be ignored.
    proc = _launch(tmp_path, "trainer.nodes=2")
    assert proc.returncode == 2, proc.stderr
    assert (
        "config error: invalid config value trainer.nodes=2: a run without -m uses this "
        "machine only; add -m to submit it to SLURM, or set trainer.nodes=1"
    ) in proc.stderr.splitlines()
    assert not (tmp_path / "mlflow.db").exists()
    run = tmp_path / "run"
    assert not run.exists()


def test_unusable_init_weights_fail_before_anything_is_written(tmp_path):
    proc = _launch(tmp_path, f"model.init_weights={tmp_path}/nope.pt")
    assert proc.returncode == 4, proc.stderr  # a data error (jobs/exit_codes.py)
    assert f"model.init_weights='{tmp_path}/nope.pt': no such file" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    run = tmp_path / "run"
    assert not run.exists()


def test_wrong_type_names_the_key(tmp_path):
    proc = _launch(tmp_path, "trainer.max_steps=abc")
    assert proc.returncode != 0
    assert "trainer.max_steps" in proc.stderr


def test_missing_root_names_the_key(tmp_path):
    proc = _launch(tmp_path, "data=coco")
    assert proc.returncode != 0
    assert "data.root" in proc.stderr


def test_wrong_data_root_fails_before_anything_is_written(tmp_path):
    proc = _launch(tmp_path, "data=coco", f"data.root={tmp_path}/nothere")
    assert proc.returncode == 4  # a data error
    assert f"COCO data set at '{tmp_path}/nothere'" in proc.stderr
    assert "Expected layout" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    run = tmp_path / "run"  # checked before Hydra makes the directory (jobs/run_checks.py)
    assert not run.exists()


def test_crashing_fast_slic_fails_before_anything_is_written(tmp_path):
    # A fast_slic package that segfaults on its first image, as a bad build does: found by the
    # preflight probe, not by a data loader worker after the job started.
    fake = tmp_path / "site" / "fast_slic"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os, signal\n"
        "class Slic:\n"
        "    def __init__(self, **kwargs): pass\n"
        "    def iterate(self, image, max_iter=10): os.kill(os.getpid(), signal.SIGSEGV)\n"
    )
    (fake / "avx2.py").write_text("raise ImportError('no AVX2 build')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)])}
    proc = _launch(tmp_path, "experiment=smoke", env=env)
    assert proc.returncode == 4, proc.stderr
    assert (
        "invalid config value data.superpixels.method='slic': fast-slic crashed with SIGSEGV "
        "on a 48x48 image" in proc.stderr
    )
    assert "or use data.superpixels.method=grid" in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
    run = tmp_path / "run"
    assert not run.exists()


@pytest.mark.slow
def test_ctrl_c_saves_and_the_same_run_dir_continues(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) stops training at a step boundary
    with a checkpoint; launching again into the run directory continues it."""
    import os
    import signal
    import time

    overrides = ["experiment=smoke", "trainer.max_steps=8", "trainer.log_every=1",
                 "eval.enabled=false"]  # fmt: skip
    cmd = [sys.executable, str(ROOT / "jobs" / "launch.py"), f"hydra.run.dir={tmp_path}/run",
           f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", *overrides]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines = []
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("step 2/8") or not line:
            break
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=300) != 0
    run = tmp_path / "run"
    assert "checkpoint saved; continue with: python jobs/launch.py" in out, out[-3000:]
    assert f"hydra.run.dir={run}" in out, out[-3000:]
    assert not (run / "model_final.pt").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = (run / "mlflow_run_id").read_text().strip()
    r = client.get_run(run_id)
    assert r.info.status == "KILLED"  # Ctrl-C: nothing requeues a local run
    assert r.info.run_name == "smoke max_steps=8 log_every=1 enabled=false"

    again = _launch(tmp_path, *overrides)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout and (run / "model_final.pt").exists()
    assert client.get_run(run_id).info.status == "FINISHED"  # the same run, continued


# The bad-input table of a local run: (overrides, exit code of the class (jobs/exit_codes.py:
# 2 config, 3 environment, 4 data), a line that names the key or file). The `-m` table runs
# against the real cluster: tests/cluster/test_slurm_launch.py::BAD_INPUT.
LOCAL_BAD_INPUT = {
    "inf-lr": (["optim.lr=inf"], 2, "invalid config value optim.lr=inf: must be a finite"),
    "nan-lr": (["optim.lr=nan"], 2, "invalid config value optim.lr=nan: must be a finite"),
    "nan-std": (["data.views.std=[0.2,nan,0.2]"], 2,
                "data.views.std=[0.2, nan, 0.2]: every entry must be a finite number"),
    "appended-unknown-key": (["+trainer.foo=1"], 2, "trainer.foo"),
    "method-setting": (["method=maskcontrast", "data.views.crop_scale_max=1.5"], 2,
                       "data.views.crop_scale_max=1.5: maskcontrast's crops cover"),
    "switch-on-maskcontrast": (["method=maskcontrast", "method.depositioning.weight=0.3"], 2,
                               "method=maskcontrast cannot take de-positioning"),
    "cut-ratio": (["method.decoupling.weight=0.3", "data.views.region_aug.cut_ratio_max=1.5"],
                  2, "data.views.region_aug.cut_ratio_max=1.5: must be in (0, 1)"),
    "grid-kind": (["data.views.superpixel_grid.kind=swap"], 2,
                  "data.views.superpixel_grid.kind='swap': one of ['cut', 'mean', 'mix', "),
    "cuda-without-gpu": (["trainer.device=cuda"], 3, "trainer.device='cuda'"),
    "tracking-scheme": (["tracking.uri=ftp://host/x"], 3, "tracking.uri='ftp://host/x'"),
    "unwritable-cache": (["data.superpixels.cache_dir=/proc/vice-cache"], 3,
                         "data.superpixels.cache_dir='/proc/vice-cache'"),
    "voc-root": (["experiment=maskcontrast_voc", "data.root=/nonexistent/VOC2012"], 4,
                 "PASCAL VOC"),
    "figure-index": (["figure.indices=[0,1000000000]"], 4,
                     "figure.indices=[0, 1000000000]: 1000000000 is past the "),
    "mask-prior-on-folder": (
        ["method=maskcontrast", "data=folder", "data.root=.", "eval.enabled=false"], 4,
        "data.mask_prior.source='gt': data.dataset='folder' has no"),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(LOCAL_BAD_INPUT))
def test_bad_input_exits_with_its_class_and_writes_nothing(tmp_path, case):
    overrides, code, line = LOCAL_BAD_INPUT[case]
    if case == "mask-prior-on-folder":  # a folder with one image
        from PIL import Image

        Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _launch(tmp_path, *overrides)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert line in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    names = {2: "config error: ", 3: "environment error: ", 4: "data error: "}
    assert proc.stderr.startswith(names[code]), proc.stderr  # its class, then the message
    # no run directory, no outputs/, no MLflow store
    assert sorted(p.name for p in tmp_path.iterdir()) == before

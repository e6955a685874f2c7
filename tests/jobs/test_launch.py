import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _launch(tmp_path, *overrides):
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "launch.py"),
            f"hydra.run.dir={tmp_path}/run",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


@pytest.mark.slow
def test_main_job_renders_views_into_run_dir(tmp_path):
    proc = _launch(tmp_path, "figure.indices=[3]")
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    assert f"run_dir: {run}" in proc.stdout
    assert (run / "views_3.png").stat().st_size > 10_000
    assert "view_size: 96" in (run / "config.yaml").read_text()


def test_invalid_value_fails_before_writing(tmp_path):
    proc = _launch(tmp_path, "data.views.num_views=1")
    assert proc.returncode == 2
    assert "invalid config value data.views.num_views=1: must be in [2, inf]" in proc.stderr
    assert not list((tmp_path / "run").glob("*.png"))


def test_missing_root_names_the_key(tmp_path):
    proc = _launch(tmp_path, "data=coco")
    assert proc.returncode != 0
    assert "data.root" in proc.stderr

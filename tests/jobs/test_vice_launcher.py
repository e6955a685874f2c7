"""The Hydra launcher plugin through `python jobs/launch.py -m` (SLURM faked): discovery,
dry runs, checks before anything is submitted, the sweep's parent MLflow run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.hydra_plugins.vice_launcher.config import check_launcher_options
from jobs.hydra_plugins.vice_launcher.vice_launcher import (
    LAUNCHER_TARGET,
    NO_SBATCH,
    ViceSlurmLauncher,
)
from vice.hydra_schema import to_config

from .test_submit import CPU_SINFO

ROOT = Path(__file__).resolve().parents[2]


def _compose_hydra(overrides=()):
    from hydra import compose, initialize_config_dir

    from vice.hydra_schema import register

    register()  # the launcher's schema was registered by importing its config module above
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("config", list(overrides), return_hydra_config=True)


def test_config_selects_the_launcher():
    from hydra.errors import ConfigCompositionException
    from hydra.plugins.launcher import Launcher

    launcher = _compose_hydra().hydra.launcher
    assert launcher == {"_target_": LAUNCHER_TARGET, "poll_s": 5.0}
    assert isinstance(launcher.poll_s, float)  # typed by config.py's ViceSlurmConf
    with pytest.raises(ConfigCompositionException, match=r"override hydra\.launcher\.poll_s=soon"):
        _compose_hydra(["hydra.launcher.poll_s=soon"])
    # Another plugin's option composes (no `+` needed), so that the launcher's own check can
    # name the key to set instead of Hydra's "To append to your config use +...".
    assert _compose_hydra(["hydra.launcher.mem_gb=4"]).hydra.launcher.mem_gb == 4
    # A plain Hydra launcher: no hydra-submitit-launcher options that silently do nothing.
    assert ViceSlurmLauncher.__bases__ == (Launcher,)


def test_config_composes_without_the_plugin():
    """Where jobs/ is not on sys.path (tools, other tests), the launcher's schema is not
    registered: the config still composes, from conf/hydra/launcher/vice_slurm.yaml alone."""
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from hydra.core.config_store import ConfigStore\n"
        "from vice.hydra_schema import register\n"
        "register()\n"
        f"with initialize_config_dir({str(ROOT / 'conf')!r}, version_base='1.3'):\n"
        "    cfg = compose('config', return_hydra_config=True)\n"
        "launchers = ConfigStore.instance().repo['hydra'].get('launcher', {})\n"
        "print(dict(cfg.hydra.launcher), 'schema' in launchers)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{{'_target_': '{LAUNCHER_TARGET}', 'poll_s': 5}} False"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.launcher.mem_gb=4", "hydra.launcher.mem_gb=4: not read by the vice_slurm "
         "launcher; set cluster.mem_gb instead"),
        ("hydra.launcher.partition=gpu", "hydra.launcher.partition='gpu': not read by the "
         "vice_slurm launcher; set cluster.partition instead"),
        ("hydra.launcher.timeout_min=30", "hydra.launcher.timeout_min=30: not read by the "
         "vice_slurm launcher; set cluster.time_min (and cluster.eval_time_min) instead"),
        ("+hydra.launcher.additional_parameters={mail-type:END}",
         "hydra.launcher.additional_parameters={'mail-type': 'END'}: not read by the "
         "vice_slurm launcher; set cluster.additional instead"),
        ("hydra.launcher.mem_per_cpu=4G", "hydra.launcher.mem_per_cpu='4G': not read by the "
         "vice_slurm launcher; set +cluster.additional.mem-per-cpu instead"),
        ("hydra.launcher.pol_s=2", "hydra.launcher.pol_s=2: not read by the vice_slurm "
         "launcher; its only option is poll_s"),
    ],
)  # fmt: skip
def test_other_launchers_options_name_the_key_to_set(override, message):
    launcher = _compose_hydra([override]).hydra.launcher
    with pytest.raises(ValueError) as err:
        check_launcher_options(launcher)
    assert str(err.value) == "invalid config value " + message
    check_launcher_options(_compose_hydra(["hydra.launcher.poll_s=1"]).hydra.launcher)


def _launch(tmp_path, *args, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "launch.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )


def test_hydra_discovers_the_plugin(tmp_path):
    proc = _launch(tmp_path, "--info", "plugins")
    assert proc.returncode == 0, proc.stderr
    assert "\t\tViceSlurmLauncher\n" in proc.stdout  # the Launcher section
    assert "hydra_plugins.vice_launcher.vice_launcher " in proc.stdout  # the scanned modules


def test_without_sbatch_multirun_says_how_to_get_a_cluster(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    proc = _launch(tmp_path, "-m", "trainer.nodes=2", f"hydra.sweep.dir={tmp_path}/sweep", env=env)
    assert proc.returncode == 5  # a cluster error (jobs/exit_codes.py)
    assert NO_SBATCH in proc.stderr
    assert "sudo python3 tools/slurm_cluster.py up --nodes 2" in proc.stderr
    assert "python jobs/launch.py <the same overrides, without -m>" in proc.stderr
    assert not (tmp_path / "sweep").exists()  # checked before Hydra creates the sweep dir


PREFIX = "invalid config value "


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"cluster": {"time_min": 0}}, "cluster.time_min=0: must be in [1, inf]"),
        ({"cluster": {"eval_nodes": 0}}, "cluster.eval_nodes=0: must be in [1, inf]"),
        ({"trainer": {"max_requeues": -1}}, "trainer.max_requeues=-1: must be in [0, inf]"),
        ({"cluster": {"mem_gb": 0}}, "cluster.mem_gb=0.0: must be in (0.0, inf]"),
        ({"cluster": {"partition": "a b"}},
         "cluster.partition='a b': a SLURM name without spaces, or null"),
        ({"cluster": {"time_min": 2, "signal_delay_s": 120}},
         "cluster.signal_delay_s=120: must be shorter than the time limit "
         "(cluster.time_min=2 min = 120 s)"),
        ({"cluster": {"additional": {"nodes": 4}}},
         "cluster.additional.nodes=4: is set by the launcher; "
         "use the matching trainer.* or cluster.* key"),
        ({"launch": {"wait": True, "dry_run": True}},
         "launch.wait=True: a dry run submits nothing to wait for"),
    ],
)  # fmt: skip
def test_cluster_config_validation(section, message):
    with pytest.raises(ValueError) as err:
        to_config(section)
    assert str(err.value) == PREFIX + message


@pytest.fixture
def fake_cluster(tmp_path):
    """sinfo printing CPU_SINFO, and an sbatch that only records that it was called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text(f"#!/bin/sh\nprintf '%s' '{CPU_SINFO}'\n")
    for name in ("sbatch", "srun", "squeue", "sacct", "scancel"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho called >> {tmp_path}/{name}.called\nexit 1\n")
    # `sbatch --test-only` (the preflight's check of the job scripts) accepts and submits nothing
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\nif [ "$1" = --test-only ]; then echo "$2" >> {tmp_path}/sbatch.tested; '
        f"exit 0; fi\necho called >> {tmp_path}/sbatch.called\nexit 1\n"
    )
    # the stop windows: KillWait and the partition's GraceTime (tools/slurm_cluster.py's text)
    (bin_dir / "scontrol").write_text(
        '#!/bin/sh\nif [ "$2" = config ]; then echo "KillWait                = 15 sec"; '
        'else echo "PartitionName=batch GraceTime=20 PreemptMode=REQUEUE"; fi\n'
    )
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_dry_run_of_a_sweep_through_hydra(tmp_path, fake_cluster):
    proc = _launch(
        tmp_path, "-m", "experiment=smoke", "optim.lr=0.1,0.3", "trainer.nodes=2",
        "launch.dry_run=true", f"hydra.sweep.dir={tmp_path}/sweep", env=fake_cluster,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("--- pretrain sbatch script ---") == 2
    assert out.count("--- eval sbatch script ---") == 2
    assert out.count("#SBATCH --nodes=2\n") == 2 and out.count("#SBATCH --nodes=1\n") == 2
    assert f"run_dir: {tmp_path}/sweep/1 (dry run: not created)" in out
    assert out.rstrip().endswith("dry run: nothing was submitted, nothing was written")
    assert not (tmp_path / "sweep").exists()  # not even multirun.yaml
    assert not (tmp_path / "sbatch.called").exists()
    # each point's two scripts went through sbatch --test-only, from a temporary directory
    tested = (tmp_path / "sbatch.tested").read_text().split()
    assert len(tested) == 4 and all("vice-sbatch-test-" in t for t in tested)
    assert not any(Path(t).exists() for t in tested)


@pytest.mark.parametrize("override", ["hydra.launcher.mem_gb=4", "+hydra.launcher.mem_gb=4"])
def test_other_launchers_option_is_refused_before_anything_is_written(
    tmp_path, fake_cluster, override
):
    proc = _launch(
        tmp_path, "-m", "experiment=smoke", override, f"hydra.sweep.dir={tmp_path}/sweep",
        env=fake_cluster,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr  # a config error
    assert proc.stderr.splitlines() == [
        "config error: invalid config value hydra.launcher.mem_gb=4: not read by the "
        "vice_slurm launcher; set cluster.mem_gb instead"
    ]
    assert not (tmp_path / "sweep").exists()
    assert not (tmp_path / "sbatch.called").exists() and not (tmp_path / "sbatch.tested").exists()


def _tree(root):
    """Every file under root with its bytes and mtime, and every directory."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def test_dry_run_leaves_an_earlier_sweep_unchanged(tmp_path, fake_cluster):
    """A dry run into the sweep dir of an earlier sweep: Hydra's sweeper overwrites its
    multirun.yaml; the launcher puts it back as it was."""
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}  # the earlier sweep's\n")
    (sweep / "0" / "config.yaml").write_text("optim: {lr: 0.1}\n")
    before = _tree(sweep)
    proc = _launch(
        tmp_path, "-m", "experiment=smoke", "optim.lr=0.1,0.3", "launch.dry_run=true",
        f"hydra.sweep.dir={sweep}", env=fake_cluster,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("dry run: nothing was submitted, nothing was written")
    assert _tree(sweep) == before
    assert not (tmp_path / "sbatch.called").exists()


def test_preflight_error_through_hydra_submits_nothing(tmp_path, fake_cluster):
    proc = _launch(
        tmp_path, "-m", "experiment=smoke", "trainer.nodes=1,3",
        f"hydra.sweep.dir={tmp_path}/sweep", env=fake_cluster,
    )  # fmt: skip
    assert proc.returncode == 5, proc.stdout + proc.stderr  # a cluster error
    assert proc.stderr.splitlines() == [
        "preflight error in #1 (experiment=smoke trainer.nodes=3): invalid config value "
        "trainer.nodes=3: partition 'batch' has 2 nodes; set trainer.nodes to at most 2 or "
        "pick another cluster.partition",
        "nothing was submitted",
    ]
    assert not (tmp_path / "sbatch.called").exists()
    assert not (tmp_path / "sweep").exists()  # not even multirun.yaml


def test_unwritable_sweep_dir_is_refused_before_hydra_creates_it(tmp_path, fake_cluster):
    (tmp_path / "afile").write_text("")
    proc = _launch(
        tmp_path, "-m", "experiment=smoke", f"hydra.sweep.dir={tmp_path}/afile/sweep",
        env=fake_cluster,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stdout + proc.stderr  # an environment error
    assert proc.stderr.strip() == (
        f"environment error: invalid config value hydra.sweep.dir='{tmp_path}/afile/sweep': "
        f"{tmp_path}/afile is not a directory; set hydra.sweep.dir to a writable directory "
        "that every node sees"
    )


def test_parent_run_groups_children(tmp_path):
    from mlflow.tracking import MlflowClient

    from vice.config import TrackingConfig
    from vice.run_dir import SweepDir
    from vice.tracking import build_tracker, open_parent_run

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db")
    parent = open_parent_run(cfg, tmp_path, "sweep")
    assert SweepDir(tmp_path).parent_run_id.read_text().strip() == parent
    assert open_parent_run(cfg, tmp_path) == parent  # another batch of the same sweep
    (tmp_path / "0").mkdir()
    child = build_tracker(cfg, tmp_path / "0", run_name="optim.lr=0.1", parent_run_id=parent)
    run = MlflowClient(cfg.uri).get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.run_name == "optim.lr=0.1"
    assert "MLFLOW_RUN_ID" not in os.environ
    assert open_parent_run(TrackingConfig(enabled=False), tmp_path / "x") is None


def test_maskcontrast_voc_recipe_passes_preflight_on_a_voc_tree(tmp_path, fake_cluster):
    """The published MaskContrast recipe on a VOC-layout fixture (trainaug list, labels,
    saliency maps): every check passes and the dry run prints both job scripts."""
    from tests.data.datasets.fixtures import make_voc

    root = make_voc(tmp_path / "VOC2012", saliency=True)
    proc = _launch(
        tmp_path, "-m", "experiment=maskcontrast_voc", f"data.root={root}",
        "launch.dry_run=true", f"hydra.sweep.dir={tmp_path}/sweep", env=fake_cluster,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--- pretrain sbatch script ---" in proc.stdout
    assert proc.stdout.rstrip().endswith("dry run: nothing was submitted, nothing was written")
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "sbatch.called").exists()
    # and without the saliency maps it names the directory, before anything is written
    import shutil

    shutil.rmtree(root / "saliency")
    proc = _launch(
        tmp_path, "-m", "experiment=maskcontrast_voc", f"data.root={root}",
        "launch.dry_run=true", f"hydra.sweep.dir={tmp_path}/sweep", env=fake_cluster,
    )  # fmt: skip
    assert proc.returncode == 4, proc.stdout + proc.stderr  # a data error
    assert f"the saliency map directory '{root}/saliency' does not exist" in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_a_save_longer_than_its_windows_is_refused_or_warned_before_submission(
    tmp_path, fake_cluster
):
    """One checkpoint of the configured model is written and timed (here 8 s: the checkpoint
    writer's test delay): signal_delay_s=20 cannot hold it (the user's key: refused), the
    cluster's GraceTime and KillWait neither (theirs: warned)."""
    from vice.train.checkpoint import WRITE_DELAY_ENV

    proc = _launch(
        tmp_path, "-m", "experiment=smoke", "cluster.signal_delay_s=20,60",
        "launch.dry_run=true", f"hydra.sweep.dir={tmp_path}/sweep",
        env={**fake_cluster, WRITE_DELAY_ENV: "8"},
    )  # fmt: skip
    assert proc.returncode == 5, proc.stdout + proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("preflight error")]
    assert len(errors) == 1, proc.stderr
    assert re.fullmatch(
        r"preflight error in #0 \(experiment=smoke cluster.signal_delay_s=20 launch.dry_run=True"
        r"\): invalid config value cluster.signal_delay_s=20: a stop checkpoint \(\d+ MB\) "
        r"took 8\.\d s to write here; with the rest of a step allow 2\d s; "
        r"set cluster.signal_delay_s to at least 2\d",
        errors[0],
    ), errors[0]
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("preflight warning in #1")]
    assert len(warnings) == 2 and "GraceTime=20 s (PreemptMode=REQUEUE)" in warnings[0]
    assert "KillWait=15 s is shorter than the save" in warnings[1]
    assert not (tmp_path / "sweep").exists()  # the probe's checkpoint is gone too
    assert not list(tmp_path.glob(".vice-save-probe-*"))

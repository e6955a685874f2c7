"""SLURM job chain without a cluster: sbatch options, ports, records, waiting, messages."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import slurm
from jobs.hydra_plugins.vice_launcher.vice_launcher import LAUNCHER_TARGET, NO_SBATCH
from jobs.preflight import parse_sinfo
from vice.hydra_schema import to_config

ROOT = Path(__file__).resolve().parents[2]
CPU_SINFO = "n1|batch*|2|(null)|21695|infinite|up\nn2|batch*|2|(null)|21695|infinite|up\n"
GPU_SINFO = (
    "g1|gpu*|64|gpu:a100:8|512000|2-00:00:00|up\ng2|gpu*|64|gpu:a100:8|512000|2-00:00:00|up\n"
)


def _scripts(tmp_path, sinfo=CPU_SINFO, **sections):
    cfg = to_config(sections)
    part = next(iter(parse_sinfo(sinfo).values()))
    res = slurm.plan_resources(cfg, part)
    run_dir, snap = tmp_path / "sweep" / "0", tmp_path / "sweep" / "code"
    pre = slurm.sbatch_parameters(cfg, res, run_dir, snap, "pretrain")
    ev = slurm.sbatch_parameters(cfg, res, run_dir, snap, "eval", dependency="afterok:123")
    return res, slurm.render_script(run_dir, pre), slurm.render_script(run_dir, ev)


def _lines(script):
    return {line for line in script.splitlines() if line.startswith("#SBATCH")}


def test_sbatch_options_cpu_cluster(tmp_path):
    res, pre, ev = _scripts(
        tmp_path,
        trainer={"nodes": 2, "gpus_per_node": 2},
        cluster={"time_min": 90, "mem_gb": 16, "account": "proj", "qos": "high",
                 "constraint": "avx2", "additional": {"mail-type": "END"}},
    )  # fmt: skip
    run_dir = tmp_path / "sweep" / "0"
    assert res.gpus_per_node == 0 and res.cpus_per_task == 2  # min(node CPUs, 2 x (1 + 2))
    assert {
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --partition=batch",
        "#SBATCH --time=90",
        "#SBATCH --mem=16GB",
        "#SBATCH --signal=USR2@60",
        "#SBATCH --account=proj",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=avx2",
        "#SBATCH --mail-type=END",
        "#SBATCH --job-name=vice-pretrain",
        f"#SBATCH --chdir={run_dir}",
        f"#SBATCH --output={run_dir}/slurm/%j_0_log.out",
    } <= _lines(pre)
    assert not any("gpus" in line or "dependency" in line for line in _lines(pre))
    snap = tmp_path / "sweep" / "code"
    assert f"export PYTHONPATH={snap}${{PYTHONPATH:+:$PYTHONPATH}}" in pre.splitlines()
    assert "unset MLFLOW_RUN_ID" in pre.splitlines()
    assert f"-m submitit.core._submit {run_dir}/slurm" in pre
    assert {
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --dependency=afterok:123",
        "#SBATCH --kill-on-invalid-dep=yes",
        "#SBATCH --time=60",
        "#SBATCH --job-name=vice-eval",
        "#SBATCH --mem=16GB",
    } <= _lines(ev)


def test_sbatch_options_gpu_cluster(tmp_path):
    res, pre, ev = _scripts(
        tmp_path, GPU_SINFO, trainer={"nodes": 2, "gpus_per_node": 8}, cluster={"mem_gb": 7.5}
    )
    assert "#SBATCH --gpus-per-node=8" in _lines(pre)
    assert "#SBATCH --mem=7680MB" in _lines(pre)
    assert "#SBATCH --gpus-per-node=1" in _lines(ev)
    assert res.cpus_per_task == 24 and res.eval_cpus == 3  # 8 x (1 + 2 loader workers)
    _, pre, _ = _scripts(tmp_path, GPU_SINFO, trainer={"device": "cpu"})
    assert not any("gpus" in line for line in _lines(pre))


def test_rdzv_port():
    ports = {slurm.rdzv_port(i) for i in range(1000, 1100)}
    assert len(ports) == 100 and min(ports) >= 20000 and max(ports) < 32768
    assert slurm.rdzv_port("123") == slurm.rdzv_port(123) == slurm.rdzv_port("123_4") == 20123
    assert slurm.rdzv_port(12_000 * 7 + 5) == 20005  # wraps within the span


def test_torchrun_command():
    cmd = slurm.torchrun_command(
        nnodes=2, nproc_per_node=4, endpoint="n1:20019", rdzv_id="19", is_host=False,
        script="/s/jobs/pretrain.py", run_dir="/r", python="py",
    )  # fmt: skip
    assert cmd == [
        "py", "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=4",
        "--rdzv-backend=c10d", "--rdzv-endpoint=n1:20019", "--rdzv-id=19",
        "--rdzv-conf=is_host=0",
        "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2",
        "/s/jobs/pretrain.py", "/r",
    ]  # fmt: skip


def test_tasks_pickle_by_reference_and_checkpoint():
    task = slurm.PretrainTask("/r", "/s", 2, 1)
    assert b"jobs.slurm" in pickle.dumps(task)
    resubmission = task.checkpoint()
    assert resubmission.function is task and resubmission.args == ()
    assert slurm.EvalTask("/r").checkpoint().function.run_dir == "/r"


def test_absolute_paths(tmp_path):
    base = tmp_path
    assert slurm.absolute_tracking_uri("sqlite:///mlflow.db", base) == f"sqlite:///{base}/mlflow.db"
    assert slurm.absolute_tracking_uri("sqlite:////x/m.db", base) == "sqlite:////x/m.db"
    assert slurm.absolute_tracking_uri("http://host:5000", base) == "http://host:5000"
    assert slurm.absolute_tracking_uri("mlruns", base) == f"{base}/mlruns"
    assert slurm.absolute_tracking_uri("file:./mlruns", base) == f"file:{base}/mlruns"
    cfg = to_config({"data": {"dataset": "coco", "root": "data/coco"}})
    slurm.make_paths_absolute(cfg, base)
    assert cfg.data.root == f"{base}/data/coco"
    assert cfg.tracking.uri == f"sqlite:///{base}/mlflow.db"


def test_write_config_round_trips(tmp_path):
    from vice.pipeline import load_config

    cfg = to_config({"optim": {"lr": 0.1}, "cluster": {"additional": {"mail-type": "END"}}})
    slurm.write_config(cfg, tmp_path)
    assert load_config(tmp_path) == cfg


def _chain(tmp_path, num=0, eval_id="11"):
    res = slurm.plan_resources(to_config({}), parse_sinfo(CPU_SINFO)["batch"])
    label, pretrain_id = f"optim.lr=0.{num + 1}", str(10 + 10 * num)
    chain = slurm.Chain(num, label, str(tmp_path), res, pretrain_id, eval_id)
    chain.logs["pretrain"] = slurm.log_paths(tmp_path, chain.pretrain_id, 1)
    return chain


def test_job_record(tmp_path):
    chain = _chain(tmp_path)
    chain.mlflow_run_id = "abc"
    record = json.loads(slurm.write_job_record(chain, {"snapshot": "/s"}).read_text())
    assert record["pretrain"]["job_id"] == "10" and record["eval"]["job_id"] == "11"
    assert record["eval"]["dependency"] == "afterok:10"
    assert record["pretrain"]["logs"] == [
        {"stdout": f"{tmp_path}/slurm/10_0_log.out", "stderr": f"{tmp_path}/slurm/10_0_log.err"}
    ]
    assert record["partition"] == "batch" and record["nodes"] == 1
    assert record["mlflow_run_id"] == "abc" and record["snapshot"] == "/s"
    assert "submitted_at" in record and "command" in record


def test_config_selects_the_launcher():
    from hydra import compose, initialize_config_dir

    from vice.hydra_schema import register

    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.launcher._target_ == LAUNCHER_TARGET
    assert cfg.hydra.launcher.poll_s == 5


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
    assert proc.returncode == 2
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
    assert out.rstrip().endswith("dry run: nothing was submitted")
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["multirun.yaml"]
    assert not (tmp_path / "sbatch.called").exists()


def test_preflight_error_through_hydra_submits_nothing(tmp_path, fake_cluster):
    proc = _launch(
        tmp_path, "-m", "experiment=smoke", "trainer.nodes=1,3",
        f"hydra.sweep.dir={tmp_path}/sweep", env=fake_cluster,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "preflight error in #1 (experiment=smoke trainer.nodes=3): invalid config value "
        "trainer.nodes=3: partition 'batch' has 2 nodes; set trainer.nodes to at most 2 or "
        "pick another cluster.partition",
        "nothing was submitted",
    ]
    assert not (tmp_path / "sbatch.called").exists()
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["multirun.yaml"]


def test_unwritable_sweep_dir_is_refused_before_hydra_creates_it(tmp_path, fake_cluster):
    (tmp_path / "afile").write_text("")
    proc = _launch(
        tmp_path, "-m", "experiment=smoke", f"hydra.sweep.dir={tmp_path}/afile/sweep",
        env=fake_cluster,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        f"preflight error: invalid config value hydra.sweep.dir='{tmp_path}/afile/sweep': "
        f"{tmp_path}/afile is not a directory; set hydra.sweep.dir to a writable directory "
        "that every node sees"
    )


def test_parent_run_groups_children(tmp_path):
    from mlflow.tracking import MlflowClient

    from vice.config import TrackingConfig
    from vice.tracking import PARENT_RUN_ID_FILE, build_tracker, open_parent_run

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db")
    parent = open_parent_run(cfg, tmp_path, "sweep")
    assert (tmp_path / PARENT_RUN_ID_FILE).read_text().strip() == parent
    assert open_parent_run(cfg, tmp_path) == parent  # another batch of the same sweep
    (tmp_path / "0").mkdir()
    child = build_tracker(cfg, tmp_path / "0", run_name="optim.lr=0.1", parent_run_id=parent)
    run = MlflowClient(cfg.uri).get_run(child.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.run_name == "optim.lr=0.1"
    assert "MLFLOW_RUN_ID" not in os.environ
    assert open_parent_run(TrackingConfig(enabled=False), tmp_path / "x") is None

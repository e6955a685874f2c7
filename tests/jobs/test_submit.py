"""Submitting a SLURM job chain without a cluster: sbatch options, paths, job records."""

import json
import os

import pytest

from jobs import submit
from jobs.preflight import parse_sinfo
from vice.hydra_schema import to_config

CPU_SINFO = "n1|batch*|2|(null)|21695|infinite|up\nn2|batch*|2|(null)|21695|infinite|up\n"
GPU_SINFO = (
    "g1|gpu*|64|gpu:a100:8|512000|2-00:00:00|up\ng2|gpu*|64|gpu:a100:8|512000|2-00:00:00|up\n"
)


def _scripts(tmp_path, sinfo=CPU_SINFO, **sections):
    cfg = to_config(sections)
    part = next(iter(parse_sinfo(sinfo).values()))
    res = submit.plan_resources(cfg, part)
    run_dir, snap = tmp_path / "sweep" / "0", tmp_path / "sweep" / "code"
    pre = submit.sbatch_parameters(cfg, res, run_dir, snap, "pretrain")
    ev = submit.sbatch_parameters(cfg, res, run_dir, snap, "eval", dependency="afterok:123")
    return res, submit.render_script(run_dir, pre), submit.render_script(run_dir, ev)


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


def _submitit_script(run_dir, params):
    """The script submitit's own SlurmExecutor writes for `params` (through its private
    methods: the comparison is skipped, not failed, if an upgrade removes them; then check
    submit.render_script against the new submitit by hand)."""
    import submitit

    names = ("_make_submission_file_text", "_submitit_command_str")
    if not all(hasattr(submitit.SlurmExecutor, name) for name in names):
        pytest.skip("submitit's SlurmExecutor no longer renders scripts the way this test reads")
    executor = submit.make_executor(run_dir, params, max_requeues=1)
    return executor._make_submission_file_text(executor._submitit_command_str, "0")


@pytest.mark.parametrize(
    ("sinfo", "sections"),
    [
        (CPU_SINFO, {"trainer": {"nodes": 2, "gpus_per_node": 2},
                     "cluster": {"time_min": 90, "mem_gb": 16, "account": "proj", "qos": "high",
                                 "constraint": "avx2", "signal_delay_s": 120,
                                 "additional": {"mail-type": "END", "exclusive": True}}}),
        (GPU_SINFO, {"trainer": {"nodes": 2, "gpus_per_node": 8}, "cluster": {"mem_gb": 7.5}}),
    ],
)  # fmt: skip
def test_dry_run_script_is_the_one_submitit_writes(tmp_path, monkeypatch, sinfo, sections):
    """The dry run renders the scripts itself (submitit's renderer is private); for the same
    parameters they must be what submitit submits, byte for byte: same #SBATCH options and
    values, setup lines, srun line and task command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # SlurmExecutor wants an srun
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cfg = to_config(sections)
    res = submit.plan_resources(cfg, next(iter(parse_sinfo(sinfo).values())))
    run_dir, snap = tmp_path / "sweep" / "0", tmp_path / "sweep" / "code"
    for stage, dependency in (("pretrain", None), ("eval", "afterok:123")):
        params = submit.sbatch_parameters(cfg, res, run_dir, snap, stage, dependency)
        ours, theirs = submit.render_script(run_dir, params), _submitit_script(run_dir, params)
        assert _lines(ours) == _lines(theirs)
        assert ours == theirs


def test_render_script_refuses_what_it_cannot_render(tmp_path):
    with pytest.raises(ValueError) as err:
        submit.render_script(tmp_path, {"teardown": ["echo done"], "nodes": 1})
    assert str(err.value) == "sbatch parameters the dry run cannot render: ['teardown']"


def test_absolute_paths(tmp_path):
    base = tmp_path
    uri = submit.absolute_tracking_uri
    assert uri("sqlite:///mlflow.db", base) == f"sqlite:///{base}/mlflow.db"
    assert uri("sqlite:////x/m.db", base) == "sqlite:////x/m.db"
    assert uri("http://host:5000", base) == "http://host:5000"
    assert uri("mlruns", base) == f"{base}/mlruns"
    assert uri("file:./mlruns", base) == f"file:{base}/mlruns"
    cfg = to_config({"data": {"dataset": "coco", "root": "data/coco"}})
    cfg.data.superpixels.cache_dir, cfg.data.mask_prior.cache_dir = "sp", "/abs/masks"
    submit.make_paths_absolute(cfg, base)
    assert cfg.data.root == f"{base}/data/coco"
    assert cfg.tracking.uri == f"sqlite:///{base}/mlflow.db"
    assert cfg.data.superpixels.cache_dir == f"{base}/sp"
    assert cfg.data.mask_prior.cache_dir == "/abs/masks"
    assert cfg.data.mask_prior.directory == "saliency"  # read under data.root


def _chain(tmp_path, num=0, eval_id="11"):
    res = submit.plan_resources(to_config({}), parse_sinfo(CPU_SINFO)["batch"])
    label, pretrain_id = f"optim.lr=0.{num + 1}", str(10 + 10 * num)
    chain = submit.Chain(num, label, str(tmp_path), res, pretrain_id, eval_id)
    chain.logs["pretrain"] = submit.log_paths(tmp_path, chain.pretrain_id, 1)
    return chain


def test_job_record(tmp_path):
    chain = _chain(tmp_path)
    chain.mlflow_run_id = "abc"
    record = json.loads(submit.write_job_record(chain, {"snapshot": "/s"}).read_text())
    assert record["pretrain"]["job_id"] == "10" and record["eval"]["job_id"] == "11"
    assert record["eval"]["dependency"] == "afterok:10"
    assert record["pretrain"]["logs"] == [
        {"stdout": f"{tmp_path}/slurm/10_0_log.out", "stderr": f"{tmp_path}/slurm/10_0_log.err"}
    ]
    assert record["partition"] == "batch" and record["nodes"] == 1
    assert record["mlflow_run_id"] == "abc" and record["snapshot"] == "/s"
    assert "submitted_at" in record and "command" in record

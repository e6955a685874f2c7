"""`python jobs/launch.py -m ...` on a real SLURM cluster (tools/slurm_cluster.py up --nodes 2).

Skipped when there is no cluster, unless VICE_CLUSTER_TESTS=1 (then a missing cluster fails).
The long job chains are all submitted at the start (`chains` fixture) and run side by side;
each test then waits for its own. Shortened smoke settings keep the file to a few minutes.
(A sweep's points on the cluster: test_status.py.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vice.config import FloorsConfig

ROOT = Path(__file__).resolve().parents[2]
# smoke, shorter: 4 steps, a cheap probe; every part of the pipeline still runs
FAST = (
    "experiment=smoke",
    "trainer.max_steps=4",
    "trainer.log_every=1",
    "trainer.checkpoint_every=2",
    "eval.linear_iters=20",
    "eval.max_images=4",
    "hydra.launcher.poll_s=2",
)
TIMEOUT_S = 540
SMALL = ("cluster.cpus_per_task=1", "cluster.mem_gb=4")

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _command(tmp: Path, *overrides: str, uri: str | None = None) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "jobs" / "launch.py"),
        "-m",
        f"hydra.sweep.dir={tmp}/sweep",
        f"tracking.uri={uri or f'sqlite:///{tmp}/mlflow.db'}",
        *overrides,
    ]


def _launch(tmp: Path, *overrides: str, timeout: float = 120) -> subprocess.CompletedProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        _command(tmp, *overrides), capture_output=True, text=True, timeout=timeout, cwd=tmp
    )


class Chain:
    """A `launch.wait=true` launch running in the background."""

    def __init__(self, tmp: Path, *overrides: str) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp, self.started = tmp, time.time()
        self.proc = subprocess.Popen(
            _command(tmp, "launch.wait=true", *FAST, *overrides),
            cwd=tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._result: tuple[int, str, str] | None = None

    def result(self) -> tuple[int, str, str]:
        if self._result is None:
            try:
                out, err = self.proc.communicate(timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate()
                pytest.fail(f"launch still running after {TIMEOUT_S} s:\n{out[-3000:]}")
            self._result = (self.proc.returncode, out, err)
        return self._result


@pytest.fixture(scope="module")
def chains(cluster, tmp_path_factory):
    """Every long launch, submitted together so that they share the cluster's time."""
    base = tmp_path_factory.mktemp("chains")
    started = {
        # 1 CPU and 4 GB per node: 2x1 and fail fit on the nodes together
        "2x1": Chain(base / "2x1", "trainer.nodes=2", "trainer.gpus_per_node=1", *SMALL),
        "2x2": Chain(base / "2x2", "trainer.nodes=2", "trainer.gpus_per_node=2"),
        # fails at the trainer's start: 1 image per epoch, 4 per batch (one figure index:
        # [0, 1] would be refused at launch, before anything is submitted)
        "fail": Chain(base / "fail", "trainer.nodes=1", "data.synthetic.length=1",
                      "data.batch_size=4", "figure.indices=[0]", *SMALL),
    }  # fmt: skip
    yield started
    for chain in started.values():
        if chain.proc.poll() is None:
            chain.proc.kill()
    queued = subprocess.run(["squeue", "-h", "-o", "%i|%Z"], capture_output=True, text=True)
    ours = [line.split("|")[0] for line in queued.stdout.splitlines() if f"|{base}/" in line]
    if ours:  # a test that failed early must not leave jobs behind
        subprocess.run(["scancel", *ours], check=False)


def _ids(out: str, stage: str) -> list[str]:
    return re.findall(rf"^  {stage} job: (\d+)", out, re.M)


def _sacct(job_id: str) -> dict[str, str]:
    fields = "JobID,State,NodeList,Start,End,WorkDir"
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", fields],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[0]
    return dict(zip(fields.split(","), out.split("|"), strict=True))


def _client(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp}/mlflow.db")


def _check_trained_and_evaluated(chain: Chain, world_size: int) -> str:
    code, out, err = chain.result()
    assert code == 0, out[-4000:] + err[-4000:]
    run_dir = chain.tmp / "sweep" / "0"
    (pretrain_id,), (eval_id,) = _ids(out, "pretrain"), _ids(out, "eval")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert f"run_dir: {run_dir}\n" in out and f"mlflow_run_id: {run_id}" in out
    assert f"pretrain log (task 1): {run_dir}/slurm/{pretrain_id}_1_log.out" in out
    assert f"pretrain job {pretrain_id}: RUNNING on n[1-2]" in out
    assert f"eval job {eval_id} COMPLETED: {run_dir}/eval/metrics.json" in out
    record = json.loads((run_dir / "jobs.json").read_text())
    assert record["pretrain"]["job_id"] == pretrain_id and record["eval"]["job_id"] == eval_id
    assert record["nodes"] == 2 and record["partition"] == "batch"
    # the chain: eval ran after pretraining, both in the run dir
    pre, ev = _sacct(pretrain_id), _sacct(eval_id)
    assert pre["State"] == "COMPLETED" and pre["NodeList"] == "n[1-2]"
    assert ev["State"] == "COMPLETED" and ev["Start"] >= pre["End"]
    assert pre["WorkDir"] == str(run_dir)
    # both nodes ran the snapshot's code, not the checkout's
    snapshot = chain.tmp / "sweep" / "code"
    for node in (0, 1):
        log = (run_dir / "slurm" / f"{pretrain_id}_{node}_log.out").read_text()
        assert f"node {node}/2" in log
        assert f"code: vice from {snapshot}/vice, jobs from {snapshot}/jobs" in log
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    for key in ("clustering.8.miou", "clustering.16.miou", "linear.miou"):
        assert 0.0 <= metrics[key] <= 1.0, key
    client = _client(chain.tmp)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["world_size"] == str(world_size)
    assert run.data.tags["slurm.pretrain_job_id"] == pretrain_id
    assert run.data.params["model.backbone"] == "resnet18"
    assert run.data.params["trainer.nodes"] == "2"
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]
    assert abs(run.data.metrics["eval.clustering.8.miou"] - metrics["clustering.8.miou"]) < 1e-9
    # the SLURM eval job scored every floor and the region metrics on the same images, and
    # logged each result's margin over the strongest floor
    assert metrics["floors.names"] == list(FloorsConfig().names) and not metrics["floors.skipped"]
    for key in ("clustering.8.miou", "linear.miou", "region.nn_same_class", "region.probe_acc"):
        floors = {n: metrics[f"floors.{n}.{key}"] for n in metrics["floors.names"]}
        best = max(floors, key=floors.get)
        assert metrics[f"margin.{key}.floor"] == best, key
        assert abs(metrics[f"margin.{key}"] - (metrics[key] - floors[best])) < 1e-9, key
        assert abs(run.data.metrics[f"eval.margin.{key}"] - metrics[f"margin.{key}"]) < 1e-9
        for name, value in floors.items():
            assert abs(run.data.metrics[f"eval.floors.{name}.{key}"] - value) < 1e-9, name
    return out


def test_two_nodes_one_process_each(chains):
    _check_trained_and_evaluated(chains["2x1"], world_size=2)


def test_two_nodes_two_processes_each(chains):
    out = _check_trained_and_evaluated(chains["2x2"], world_size=4)
    assert "(2 nodes x 2 processes, partition batch)" in out


def test_failed_pretraining_never_runs_its_eval(chains):
    chain = chains["fail"]
    code, out, err = chain.result()
    assert code == 1, out[-4000:] + err[-4000:]
    (pretrain_id,), (eval_id,) = _ids(out, "pretrain"), _ids(out, "eval")
    assert f"pretrain job {pretrain_id}: FAILED" in out
    assert (
        f"eval job {eval_id} CANCELLED, never started: DependencyNeverSatisfied "
        f"(pretrain job {pretrain_id} FAILED)" in out
    )
    assert "cause: ValueError: invalid config value data.batch_size=4" in out
    assert "failed sweep points: #0" in err
    ev = _sacct(eval_id)
    assert ev["State"].startswith("CANCELLED") and ev["Start"] in ("None", "Unknown")
    run_dir = chain.tmp / "sweep" / "0"
    assert not (run_dir / "eval" / "metrics.json").exists()
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert _client(chain.tmp).get_run(run_id).info.status == "FAILED"


def _our_jobs(tmp: Path) -> list[str]:
    """Jobs (queued or ended today) whose working directory lies under `tmp`."""
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-S", "now-1days", "-o", "JobID,WorkDir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if f"|{tmp}/" in line]


def test_dry_run_prints_scripts_and_submits_nothing(cluster, tmp_path):
    proc = _launch(tmp_path, "experiment=smoke", "trainer.nodes=2", "launch.dry_run=true")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    run_dir = tmp_path / "sweep" / "0"
    expected = [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --partition=batch",
        "#SBATCH --time=60",
        "#SBATCH --signal=USR2@60",
        "#SBATCH --dependency='afterok:<pretrain job id>'",
        "#SBATCH --kill-on-invalid-dep=yes",
        f"#SBATCH --chdir={run_dir}",
        f"export PYTHONPATH={tmp_path}/sweep/code${{PYTHONPATH:+:$PYTHONPATH}}",
    ]
    for line in expected:
        assert line in out.splitlines(), line
    assert "resources: pretrain 2 nodes x 1 processes (CPU)" in out
    assert out.rstrip().endswith("dry run: nothing was submitted, nothing was written")
    assert not run_dir.exists() and not (tmp_path / "sweep").exists()
    assert _our_jobs(tmp_path) == []


# The bad-input table of `-m` against the real cluster: (overrides, exit code of the class
# (jobs/exit_codes.py: 2 config, 3 environment, 4 data, 5 cluster), the lines that name it).
BAD_INPUT = {
    "nan-lr": (["optim.lr=nan"], 2, ["invalid config value optim.lr=nan: must be a finite"]),
    "appended-unknown-key": (["+trainer.foo=1"], 2, ["trainer.foo"]),
    "method-setting": (["experiment=slotcon_smoke", "data.masking.enabled=true"], 2,
                       ["data.masking.enabled=True: slotcon does not mask"]),
    "tracking-scheme": (["tracking.uri=ftp://host/x"], 3, ["tracking.uri='ftp://host/x'"]),
    "cache-dir": (["data.superpixels.cache_dir=/proc/vice-cache"], 3,
                  ["environment error: invalid config value "
                   "data.superpixels.cache_dir='/proc/vice-cache': cannot write in /proc"]),
    "data-root": (["data=coco", "data.root=/nonexistent/coco"], 4,
                  ["COCO data set at '/nonexistent/coco'"]),
    "saliency-dir": (["experiment=maskcontrast_smoke", "data.mask_prior.source=files"], 4,
                     ["data.mask_prior.source='files': data.dataset='synthetic' is procedural"]),
    "unknown-partition": (["cluster.partition=nope"], 5,
        ["invalid config value cluster.partition='nope': no such partition; "
         "set one of ['batch', 'urgent'] (or null for the default, 'batch')"]),
    "nodes-processes-time": (
        ["trainer.nodes=3", "trainer.gpus_per_node=3", "cluster.time_min=5"], 5,
        ["invalid config value trainer.nodes=3: partition 'batch' has 2 nodes; "
         "set trainer.nodes to at most 2 or pick another cluster.partition",
         "invalid config value trainer.gpus_per_node=3: the nodes of partition 'batch' have "
         "at most 2 CPUs and no GPUs (one process per CPU at most); "
         "set trainer.gpus_per_node to at most 2",
         "invalid config value cluster.time_min=5: shorter than one checkpoint interval "
         "(trainer.checkpoint_minutes=30), the job would end before its first checkpoint; "
         "set cluster.time_min to at least 30 or trainer.checkpoint_minutes to at most 5"],
    ),
    "constraint": (["cluster.constraint=a100"], 5,
        ["invalid config value cluster.constraint='a100': no node of partition 'batch' has the "
         "feature(s) ['a100']"]),
    "sbatch-option": (["+cluster.additional.bogus-opt=1"], 5,
        ["invalid config value cluster.additional.bogus-opt=1: sbatch refuses the pretrain "
         "job's options (sbatch: unrecognized option '--bogus-opt=1'"]),
    "output-dir": (["hydra.sweep.dir=/proc/vice/sweep"], 3,
        ["invalid config value hydra.sweep.dir='/proc/vice/sweep': cannot write in /proc"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_with_its_class_and_leaves_nothing(cluster, tmp_path, case):
    overrides, code, errors = BAD_INPUT[case]
    queued_before = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    recipe = [] if any(o.startswith("experiment=") for o in overrides) else ["experiment=smoke"]
    proc = _launch(tmp_path, *recipe, *overrides)
    assert proc.returncode == code, proc.stdout + proc.stderr
    for error in errors:
        assert error in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "pretrain job:" not in proc.stdout
    assert _our_jobs(tmp_path) == []
    queued = subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout
    assert len(queued.splitlines()) <= len(queued_before.splitlines())
    # no sweep directory, no MLflow store, nothing else in the launch directory
    assert sorted(p.name for p in tmp_path.iterdir()) == []

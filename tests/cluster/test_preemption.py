"""Preemption-proof training on the real local cluster (tools/slurm_cluster.py up --nodes 2).

Every scenario trains the same 16 steps on 2 nodes as an uninterrupted reference chain and
ends with: training completed, the chained eval ran exactly once, final weights bit-identical
to the reference, and an MLflow history with one value per logged step equal to the
reference's. The scenarios:

- time limit: a 2-minute limit, USR2 60 s before it, requeued by submitit until done; and
  with trainer.max_requeues=0, a run that ends FAILED with the true cause and the fix;
- a save longer than KillWait: the requeue waits for it;
- failures: killed while writing a checkpoint, a worker SIGKILLed, the newest checkpoint
  corrupted; each time the job fails and `tools/resubmit.py` continues it; `tools/status.py`
  says the state, the cause, the fix and the resubmission at each stage;
- signals: preempted twice by a job of the `urgent` partition, then `scontrol requeue`d; the
  status view says each stop and restart.

Each chain asks for 1 CPU and 4 GB per node, so two share the 2 nodes: the reference and the
chains that only wait on SLURM's clock (the time limits) are submitted together when the
module starts. The tests that preempt, and so stop every job in `batch`, come last.

A requeued job waits on SLURM's BeginTime delay (about 2 minutes); the tests release it.
Each status output is printed (`pytest -s` shows the command's output at each stage).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .test_slurm_launch import ROOT, _command

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

STEPS = 16
RUN = (
    "experiment=smoke",
    f"trainer.max_steps={STEPS}",
    "trainer.log_every=1",
    "trainer.checkpoint_every=4",
    "trainer.nodes=2",
    "trainer.gpus_per_node=1",
    "eval.linear_iters=20",
    "eval.max_images=4",
    "launch.wait=false",
    "cluster.cpus_per_task=1",
    "cluster.mem_gb=4",
)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}
WAIT_S = 900


class Run:
    """One launched pretrain -> eval chain, driven by a test."""

    def __init__(
        self,
        tmp: Path,
        *overrides: str,
        env: dict[str, str] | None = None,
        base: tuple[str, ...] = RUN,
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            _command(tmp, *base, *overrides),
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **(env or {})},
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        self.tmp = tmp
        # the jobs inherit the submitting process's environment: resubmits get the same
        self.env = {**os.environ, **(env or {})}
        self.run_dir = tmp / "sweep" / "0"
        self.pretrain = re.search(r"^  pretrain job: (\d+)", proc.stdout, re.M).group(1)
        found = re.search(r"^  eval job: (\d+)", proc.stdout, re.M)
        self.eval = found.group(1) if found else None

    def reload_ids(self) -> None:
        """After tools/resubmit.py: the chain's current job ids."""
        record = json.loads((self.run_dir / "jobs.json").read_text())
        self.pretrain = record["pretrain"]["job_id"]
        self.eval = (record.get("eval") or {}).get("job_id")

    def logs(self) -> str:
        files = sorted((self.run_dir / "slurm").glob("*_log.*"))
        return "".join(p.read_text(errors="replace") for p in files)

    def max_step(self) -> int:
        steps = re.findall(r"^step (\d+)/\d+ ", self.logs(), re.M)
        return max(map(int, steps), default=0)

    def wait(self, what: str, predicate, timeout: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            release_begin_time([self.pretrain])
            if predicate():
                return
            time.sleep(2)
        pytest.fail(f"timed out waiting for {what}; state {state(self.pretrain)}\n"
                    f"{self.logs()[-4000:]}")  # fmt: skip

    def wait_step(self, step: int) -> None:
        self.wait(f"step {step}", lambda: self.max_step() >= step)

    def wait_running_again(self, previous_stops: int) -> None:
        """The stop was recorded, the job requeued, and training runs again."""
        self.wait("the stop", lambda: len(stops(self.run_dir)) > previous_stops)
        restarted = re.compile(r"^resumed from ", re.M)
        count = len(restarted.findall(self.logs()))
        self.wait("the resume", lambda: len(restarted.findall(self.logs())) > count)

    def wait_ended(self, job: str) -> str:
        self.wait(f"job {job} to end", lambda: state(job) in ENDED)
        return state(job)

    def workers(self) -> dict[int, int]:
        """Global rank -> pid of this run's training processes (children of torchrun agents)."""
        found = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                parent = Path(f"/proc/{ppid}/cmdline").read_bytes().decode(errors="replace")
                env = (proc / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            # torchrun's agent runs as jobs/torchrun_agent.py (no traceback on a stop)
            agent = "torchrun_agent.py" in parent or "distributed.run" in parent
            if "pretrain.py" in cmd and str(self.run_dir) in cmd and agent:
                rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
                if rank is not None:
                    found[rank] = int(proc.name)
        return found

    def kill_worker(self, rank: int = 0) -> None:
        """SIGKILL the training process of global `rank` (rank 0 writes the checkpoints)."""
        pid = self.workers().get(rank)
        assert pid, f"no training process of rank {rank} found"
        os.kill(pid, signal.SIGKILL)

    def resubmit(self) -> str:
        out = subprocess.run(
            [sys.executable, str(ROOT / "tools" / "resubmit.py"), str(self.tmp / "sweep"),
             "--job", self.pretrain],
            capture_output=True, text=True, timeout=300, env=self.env,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        self.reload_ids()
        return out.stdout

    def cancel(self) -> None:
        ids = [i for i in (self.pretrain, self.eval) if i]
        subprocess.run(["scancel", *ids], check=False)


def state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.split()[0]
    out = subprocess.run(
        ["sacct", "-n", "-P", "-X", "-j", job, "-o", "State"], capture_output=True, text=True
    )
    return out.stdout.split()[0] if out.stdout.strip() else "UNKNOWN"


def release_begin_time(jobs: list[str]) -> None:
    """A requeued job waits ~2 min on BeginTime; the tests need not."""
    for job in jobs:
        out = subprocess.run(
            ["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True, text=True
        ).stdout.strip()
        if out == "BeginTime":
            subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=False)


def stops(run_dir: Path) -> list[dict]:
    path = run_dir / "stops.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def preempt() -> str:
    """A job in `urgent` that needs both nodes whole: SLURM requeues every `batch` job on them
    for it (without --exclusive it would take 1 CPU per node and stop only as few jobs as
    free that)."""
    out = subprocess.run(
        ["sbatch", "-p", "urgent", "-N", "2", "--exclusive", "--parsable", "--wrap", "sleep 3"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip().split(";")[0]


def history(tmp: Path, run_dir: Path, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    return sorted(
        (m.step, m.value)
        for m in MlflowClient(f"sqlite:///{tmp}/mlflow.db").get_metric_history(run_id, key)
    )


def status(where: Path) -> str:
    """`tools/status.py <where>`'s output, printed."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "status.py"), str(where)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"\n$ python tools/status.py {where}\n{out.stdout}", flush=True)
    return out.stdout


def _client(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp}/mlflow.db")


# a 2-minute limit, SIGUSR2 60 s before it
TIME_LIMIT = ("cluster.time_min=2", "cluster.signal_delay_s=60", "trainer.checkpoint_minutes=1")


@pytest.fixture(scope="module")
def started(cluster, tmp_path_factory):
    """The reference and the chains that only wait on SLURM's clock, submitted together."""
    from vice.train.trainer import STEP_DELAY_ENV

    base = tmp_path_factory.mktemp("started")
    runs: dict[str, Run] = {}
    try:
        runs["reference"] = Run(base / "reference", "eval.enabled=false")
        # 4 s more per step make 16 steps outlast a segment: requeued until done
        runs["time_limit"] = Run(
            base / "time_limit", *TIME_LIMIT, "trainer.max_requeues=20",
            env={STEP_DELAY_ENV: "4"},
        )  # fmt: skip
        # 8 s per step outlast the 2 minutes; no requeue allowed
        runs["exhausted"] = Run(
            base / "exhausted", *TIME_LIMIT, "trainer.max_requeues=0", env={STEP_DELAY_ENV: "8"}
        )
        yield runs
    finally:
        for run in runs.values():
            run.cancel()


@pytest.fixture(scope="module")
def reference(started) -> Run:
    run = started["reference"]
    assert run.wait_ended(run.pretrain) == "COMPLETED", run.logs()[-3000:]
    return run


def quiet(started: dict[str, Run]) -> None:
    """Before a test preempts (every job in `batch`): the shared chains have ended; a chain
    whose test failed early is cancelled."""
    for run in started.values():
        run.cancel()
        run.wait_ended(run.pretrain)


def check_completed_like_reference(
    run: Run,
    reference: Run,
    stops_expected: int | None,
    keys: tuple[str, ...] = ("loss", "loss_swav", "lr"),
    steps: int = STEPS,
) -> None:
    assert run.wait_ended(run.pretrain) == "COMPLETED", run.logs()[-4000:]
    assert run.wait_ended(run.eval) == "COMPLETED", run.logs()[-4000:]
    a = torch.load(reference.run_dir / "model_final.pt", weights_only=True)
    b = torch.load(run.run_dir / "model_final.pt", weights_only=True)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    for key in keys:
        ref = history(reference.tmp, reference.run_dir, key)
        assert len(ref) == steps
        assert history(run.tmp, run.run_dir, key) == ref, key
    # the eval ran exactly once: one eval log, one value of its metrics
    eval_logs = [
        p for p in (run.run_dir / "slurm").glob("*_0_log.out") if "eval of " in p.read_text()
    ]
    assert len(eval_logs) == 1, eval_logs
    assert len(history(run.tmp, run.run_dir, "eval.clustering.8.miou")) == 1
    if stops_expected is not None:
        assert len(stops(run.run_dir)) == stops_expected


def test_time_limit_requeues_until_done(started, reference):
    run = started["time_limit"]
    run.wait("the first time-limit stop", lambda: len(stops(run.run_dir)) >= 1)
    assert stops(run.run_dir)[0]["signal"] in ("SIGUSR2", "SIGTERM")
    check_completed_like_reference(run, reference, stops_expected=None)
    # as many stops as the machine's speed needed, each a time-limit signal and requeue
    assert {s["signal"] for s in stops(run.run_dir)} <= {"SIGUSR2", "SIGTERM"}
    assert "this job is timed-out" in run.logs()


def test_exhausted_requeues_end_failed_with_the_cause_and_the_fix(started):
    """trainer.max_requeues=0 and a 2-minute limit: the first time-limit signal saves, then
    submitit refuses the requeue; the run ends FAILED in SLURM and MLflow, and the status view
    names the true cause (not the signal) and the fix."""
    run = started["exhausted"]
    run_id = (run.run_dir / "mlflow_run_id").read_text().strip()
    assert run.wait_ended(run.pretrain) == "FAILED", run.logs()[-3000:]
    assert run.wait_ended(run.eval) == "CANCELLED"
    out = status(run.tmp / "sweep")
    assert "cause: time limit reached 1 time: the requeues (trainer.max_requeues=0) are " \
        "used up" in out, out  # fmt: skip
    assert (
        "fix: raise trainer.max_requeues, or continue this run with: python "
        f"tools/resubmit.py {run.run_dir} --job {run.pretrain}"
    ) in out
    assert "stops: 1 (last: SIGUSR2 at step" in out
    assert "SignalException" not in out and "got signal: 12" not in out
    assert _client(run.tmp).get_run(run_id).info.status == "FAILED"
    # the requeue waited for the save, and the save was recorded with its duration
    assert "training saves and exits first; the requeue follows the save" in run.logs()
    assert stops(run.run_dir)[0]["since_signal_s"] is not None


def test_a_save_longer_than_killwait_is_not_lost(reference, tmp_path):
    """The cluster's KillWait is 30 s; the stop checkpoint takes 40 s. `scancel --signal=USR2`
    (what SLURM sends before a time limit, or at a preemption with send_user_signal) used to
    make submitit requeue at once, and SLURM SIGKILLed the save 30 s later. The requeue now
    follows the save: the run resumes at the step it stopped, and ends like the reference."""
    from vice.train.checkpoint import WRITE_DELAY_ENV
    from vice.train.trainer import STEP_DELAY_ENV

    # the preflight measures the slow write too: the window the user sets must hold it
    run = Run(
        tmp_path,
        "trainer.checkpoint_every=100",  # only the stop's and the final checkpoint are slow
        "cluster.signal_delay_s=90",
        env={WRITE_DELAY_ENV: "40", STEP_DELAY_ENV: "1"},
    )
    try:
        run.wait_step(3)
        subprocess.run(["scancel", "--signal=USR2", run.pretrain], check=True)
        run.wait_running_again(0)
        stop = stops(run.run_dir)[0]
        assert stop["signal"] == "SIGUSR2" and stop["since_signal_s"] > 30 + 5, stop
        ckpt = run.run_dir / "checkpoints" / f"step_{stop['step']:09d}"
        assert f"resumed from {ckpt} at step {stop['step']}" in run.logs()
        assert "training saves and exits first; the requeue follows the save" in run.logs()
        check_completed_like_reference(run, reference, stops_expected=1)
    finally:
        run.cancel()


def test_failures_resumed_by_resubmit_and_said_by_the_status_view(reference, tmp_path):
    from vice.train.checkpoint import WRITE_DELAY_ENV, WRITE_DELAY_STEPS_ENV
    from vice.train.trainer import STEP_DELAY_ENV

    # 1 s more per step: each kill lands before the job passes the next checkpoint, even
    # when the test's 2 s polling runs on a loaded machine; checkpoint 8 takes 25 s to write
    delays = {WRITE_DELAY_ENV: "25", WRITE_DELAY_STEPS_ENV: "8", STEP_DELAY_ENV: "1"}
    run = Run(tmp_path, env=delays)
    ckpts = run.run_dir / "checkpoints"
    sweep = tmp_path / "sweep"
    run_id = (run.run_dir / "mlflow_run_id").read_text().strip()
    first = run.pretrain
    try:
        # 0. running: state, step/total, images/s, ETA, the MLflow run, rank 0's log
        run.wait_step(3)
        out = status(sweep)
        assert re.search(rf"pretrain job {first}: RUNNING on \S+ \| step \d+/16 \(\d+%\) \| "
                         r"[\d.]+ img/s \| ETA \d+m\d\ds", out), out  # fmt: skip
        assert f"mlflow run: {run_id}" in out
        log = re.search(r"progress log: (\S+)", out).group(1)
        assert re.fullmatch(rf"{run.run_dir}/slurm/{first}_[01]_log\.out", log)
        assert "restarts: 0 by SLURM, 0 resubmitted; stops: 0" in out

        # 1. the writer (rank 0) killed while checkpoint 8 is being written: checkpoint 4 is
        # used. Killing another rank would let rank 0 finish the write before the step ends.
        run.wait("checkpoint 8 being written", lambda: any(ckpts.glob(".tmp-step_000000008-*")))
        run.kill_worker()
        assert run.wait_ended(run.pretrain) == "FAILED"
        assert run.wait_ended(run.eval) == "CANCELLED"  # its dependency can never be met
        out = status(sweep)
        assert re.search(r"cause: rank 0 on \S+ was killed by signal 9 \(SIGKILL\)", out), out
        assert (
            "fix: continue this run from its newest checkpoint with: python tools/resubmit.py "
            f"{run.run_dir} --job {first}"
        ) in out
        assert f"pretrain job {first}: FAILED" in out
        old_eval = run.eval
        assert "resubmitted" in run.resubmit()
        # the run's tags name the new jobs and every attempt's
        tags = _client(tmp_path).get_run(run_id).data.tags
        assert tags["slurm.pretrain_job_id"] == run.pretrain != first
        assert tags["slurm.eval_job_id"] == run.eval != old_eval
        assert tags["slurm.pretrain_job_ids"] == f"{first},{run.pretrain}"
        assert tags["slurm.eval_job_ids"] == f"{old_eval},{run.eval}"
        out = status(sweep)
        assert f"past pretrain jobs: {first} FAILED" in out
        assert f"job {first} FAILED; resubmitted as {run.pretrain}" in out
        run.wait("the resume", lambda: "resumed from" in run.logs())
        assert f"resumed from {ckpts}/step_000000004 at step 4" in run.logs()

        # 2. a worker SIGKILLed: the last periodic checkpoint (8) is used
        run.wait("checkpoint 8", lambda: (ckpts / "step_000000008" / "manifest.json").exists())
        run.wait_step(10)
        run.kill_worker(rank=1)
        assert run.wait_ended(run.pretrain) == "FAILED"
        run.resubmit()
        run.wait("the resume", lambda: f"resumed from {ckpts}/step_000000008 " in run.logs())

        # 3. the newest checkpoint corrupted: the one before is used, with a warning
        run.wait("checkpoint 12", lambda: (ckpts / "step_000000012" / "manifest.json").exists())
        run.wait_step(13)
        run.kill_worker()
        assert run.wait_ended(run.pretrain) == "FAILED"
        state_file = ckpts / "step_000000012" / "state.pt"
        data = bytearray(state_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        state_file.write_bytes(bytes(data))
        run.resubmit()
        check_completed_like_reference(run, reference, stops_expected=0)
        logs = run.logs()
        assert "checkpoint step_000000012 is unusable" in logs and "checksum mismatch" in logs
        assert f"resumed from {ckpts}/step_000000008 at step 8" in logs
        record = json.loads((run.run_dir / "jobs.json").read_text())
        assert [h["pretrain"]["state"] for h in record["history"]] == ["FAILED"] * 3

        # 4. completed: the eval that ran names itself
        out = status(sweep)
        assert f"eval job {run.eval}: COMPLETED" in out and "metrics: " in out
        assert "0 not ended" in out
        run_info = _client(tmp_path).get_run(run_id)
        assert run_info.data.tags["slurm.eval_job_ran"] == run.eval
        assert run_info.info.status == "FINISHED"
    finally:
        run.cancel()


def test_preempted_twice_then_requeued(started, reference, tmp_path):
    quiet(started)
    run = Run(tmp_path)
    sweep = tmp_path / "sweep"
    first = run.pretrain
    try:
        run.wait_step(3)
        preempt()
        run.wait_running_again(0)
        # preempted, requeued, resumed: said without opening a log
        out = status(sweep)
        # SIGTERM from SLURM, or SIGUSR2 where the cluster sends the job's signal as well
        stop = re.search(r"stopped at step (\d+) by SIG(TERM|USR2) \(", out)
        assert stop, out
        assert f"resumed at step {stop.group(1)}" in out
        assert f"job {first} started again (restart 1)" in out
        assert "restarts: 1 by SLURM, 0 resubmitted; stops: 1 (last: SIG" in out

        run.wait_step(run.max_step() + 2)
        preempt()
        run.wait_running_again(1)
        run.wait_step(run.max_step() + 2)
        subprocess.run(["scontrol", "requeue", run.pretrain], check=True)
        run.wait_running_again(2)
        check_completed_like_reference(run, reference, stops_expected=3)
        signals = [s["signal"] for s in stops(run.run_dir)]
        assert set(signals) <= {"SIGTERM", "SIGUSR2"}, signals
        tags = (
            _client(tmp_path).get_run((run.run_dir / "mlflow_run_id").read_text().strip()).data.tags
        )
        assert tags["stops"] == "3" and tags["restart_count"] == "3"
        assert re.match(r"SIG(TERM|USR2) at step \d+, 20\d\d-", tags["stop.1"])
        assert int(tags["slurm.restart_count"]) == 3
        # a stop leaves no torchrun traceback in the logs, one line per rank instead
        errs = "".join(p.read_text() for p in (run.run_dir / "slurm").glob("*_log.err"))
        assert "SignalException" not in errs
        lines = re.findall(r"^rank (\d): stopped by SIG\w+ at step \d+", errs, re.M)
        assert lines and sorted(set(lines)) == ["0", "1"], errs[-3000:]
    finally:
        run.cancel()

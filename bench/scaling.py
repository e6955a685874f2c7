"""Multi-node scaling and start-up latency of pretraining on the local SLURM cluster.

    python bench/scaling.py [--steps 12 --skip 2]        # tools/slurm_cluster.py up --nodes 2

Runs the smoke pretraining (no evaluation) through `python jobs/launch.py -m ...
launch.wait=true` on 1 node and then on 2 nodes, one process per node, with the same batch
per rank (weak scaling: the 2-node run trains twice the images per step). The 1-node run is
the baseline measured in the same run.

Measured per run:
- images/s over the steps after the first `--skip` (wall clock between the MLflow metric
  timestamps rank 0 logs after each step, so the per-step all-reduces and logging count);
- seconds from starting launch.py to the end of the first training step, split into
  launcher (launch.py start -> sbatch accepted; slurmctld's log, ms), SLURM queueing
  (submitted -> started, slurmctld's log), srun + submitit task start (-> submitit's
  "Starting with JobEnvironment" on the last node), torchrun start (-> torch.distributed's
  "Starting elastic_operator" on the last node: mostly importing torch), rendezvous (->
  "Rendezvous complete" on the last node), worker setup (process group, data, model, DDP:
  -> rank 0's "training N steps" line, seen by this script as it appears) and the first step
  (-> MLflow's timestamp of step 1). Each phase ends at the next one's start, so they add up
  to the total.

The last lines are `key=value` figures: weak_scaling_efficiency = img/s(2 nodes) / (2 x
img/s(1 node)) and launch_to_first_step_s (of the 2-node run). On this machine the "nodes"
are slurmd daemons on one host, so both nodes share its cores: the script says so when the
nodes' CPUs outnumber the host's: 2 nodes then compute twice the images on the cores that
1 node already used, and perfect scaling shows as an efficiency near 0.5, not 1.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLURMCTLD_LOG = Path("/var/log/slurm/slurmctld.log")
BATCH = 2  # images per rank (the smoke experiment's data.batch_size)

PHASES = [
    ("launcher (launch.py -> sbatch accepted)", "t0", "submit"),
    ("SLURM queueing (submitted -> started)", "submit", "start"),
    ("srun + submitit task start", "start", "task"),
    ("torchrun start (python + torch import)", "task", "agent"),
    ("torchrun rendezvous", "agent", "rendezvous"),
    ("worker setup (dist, data, model, DDP)", "rendezvous", "training"),
    ("first step", "training", "step1"),
]


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _epoch(text: str, fmt: str) -> float:
    return datetime.strptime(text, fmt).timestamp()


def _glog_time(line: str, year: int) -> float | None:
    """torch.distributed's log prefix `I1122 09:26:48.760000` (no year) -> epoch seconds."""
    m = re.match(r"[IWE](\d\d)(\d\d) (\d\d:\d\d:\d\d\.\d+)", line)
    if not m:
        return None
    return _epoch(f"{year}-{m.group(1)}-{m.group(2)} {m.group(3)}", "%Y-%m-%d %H:%M:%S.%f")


class LogWatcher(threading.Thread):
    """Notes when lines without timestamps first appear in the jobs' logs (polled)."""

    def __init__(self, folder: Path, patterns: dict[str, str], period_s: float = 0.05):
        super().__init__(daemon=True)
        self.folder, self.patterns, self.period_s = folder, patterns, period_s
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.seen) < len(self.patterns):
            now = time.time()
            text = ""
            if self.folder.is_dir():
                text = "".join(p.read_text(errors="replace") for p in self.folder.glob("*.out"))
            for key, pattern in self.patterns.items():
                if key not in self.seen and re.search(pattern, text, re.M):
                    self.seen[key] = now
            self.stop.wait(self.period_s)


def slurmctld_times(job: str) -> dict[str, float]:
    """Submit and start of `job` in ms from slurmctld's log; sacct (1 s) when it is absent."""
    times: dict[str, float] = {}
    fmt = "%Y-%m-%dT%H:%M:%S.%f"
    if SLURMCTLD_LOG.is_file():
        for line in SLURMCTLD_LOG.read_text(errors="replace").splitlines():
            m = re.match(r"\[([\d\-T:.]+)\] (.*)", line)
            if not m or not re.search(rf"JobId={job}\b", m.group(2)):
                continue
            if "submit_batch_job" in m.group(2):
                times.setdefault("submit", _epoch(m.group(1), fmt))
            elif re.search(r"Started JobId|Allocate JobId", m.group(2)):
                times.setdefault("start", _epoch(m.group(1), fmt))
    if len(times) < 2:
        out = _run("sacct", "-n", "-P", "-X", "-j", job, "-o", "Submit,Start").stdout.split()
        submit, start = out[0].split("|")
        times.setdefault("submit", _epoch(submit, "%Y-%m-%dT%H:%M:%S"))
        times.setdefault("start", _epoch(start, "%Y-%m-%dT%H:%M:%S"))
    return times


def job_log_times(folder: Path, job: str, year: int) -> dict[str, float]:
    """Per phase, the time its marker appeared on the LAST node (the critical path)."""
    marks: dict[str, list[float]] = {"task": [], "agent": [], "rendezvous": []}
    for node_log in sorted(folder.glob(f"{job}_*_log.out")):
        # submitit logs to the task's stdout, torch.distributed's agent to its stderr
        text = node_log.read_text(errors="replace")
        text += node_log.with_suffix(".err").read_text(errors="replace")
        m = re.search(r"submitit INFO \(([\d\- :,]+)\) - Starting with JobEnvironment", text)
        if m:
            marks["task"].append(_epoch(m.group(1), "%Y-%m-%d %H:%M:%S,%f"))
        for key, needle in (("agent", "Starting elastic_operator"),
                            ("rendezvous", "Rendezvous complete")):  # fmt: skip
            line = next((x for x in text.splitlines() if needle in x), None)
            stamp = _glog_time(line, year) if line else None
            if stamp is not None:
                marks[key].append(stamp)
    return {key: max(values) for key, values in marks.items() if values}


def step_times(run_dir: Path, tracking_uri: str) -> dict[int, float]:
    """Step -> seconds since the epoch at which rank 0 logged it (MLflow metric timestamps)."""
    from mlflow.tracking import MlflowClient

    from vice.run_dir import RunDir

    run_id = RunDir(run_dir).mlflow_run_id.read_text().strip()
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "loss")
    return {m.step: m.timestamp / 1000 for m in history}


def run_once(nodes: int, steps: int, skip: int, workdir: Path, threads: int) -> dict[str, float]:
    sweep = workdir / "sweep"
    run_dir = sweep / "0"
    uri = f"sqlite:///{workdir}/mlflow.db"
    command = [
        sys.executable, str(ROOT / "jobs" / "launch.py"), "-m", f"hydra.sweep.dir={sweep}",
        f"tracking.uri={uri}", "experiment=smoke", f"trainer.nodes={nodes}",
        "trainer.gpus_per_node=1", f"trainer.max_steps={steps}", "trainer.log_every=1",
        f"trainer.checkpoint_every={steps}", "tracking.system_metrics=false",
        "eval.enabled=false", "hydra.launcher.poll_s=1", "launch.wait=true",
        f"trainer.threads_per_process={threads}",
    ]  # fmt: skip
    watcher = LogWatcher(run_dir / "slurm", {"training": r"^training \d+ steps"})
    watcher.start()
    load_before = os.getloadavg()[0]  # other work on the host shares its cores
    t0 = time.time()
    proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, text=True)
    job = None
    try:
        out, _ = proc.communicate(timeout=600)
        m = re.search(r"pretrain job: (\d+)", out)
        job = m.group(1) if m else None
        if proc.returncode != 0 or job is None:
            raise SystemExit(f"{nodes}-node launch failed (code {proc.returncode}):\n{out}")
    except BaseException:
        proc.kill()
        ours = _run("squeue", "-h", "-o", "%i|%Z").stdout.splitlines()
        ids = [x.split("|")[0] for x in ours if x.split("|")[-1].startswith(str(workdir))]
        if ids:  # never leave a job of ours behind
            _run("scancel", *ids)
        raise
    finally:
        watcher.stop.set()
        watcher.join()
    marks = {"t0": t0, **slurmctld_times(job)}
    marks.update(job_log_times(run_dir / "slurm", job, datetime.fromtimestamp(t0).year))
    marks.update(watcher.seen)
    logged = step_times(run_dir, uri)
    marks["step1"] = logged[1]
    missing = [key for _, a, b in PHASES for key in (a, b) if key not in marks]
    if missing:
        raise SystemExit(f"{nodes}-node run: no time for {sorted(set(missing))} in {run_dir}")
    seconds = logged[steps] - logged[skip]
    result = {name: marks[b] - marks[a] for name, a, b in PHASES}
    result["launch_to_first_step_s"] = marks["step1"] - t0
    result["images_per_s"] = BATCH * nodes * (steps - skip) / seconds
    result["step_s"] = seconds / (steps - skip)
    result["job"] = float(job)
    result["load"] = load_before
    return result


def host_cpus_shared(nodes: int) -> tuple[bool, int, int]:
    """(the nodes' CPUs outnumber the host's, CPUs of `nodes` nodes, host CPUs)."""
    out = _run("sinfo", "-h", "-N", "-p", "batch", "-o", "%N %c").stdout.split("\n")
    per_node = {line.split()[0]: int(line.split()[1]) for line in out if line.strip()}
    slurm_cpus = sum(sorted(per_node.values(), reverse=True)[:nodes])
    host = os.cpu_count() or 1
    return slurm_cpus > host, slurm_cpus, host


def wait_for_idle_queue(limit_s: float) -> int:
    """Waits until no job is queued or running (other users' jobs would share the CPUs);
    returns how many were still there when the wait ended."""
    deadline = time.time() + limit_s
    while True:
        jobs = [x for x in _run("squeue", "-h", "-o", "%i").stdout.split() if x]
        if not jobs or time.time() >= deadline:
            return len(jobs)
        time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="training steps per run")
    parser.add_argument("--skip", type=int, default=2, help="warm-up steps left out of img/s")
    parser.add_argument("--idle-wait-s", type=float, default=900, help="wait for other jobs")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    parser.add_argument(
        "--threads", type=int, default=0, help="trainer.threads_per_process (0: cores / procs)"
    )
    args = parser.parse_args()
    if args.skip < 1 or args.steps <= args.skip:
        parser.error("need 1 <= --skip < --steps")
    if _run("python3", str(ROOT / "tools" / "slurm_cluster.py"), "status").returncode != 0:
        raise SystemExit("no local SLURM cluster: sudo python3 tools/slurm_cluster.py up --nodes 2")
    results = {}
    for nodes in (1, 2):
        busy = wait_for_idle_queue(args.idle_wait_s)
        if busy:
            print(f"warning: {busy} other jobs in the queue share the cluster with this run")
        if args.keep:
            workdir = Path(tempfile.mkdtemp(prefix=f"vice-scaling-{nodes}n-"))
            print(f"{nodes}-node run in {workdir}")
            results[nodes] = run_once(nodes, args.steps, args.skip, workdir, args.threads)
            continue
        with tempfile.TemporaryDirectory(prefix=f"vice-scaling-{nodes}n-") as tmp:
            results[nodes] = run_once(nodes, args.steps, args.skip, Path(tmp), args.threads)
    one, two = results[1], results[2]
    efficiency = two["images_per_s"] / (2 * one["images_per_s"])

    threads = args.threads or "cores / processes"
    print(
        f"smoke pretraining, {BATCH} images x 5 views per rank, 1 process per node, "
        f"{threads} threads per process, img/s over steps {args.skip + 1}-{args.steps}"
    )
    print(f"{'':44s} {'1 node':>9s} {'2 nodes':>9s}")
    print(f"{'SLURM job':44s} {one['job']:9.0f} {two['job']:9.0f}")
    print(f"{'images per step (all ranks)':44s} {BATCH:9d} {2 * BATCH:9d}")
    print(f"{'images/s':44s} {one['images_per_s']:9.2f} {two['images_per_s']:9.2f}")
    print(f"{'seconds per step':44s} {one['step_s']:9.2f} {two['step_s']:9.2f}")
    print(f"{'host load average before the run':44s} {one['load']:9.2f} {two['load']:9.2f}")
    print("seconds from launch.py start to the first step:")
    for name, _, _ in PHASES:
        print(f"  {name:42s} {one[name]:9.2f} {two[name]:9.2f}")
    print(f"  {'total':42s} {one['launch_to_first_step_s']:9.2f} "
          f"{two['launch_to_first_step_s']:9.2f}")  # fmt: skip
    shared, slurm_cpus, host = host_cpus_shared(2)
    if shared:
        note = (
            f"note: the 2 nodes are slurmd daemons on this one host: together they offer "
            f"{slurm_cpus} CPUs but the host has {host} cores, so the 2-node run computes "
            f"twice the images per step on the cores the 1-node run had alone: perfect "
            f"scaling shows here as an efficiency near {host / slurm_cpus:.2f}, and neither "
            f"it nor the rendezvous (which never leaves the host) measures a real cluster"
        )
        print(note)
    print(f"weak_scaling_efficiency={efficiency:.3f}")
    print(f"images_per_s_1node={one['images_per_s']:.3f}")
    print(f"images_per_s_2nodes={two['images_per_s']:.3f}")
    print(f"launch_to_first_step_s_1node={one['launch_to_first_step_s']:.2f}")
    print(f"launch_to_first_step_s={two['launch_to_first_step_s']:.2f}")


if __name__ == "__main__":
    main()

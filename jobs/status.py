"""One view of the project's job chains: `tools/status.py`, and the event lines that
`launch.wait=true` prints as things happen (`jobs/watch.py`).

Everything is read from what survives the jobs: the chain's `jobs.json` (the current jobs and
the `history` of resubmitted attempts), `stops.jsonl` (every stop the trainer completed), the
MLflow run id file, and the task logs, which grow by one segment per start of a task
(`jobs.watch.segments`). SLURM gives the live state. Nothing here writes anything.
"""

from __future__ import annotations

import getpass
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs import watch
from jobs.resubmit import find_records, read_record
from vice.run_dir import RunDir
from vice.train.stop import StopEvent, read_stops

# The task's own start line (jobs/slurm.py): when, which job, and SLURM's restart count.
_VICE_START = re.compile(
    r"^\[vice (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] pretrain job (\S+) node \d+/\d+ "
    r"\(([^)]*)\), restart (\d+)"
)
_SUBMITIT = re.compile(r"^submitit \w+ \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\) - (.*)$")
_CAUGHT = re.compile(r"Caught signal (SIG\w+) on (\S+): this job is (timed-out|preempted)")
_BYPASSED = re.compile(r"Bypassing signal (SIGTERM)")
_REQUEUED = re.compile(r"Requeued job \S+ \((\d+) remaining timeouts\)")
_NOT_REQUEUED = re.compile(r"Job not requeued because: (.+?)\.?\s*$")
_RESUMED = re.compile(r"^resumed from (\S+) at step (\d+)")
# jobs/slurm.py DeferredRequeue: submitit's requeue held until the training processes saved
_HELD = re.compile(r"^\[vice (\S+ \S+)\] (SIG\w+) received: training saves and exits first")
# The trainer's log line (vice/train/trainer.py, StepLogger.log).
_STEP = re.compile(r"^step (\d+)/(\d+) \|.*\| ([\d.]+) img/s \|.*\| ETA (\S+)\s*$")
_DONE = re.compile(r"^pretraining done: ")
_STOP_WHY = {
    "SIGTERM": "preemption, scontrol requeue or scancel",
    "SIGUSR2": "time limit near, or preemption",
    "SIGINT": "interrupted",
}


def _epoch(text: str, fmt: str = "%Y-%m-%d %H:%M:%S") -> float:
    try:
        return time.mktime(time.strptime(text, fmt))
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Event:
    """Something that happened to a chain, with when (epoch seconds) to order it."""

    time: float
    text: str

    @property
    def clock(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self.time)) if self.time else "--:--:--"

    def line(self) -> str:
        return f"{self.clock} {self.text}"


@dataclass(frozen=True)
class Progress:
    """Rank 0's newest step line."""

    step: int
    total: int
    images_per_s: float
    eta: str
    done: bool  # "pretraining done" was logged after it
    log: str  # the task log holding rank 0's step lines (torchrun may put rank 0 anywhere)


@dataclass(frozen=True)
class Attempt:
    """One submitted pretrain job of a chain (a resubmission is a new attempt)."""

    job_id: str
    logs: list[dict[str, str]]  # per task: {"stdout": ..., "stderr": ...}
    state: str | None = None  # the final state recorded in jobs.json's history
    until: float = 0.0  # when it was resubmitted


def attempts(record: dict[str, Any]) -> list[Attempt]:
    """The chain's pretrain jobs, oldest first, the current one last."""
    from jobs.submit import log_paths

    nodes = int((record.get("resources") or {}).get("nodes") or record.get("nodes") or 1)
    out = []
    for past in record.get("history", []):
        job = past["pretrain"]["job_id"]
        until = _epoch(past.get("until", "")[:19], "%Y-%m-%dT%H:%M:%S")
        logs = log_paths(record["run_dir"], job, nodes)
        out.append(Attempt(job, logs, past["pretrain"].get("state"), until))
    current = record["pretrain"]
    out.append(Attempt(current["job_id"], current.get("logs") or []))
    return out


def _restart_of(segment: list[str], default: int) -> int:
    """SLURM's restart count of a log segment (its start line), else `default`."""
    start = next((m for line in segment if (m := _VICE_START.match(line))), None)
    return int(start[4]) if start else default


def read_progress(paths: Sequence[str | Path]) -> Progress | None:
    """Rank 0's newest step line among the task logs `paths`.

    torchrun may give global rank 0 to another node's task after each requeue, so the newest
    line is the one of the latest restart (then the highest step), not the longest log's.
    """
    best: tuple[int, int] | None = None
    found: Progress | None = None
    for path in paths:
        for index, segment in enumerate(watch.segments(watch.read_lines(path) or [])):
            last, done = None, False
            for line in segment:
                if m := _STEP.match(line):
                    last, done = m, False
                elif _DONE.match(line):
                    done = True
            if last is None:
                continue
            key = (_restart_of(segment, index), int(last[1]))
            if best is None or key > best:
                best = key
                found = Progress(
                    int(last[1]), int(last[2]), float(last[3]), last[4], done, str(path)
                )
    return found


def _attempt_events(attempt: Attempt, first: bool) -> list[Event]:
    """Restarts, resumes and what submitit did on signals, from one job's task logs."""
    events: list[Event] = []
    if not attempt.logs:
        return events
    # submitit's rank 0 (task 0) catches the signal and requeues; its log says so.
    task0 = watch.read_lines(attempt.logs[0]["stdout"]) or []
    for line in task0:
        m = _SUBMITIT.match(line)
        if not m:
            continue
        when, text = _epoch(m[1]), m[2]
        if c := _CAUGHT.search(text):
            what = "time limit near" if c[3] == "timed-out" else "preempted"
            events.append(Event(when, f"{what}: {c[1]} on {c[2]} (job {attempt.job_id})"))
        elif _BYPASSED.search(text) and not any("SIGTERM" in e.text for e in events[-1:]):
            events.append(Event(when, f"SIGTERM from SLURM ({_STOP_WHY['SIGTERM']})"))
        elif r := _REQUEUED.search(text):
            events.append(Event(when, f"requeued by submitit ({r[1]} time-limit requeues left)"))
        elif n := _NOT_REQUEUED.search(text):
            events.append(Event(when, f"not requeued: {n[1]}"))
    for line in task0:
        if h := _HELD.match(line):
            text = f"{h[2]} on task 0 (job {attempt.job_id}): the requeue waits for the save"
            events.append(Event(_epoch(h[1]), text))
    # Starts from task 0's log (every task logs its start; one is enough); resumes from
    # whichever task got rank 0 at that start (only rank 0 prints them).
    for task, entry in enumerate(attempt.logs):
        for segment in watch.segments(watch.read_lines(entry["stdout"]) or []):
            start = next((m for line in segment if (m := _VICE_START.match(line))), None)
            if start is None:
                continue
            when, restart = _epoch(start[1]), int(start[4])
            if task == 0 and (restart or not first):
                again = f"restart {restart}" if restart else "resubmitted"
                events.append(Event(when, f"job {start[2]} started again ({again})"))
            resumed = next((m for line in segment if (m := _RESUMED.match(line))), None)
            if resumed:
                events.append(Event(when + 0.5, f"resumed at step {resumed[2]}"))
    return events


def chain_events(record: dict[str, Any]) -> list[Event]:
    """Everything that happened to the chain, oldest first."""
    run_dir = record["run_dir"]
    events = []
    for stop in read_stops(run_dir):
        why = _STOP_WHY.get(stop.signal, "a stop signal")
        text = f"stopped at step {stop.step} by {stop.signal} ({why}), saved"
        events.append(Event(stop.time, text + _after_signal(stop)))
    tries = attempts(record)
    for i, attempt in enumerate(tries):
        events += _attempt_events(attempt, first=i == 0)
        if attempt.state is not None:
            new = tries[i + 1].job_id
            events.append(
                Event(attempt.until, f"job {attempt.job_id} {attempt.state}; resubmitted as {new}")
            )
    return sorted(events, key=lambda e: e.time)


def record_of(chain: Any) -> dict[str, Any]:
    """A submitted chain's (`jobs.submit.Chain`) record: its jobs.json, else what the chain
    itself knows (before jobs.json is written)."""
    path = RunDir(chain.run_dir).jobs
    if path.is_file():
        try:
            return read_record(path)
        except ValueError:
            pass  # being replaced (tools/resubmit.py writes it atomically, but be safe)
    return {
        "run_dir": chain.run_dir,
        "resources": {"nodes": chain.resources.nodes},
        "pretrain": {"job_id": chain.pretrain_id, "logs": chain.logs.get("pretrain", [])},
    }


def state_text(state: watch.JobState | None, started: bool) -> str:
    """SLURM's state, said in words where it hides what happens (a requeue's delay)."""
    if state is None:
        return "UNKNOWN to SLURM"
    if state.state == "PENDING" and state.reason == "BeginTime" and started:
        return "PENDING: requeued, waiting on SLURM's requeue delay (BeginTime)"
    return state.text()


@dataclass
class ChainView:
    """What `tools/status.py` shows of one chain."""

    record: dict[str, Any]
    pretrain: watch.JobState | None
    eval: watch.JobState | None
    progress: Progress | None
    events: list[Event]
    requeues: int  # SLURM restarts of the chain's jobs (preemptions, time limits, requeues)
    mlflow_run_id: str | None
    cause: str | None = None
    fix: str | None = None
    logs: list[str] = field(default_factory=list)  # the failed job's .err logs
    settled: str | None = None  # the MLflow status this view set (settle_run)

    @property
    def run_dir(self) -> str:
        return self.record["run_dir"]

    @property
    def ended(self) -> bool:
        """No job of the chain will run again (unless resubmitted)."""
        if self.pretrain is None or self.pretrain.state not in watch.ENDED:
            return False
        if self.pretrain.state == "COMPLETED" and self.eval is not None:
            return self.eval.state in watch.ENDED
        return True


def _restarts(attempt: Attempt) -> int:
    """How many times SLURM started this job again (the highest restart in its start lines)."""
    highest = 0
    for entry in attempt.logs[:1]:
        for line in watch.read_lines(entry["stdout"]) or []:
            if m := _VICE_START.match(line):
                highest = max(highest, int(m[4]))
    return highest


def build_view(record: dict[str, Any], states: dict[str, watch.JobState]) -> ChainView:
    """A chain's view from its record, its run directory and SLURM's `states`."""
    run_dir = record["run_dir"]
    tries = attempts(record)
    current = tries[-1]
    pre = states.get(current.job_id)
    eval_id = (record.get("eval") or {}).get("job_id")
    ev = states.get(eval_id) if eval_id else None
    progress = None
    for attempt in reversed(tries):  # a resubmitted job has no step line until it runs
        progress = read_progress([e["stdout"] for e in attempt.logs])
        if progress:
            break
    mlflow_path = RunDir(run_dir).mlflow_run_id
    run_id = mlflow_path.read_text().strip() if mlflow_path.is_file() else None
    view = ChainView(
        record,
        pre,
        ev,
        progress,
        chain_events(record),
        sum(_restarts(a) for a in tries),
        run_id or record.get("mlflow_run_id"),
    )
    failed = None
    if pre is not None and pre.state in watch.ENDED and pre.state != "COMPLETED":
        failed = ("pretrain", current.job_id, current.logs, pre.state)
    elif ev is not None and ev.state in watch.ENDED and ev.state not in ("COMPLETED", "CANCELLED"):
        failed = ("eval", eval_id, (record.get("eval") or {}).get("logs") or [], ev.state)
    if failed:
        _, job_id, logs, state = failed
        paths = [entry[key] for entry in logs for key in ("stderr", "stdout")]
        view.cause = watch.cancelled_cause(
            watch.last_cause(paths, watch.configured_max_requeues(run_dir)), state
        )
        if view.cause is None and state == "NODE_FAIL":
            view.cause = "a node of the job failed (SLURM state NODE_FAIL)"
        view.fix = watch.fix_hint(view.cause, run_dir, job_id, state)
        if view.fix is None and failed[0] == "pretrain" and state in ("CANCELLED", "TIMEOUT"):
            view.fix = f"continue it with: python tools/resubmit.py {run_dir} --job {job_id}"
        view.logs = [entry["stderr"] for entry in logs]
    return view


def ended_status(view: ChainView) -> str | None:
    """The MLflow status an ended chain's run should have: KILLED when a job was cancelled
    (`scancel`), FAILED when one died otherwise; None while the chain runs or when it
    completed (the eval job ends its run FINISHED itself)."""
    if not view.ended or view.pretrain is None:
        return None
    pre = view.pretrain.state
    if pre == "COMPLETED":
        if view.eval is None or view.eval.state == "COMPLETED":
            return None
        return "KILLED" if view.eval.state == "CANCELLED" else "FAILED"
    return "KILLED" if pre == "CANCELLED" else "FAILED"


def settle_run(view: ChainView) -> str | None:
    """Ends the MLflow run of a chain whose jobs died without a word (`scancel`, a node or
    SLURM killing them: no process of the run could set its status), through the run's
    journal, and then the sweep's parent once no point runs. Returns the status set, or None
    when nothing was to do. Used by `tools/status.py` and `launch.wait`."""
    from vice.tracking_journal import Journal

    status = ended_status(view)
    if status is None:
        return None
    journal = Journal(view.run_dir)
    if not journal.record_path.is_file() or journal.record()["status"] not in (None, "RUNNING"):
        return None  # never tracked (tracking.enabled=false), or ended by the job itself
    from jobs import stages
    from jobs.slurm import close_sweep_parent

    stages.finish(view.run_dir, status)
    close_sweep_parent(view.run_dir)
    return status


def _after_signal(stop: StopEvent) -> str:
    """How long the stop's checkpoint took from the signal: what a save window must hold."""
    since = stop.since_signal_s
    return f" {since:.0f} s after the signal" if since is not None else ""


def format_view(view: ChainView, events: int = 8) -> str:
    """The chain's lines: states, progress, restarts and stops, ids, logs, a failure's cause.

    Args:
        view: The chain.
        events: How many of the newest events to list.
    """
    rec = view.record
    lines = [f"#{rec.get('job_num', '?')} {view.run_dir}"]
    overrides = rec.get("overrides", "")
    if overrides:  # a sweep point's whole command line can be long: its start is enough
        cut = overrides if len(overrides) <= 96 else overrides[:93] + "..."
        lines.append(f"  overrides: {cut}")
    pre_id = rec["pretrain"]["job_id"]
    started = len(view.events) > 0 or view.progress is not None
    text = f"  pretrain job {pre_id}: {state_text(view.pretrain, started)}"
    p = view.progress
    if p:
        text += f" | step {p.step}/{p.total} ({100 * p.step // max(p.total, 1)}%)"
        text += f" | {p.images_per_s:.1f} img/s"
        running = view.pretrain is not None and view.pretrain.state == "RUNNING"
        if running and not p.done:
            text += f" | ETA {p.eta}"
    lines.append(text)
    if rec.get("eval"):
        lines.append(f"  eval job {rec['eval']['job_id']}: {state_text(view.eval, False)}")
        metrics = RunDir(view.run_dir).metrics
        if view.eval is not None and view.eval.state == "COMPLETED" and metrics.is_file():
            lines.append(f"  metrics: {metrics}")
    stops = read_stops(view.run_dir)
    resubmits = len(rec.get("history", []))
    text = f"  restarts: {view.requeues} by SLURM, {resubmits} resubmitted; stops: {len(stops)}"
    if stops:
        last = stops[-1]
        after = _after_signal(last)
        text += f" (last: {last.signal} at step {last.step}{', saved' + after if after else ''})"
    lines.append(text)
    past = [f"{h['pretrain']['job_id']} {h['pretrain']['state']}" for h in rec.get("history", [])]
    if past:
        lines.append(f"  past pretrain jobs: {', '.join(past)}")
    mlflow = f"  mlflow run: {view.mlflow_run_id or '-'}"
    if view.settled:
        mlflow += f" (ended {view.settled} now: its jobs ended without ending it)"
    lines.append(mlflow)
    if p:
        lines.append(f"  progress log: {p.log}")
    for event in view.events[-events:]:
        lines.append(f"  {event.line()}")
    if view.cause:
        lines.append(f"  cause: {view.cause}")
    if view.fix:
        lines.append(f"  fix: {view.fix}")
    for log in view.logs:
        lines.append(f"  log: {log}")
    return "\n".join(lines)


def views(
    records: Iterable[Path],
    query: Callable[[Sequence[str]], dict[str, watch.JobState]] = watch.query_states,
) -> list[ChainView]:
    loaded = [read_record(path) for path in records]
    ids = [i for rec in loaded for i in (rec["pretrain"]["job_id"],
                                          (rec.get("eval") or {}).get("job_id")) if i]  # fmt: skip
    states = query(ids) if ids else {}
    return [build_view(rec, states) for rec in loaded]


def slurm_run_dirs(user: str | None = None) -> list[str]:
    """The run directories of the user's vice jobs that SLURM knows (the job comment)."""
    user = user or getpass.getuser()
    names = "vice-pretrain,vice-eval"
    found = watch.run_quiet(["squeue", "-h", "-u", user, "-n", names, "-o", "%k"]).splitlines()
    # Ended jobs: sacct keeps the comment only with AccountingStoreFlags=job_comment.
    sacct = ["sacct", "-n", "-X", "-P", "-u", user, "--name", names, "-S", "now-7days",
             "-o", "Comment"]  # fmt: skip
    found += watch.run_quiet(sacct).splitlines()
    dirs = {line.strip() for line in found if line.strip() and Path(line.strip()).is_dir()}
    return sorted(dirs)


def status_text(paths: Sequence[str | Path], all_jobs: bool = False) -> tuple[str, bool]:
    """What `tools/status.py` prints once, and whether every chain has ended."""
    where = [*map(str, paths), *(slurm_run_dirs() if all_jobs else [])]
    chains = views(find_records(where))
    if not chains:
        return f"no job records (jobs.json) under {', '.join(where) or 'SLURM jobs'}", True
    for chain in chains:
        if status := settle_run(chain):
            chain.settled = status
    active = sum(not c.ended for c in chains)
    head = f"[{time.strftime('%H:%M:%S')}] {len(chains)} chains, {active} not ended"
    return "\n\n".join([head, *map(format_view, chains)]), active == 0

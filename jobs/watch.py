"""Following submitted job chains: SLURM states (squeue, then sacct), state changes as they
happen (`launch.wait=true`), and a failed job's true cause (from the last segment of its
logs, which grow across requeues), the fix for known causes, and the log holding rank 0's
progress."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobs.submit import Chain, stamp
from jobs.torchrun import TORCHRUN_SIGNALS
from vice.run_dir import RunDir

# Final states; PREEMPTED is not among them because a preempted job of a requeueing
# partition comes back (PENDING again, same id).
ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
    "SPECIAL_EXIT",
}


@dataclass
class JobState:
    state: str
    reason: str = ""
    nodes: str = ""
    exit_code: str = ""
    elapsed: str = ""

    def text(self) -> str:
        out = self.state
        if self.state == "RUNNING" and self.nodes:
            out += f" on {self.nodes}"
        if self.state in ENDED and self.exit_code and self.elapsed not in ("", "00:00:00"):
            out += f" (exit {self.exit_code}, {self.elapsed})"
        # sacct keeps the last pending reason of a job that then ran ("Dependency"): noise
        stale = self.state == "COMPLETED"
        if self.reason and self.reason not in ("None", "(null)") and not stale:
            out += f" [{self.reason}]"
        return out


def run_quiet(command: Sequence[str]) -> str:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def query_states(job_ids: Sequence[str]) -> dict[str, JobState]:
    """Live state from squeue (with the pending reason), else the final one from sacct."""
    ids = ",".join(job_ids)
    states: dict[str, JobState] = {}
    for line in run_quiet(
        ["squeue", "-h", "-t", "all", "-j", ids, "-o", "%i|%T|%r|%N"]
    ).splitlines():
        job_id, state, reason, nodes = [*line.split("|"), "", "", ""][:4]
        states[job_id.strip()] = JobState(state.strip(), reason.strip(), nodes.strip())
    sacct = [
        "sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobID,State,Reason,NodeList,ExitCode,Elapsed",
    ]  # fmt: skip
    for line in run_quiet(sacct).splitlines():
        fields = [*line.split("|"), *[""] * 6][:6]
        job_id, state = fields[0].strip(), fields[1].split()[0] if fields[1].strip() else ""
        if not state:
            continue
        known = states.get(job_id)
        if known is None or known.state in ENDED:
            # squeue's reason is more precise (DependencyNeverSatisfied, not Dependency)
            reason = known.reason if known and known.reason else fields[2]
            states[job_id] = JobState(state, reason, fields[3], fields[4], fields[5])
    return states


# Causes in job logs. A task's `.out`/`.err` logs grow across requeues: every start of the
# task appends a segment, so only the last segment tells why the job finally ended.
# A log is split at the first kind of start line it holds: submitit's (.out), vice's (.out,
# where submitit's logging is off), torchrun's (.err, LOGLEVEL=INFO in jobs/slurm.py).
_STARTS = (
    re.compile(r"^submitit INFO \(.*\) - Starting with JobEnvironment"),
    re.compile(r"^\[vice [^\]]*\] (pretrain job \S+ node \d+/\d+ .*restart \d+|eval of .*); "),
    re.compile(r"Starting elastic_operator with launch configs"),
)
# torchrun may prefix a worker's output with its rank ("[rank1]: ...").
_RANK_PREFIX = re.compile(r"^\[[A-Za-z_]*\d+\]: ?")
_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*: ")
# Errors that only report that a worker failed: the worker's own error is the cause.
_WRAPPERS = ("ChildFailedError", "pretraining failed:")
# submitit's signal handler, when it ends the job instead of requeueing it.
_NOT_REQUEUED = re.compile(r"Job not requeued because: (.+?)\.?\s*$")
_TIMED_OUT = re.compile(r"Caught signal \w+ on .*: this job is timed-out")
# A stop that was handled: submitit caught the signal, the trainer saved, the job requeued.
_STOPPED = re.compile(
    r"Caught signal SIG\w+ on |Bypassing signal SIG\w+|^stopping at step \d+ \(|"
    r"TrainingStoppedError|Requeued job \S+ \(\d+ remaining timeouts\)"
)
_SIGNAL_EXCEPTION = re.compile(r"SignalException: Process \d+ got signal: (\d+)")
# What torchrun forwards as a stop; its SignalException after a handled stop is no failure.
_STOP_SIGNALS = {signal.Signals[name].value for name in TORCHRUN_SIGNALS.split(",")}
# torchrun's failure summary (ChildFailedError): the root cause's fields.
_ROOT_FIELD = re.compile(r"^\s*(host|rank|traceback)\s*: (.*)$")
_KILLED = re.compile(r"Signal (\d+) \((\w+)\) received by PID")


def read_lines(path: str | Path) -> list[str] | None:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    return [_RANK_PREFIX.sub("", line) for line in text.splitlines()]


def _starts(lines: list[str]) -> list[int]:
    """Indices of the task's start lines, of the first kind of start line the log holds."""
    for start in _STARTS:
        marks = [i for i, line in enumerate(lines) if start.search(line)]
        if marks:
            return marks
    return []


def segments(lines: list[str]) -> list[list[str]]:
    """A task log cut at each start of the task (one segment per start: the first, then one
    per requeue); a log without start lines is one segment."""
    marks = _starts(lines) or [0]
    return [lines[a:b] for a, b in zip(marks, [*marks[1:], len(lines)], strict=True)]


def _last_segment(lines: list[str]) -> list[str]:
    """The lines since the task's last start (all of them for a log without start lines)."""
    marks = _starts(lines)
    return lines[marks[-1] :] if marks else lines


def _not_requeued(reason: str, timeouts: int, max_requeues: int | None) -> str:
    if reason != "timed-out too many times":
        return f"submitit did not requeue the job: {reason}"
    # submitit requeues max_requeues times, and ends the job at the next time limit.
    if max_requeues is None and timeouts:
        max_requeues = timeouts - 1
    if not timeouts and max_requeues is not None:
        timeouts = max_requeues + 1
    times = f"{timeouts} time{'s' if timeouts != 1 else ''}" if timeouts else "too many times"
    setting = "trainer.max_requeues" + (f"={max_requeues}" if max_requeues is not None else "")
    return f"time limit reached {times}: the requeues ({setting}) are used up"


def _killed_worker(segment: list[str], stopped: bool) -> str | None:
    """torchrun's root cause when a worker died of a signal (it prints no error itself)."""
    fields: dict[str, str] = {}
    in_root = False
    for line in segment:
        if line.startswith("Root Cause (first observed failure):"):
            in_root, fields = True, {}
        elif in_root and line.startswith("====="):
            in_root = False
        elif in_root and (m := _ROOT_FIELD.match(line)):
            fields[m.group(1)] = m.group(2).strip()
    m = _KILLED.search(fields.get("traceback", ""))
    if not m or (stopped and int(m.group(1)) in _STOP_SIGNALS):
        return None
    rank = fields.get("rank", "?").split()[0]
    return f"rank {rank} on {fields.get('host', '?')} was killed by signal {m[1]} ({m[2]})"


def last_cause(paths: Sequence[str | Path], max_requeues: int | None = None) -> str | None:
    """Why a job ended, from the last segment of each of its task logs (.err and .out).

    In order: submitit's refusal to requeue (time limit reached once more than
    `trainer.max_requeues` allows), a worker killed by a signal (torchrun's root cause; the
    other ranks' errors are its consequences), the first exception line (a worker's, not
    torchrun's summary, nor torchrun's SignalException of a stop that was handled), and last
    the task's "pretraining failed: ..." line.

    Args:
        paths: The task logs, in task order.
        max_requeues: `trainer.max_requeues` of the run, to name in the cause; None: the
            value the logs imply.
    """
    logs = [lines for lines in map(read_lines, paths) if lines is not None]
    lasts = [_last_segment(lines) for lines in logs]
    stopped = any(_STOPPED.search(line) for seg in lasts for line in seg)
    timeouts = max((sum(bool(_TIMED_OUT.search(x)) for x in lines) for lines in logs), default=0)
    for seg in lasts:
        for line in seg:
            if m := _NOT_REQUEUED.search(line):
                return _not_requeued(m.group(1), timeouts, max_requeues)
    for seg in lasts:
        if killed := _killed_worker(seg, stopped):
            return killed
    wrapper = None
    for seg in lasts:
        for line in seg:
            if wrapper is None and "pretraining failed:" in line:
                wrapper = line[line.index("pretraining failed:") :].strip()
            if not _ERROR_LINE.match(line) or any(w in line for w in _WRAPPERS):
                continue
            sig = _SIGNAL_EXCEPTION.search(line)
            if sig and stopped and int(sig.group(1)) in _STOP_SIGNALS:
                continue
            return line.strip()
    return wrapper


def cancelled_cause(cause: str | None, state: str) -> str | None:
    """A cancelled job's cause in words: its logs only say training stopped on SIGTERM."""
    if state != "CANCELLED" or (cause and "TrainingStoppedError" not in cause):
        return cause
    saved = re.search(r"stopped by (SIG\w+) at step (\d+), checkpoint saved", cause or "")
    if saved:
        return f"cancelled (scancel); training stopped at step {saved[2]} and saved a checkpoint"
    return "cancelled (scancel)"


def fix_hint(cause: str | None, run_dir: str, job_id: str, state: str = "") -> str | None:
    """What to do about a known cause (`state`: the job's final SLURM state)."""
    resubmit = f"python tools/resubmit.py {run_dir} --job {job_id}"
    if cause and cause.startswith("time limit reached"):
        return f"raise trainer.max_requeues, or continue this run with: {resubmit}"
    if cause and cause.startswith("cancelled (scancel)"):
        return f"continue it with: {resubmit}"
    lost = re.search(r"\(SIGKILL\)|got signal: 9\b|TrainingStoppedError", cause or "")
    if state == "NODE_FAIL" or lost:
        return f"continue this run from its newest checkpoint with: {resubmit}"
    return None


_STEP_LINE = re.compile(r"^step \d+/\d+ ", re.MULTILINE)


def progress_log(paths: Sequence[str | Path]) -> str | None:
    """The task log holding rank 0's step lines (torchrun may give rank 0 to any node)."""
    best, most = None, 0
    for path in paths:
        try:
            count = len(_STEP_LINE.findall(Path(path).read_text(errors="replace")))
        except OSError:
            continue
        if count > most:
            best, most = str(path), count
    return best


def configured_max_requeues(run_dir: str) -> int | None:
    import yaml

    try:
        value = yaml.safe_load(RunDir(run_dir).config.read_text())["trainer"]["max_requeues"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None


def _report_failure(chain: Chain, stage: str, out: Callable[[str], None], state: str) -> None:
    logs = chain.logs.get(stage, [])
    job_id = chain.pretrain_id if stage == "pretrain" else chain.eval_id or ""
    progress = progress_log([entry["stdout"] for entry in logs])
    if progress:
        out(f"  progress log: {progress}")
    paths = [entry[key] for entry in logs for key in ("stderr", "stdout")]
    cause = cancelled_cause(last_cause(paths, configured_max_requeues(chain.run_dir)), state)
    if cause is None and state == "NODE_FAIL":
        cause = "a node of the job failed (SLURM state NODE_FAIL)"
    if cause:
        out(f"  cause: {cause}")
    hint = fix_hint(cause, chain.run_dir, job_id, state)
    if hint:
        out(f"  fix: {hint}")
    for entry in logs:
        out(f"  log: {entry['stderr']}")


def _print_metrics(chain: Chain, out: Callable[[str], None]) -> None:
    """The metrics table a local run prints at its end (jobs/launch.py print_summary)."""
    import json

    from vice.eval.summary import format_summary

    try:
        metrics = json.loads(RunDir(chain.run_dir).metrics.read_text())
    except (OSError, json.JSONDecodeError) as err:
        out(f"  metrics unreadable: {err}")
        return
    if metrics:
        out("\n".join(f"  {line}" for line in format_summary(metrics).splitlines()))
    if chain.mlflow_run_id:
        out(f"  mlflow_run_id: {chain.mlflow_run_id}")


def wait_for(
    chains: Sequence[Chain],
    poll_s: float = 5.0,
    out: Callable[[str], None] = print,
    query: Callable[[Sequence[str]], dict[str, JobState]] = query_states,
) -> dict[int, bool]:
    """Prints every job state change until all jobs have ended; returns {num: success}."""
    jobs = []  # (chain, stage, job id)
    for chain in chains:
        jobs.append((chain, "pretrain", chain.pretrain_id))
        if chain.eval_id:
            jobs.append((chain, "eval", chain.eval_id))
    from jobs import status  # imports this module

    seen: dict[str, str] = {}
    final: dict[str, JobState] = {}
    stuck_since: dict[str, float] = {}
    ran: set[str] = set()  # jobs seen running: a PENDING [BeginTime] after that is a requeue
    told: set[tuple[int, status.Event]] = set()
    while any(job_id not in final for _, _, job_id in jobs):
        states = query([job_id for _, _, job_id in jobs if job_id not in final])
        # What the logs and stops.jsonl say happened since the last poll (the same lines as
        # tools/status.py): preempted, stopped at step N, requeued, resumed at step N.
        for chain in chains:
            for event in status.chain_events(status.record_of(chain)):
                if (chain.num, event) not in told:
                    told.add((chain.num, event))
                    out(f"[{event.clock}] #{chain.num} {event.text}")
        for chain, stage, job_id in jobs:
            if job_id in final or job_id not in states:
                continue
            state = states[job_id]
            if state.state in ("RUNNING", "COMPLETING"):
                ran.add(job_id)
            text = status.state_text(state, job_id in ran)
            if seen.get(job_id) != text:
                seen[job_id] = text
                out(f"[{stamp()}] #{chain.num} {stage} job {job_id}: {text}")
            if state.state in ENDED:
                final[job_id] = state
            elif stage == "eval" and state.reason == "DependencyNeverSatisfied":
                # kill-on-invalid-dep should have cancelled it; a cluster that ignores the
                # flag would keep it pending forever.
                first = stuck_since.setdefault(job_id, time.monotonic())
                if time.monotonic() - first > 60:
                    run_quiet(["scancel", job_id])
        if any(job_id not in final for _, _, job_id in jobs):
            time.sleep(poll_s)
    results = {}
    for chain in chains:
        pre = final[chain.pretrain_id]
        ok = pre.state == "COMPLETED"
        out(
            f"#{chain.num} {chain.label}".rstrip()
            + f": pretrain job {chain.pretrain_id} {pre.state}"
        )
        if not ok:
            _report_failure(chain, "pretrain", out, pre.state)
        if chain.eval_id:
            ev = final[chain.eval_id]
            if ev.state == "COMPLETED":
                out(f"  eval job {chain.eval_id} COMPLETED: {RunDir(chain.run_dir).metrics}")
                _print_metrics(chain, out)
            elif not ok and ev.state == "CANCELLED":
                out(
                    f"  eval job {chain.eval_id} CANCELLED, never started: "
                    f"DependencyNeverSatisfied (pretrain job {chain.pretrain_id} {pre.state})"
                )
            else:
                out(f"  eval job {chain.eval_id} {ev.state}")
                _report_failure(chain, "eval", out, ev.state)
            ok = ok and ev.state == "COMPLETED"
        view = status.build_view(status.record_of(chain), final)
        if settled := status.settle_run(view):  # scancel, or killed by SLURM: say it in MLflow
            out(f"  mlflow run {view.mlflow_run_id}: {settled} (its jobs ended without ending it)")
        results[chain.num] = ok
    return results

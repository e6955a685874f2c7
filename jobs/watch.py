"""Following submitted job chains: SLURM states (squeue, then sacct), state changes as they
happen (`launch.wait=true`), and the first error of a failed job's logs."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobs.submit import Chain, stamp
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
        if self.reason and self.reason not in ("None", "(null)"):
            out += f" [{self.reason}]"
        return out


def _run(command: Sequence[str]) -> str:
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def query_states(job_ids: Sequence[str]) -> dict[str, JobState]:
    """Live state from squeue (with the pending reason), else the final one from sacct."""
    ids = ",".join(job_ids)
    states: dict[str, JobState] = {}
    for line in _run(["squeue", "-h", "-t", "all", "-j", ids, "-o", "%i|%T|%r|%N"]).splitlines():
        job_id, state, reason, nodes = [*line.split("|"), "", "", ""][:4]
        states[job_id.strip()] = JobState(state.strip(), reason.strip(), nodes.strip())
    sacct = [
        "sacct", "-n", "-P", "-X", "-j", ids, "-o", "JobID,State,Reason,NodeList,ExitCode,Elapsed",
    ]  # fmt: skip
    for line in _run(sacct).splitlines():
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


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*: ")
# Errors that only report that a worker failed: the worker's own error is the cause.
_WRAPPERS = ("ChildFailedError", "pretraining failed:")


def first_error(paths: Sequence[str]) -> str | None:
    """The first exception line of a job's logs (a worker's, not torchrun's summary)."""
    for path in paths:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if _ERROR_LINE.match(line) and not any(w in line for w in _WRAPPERS):
                return line.strip()
    return None


def _report_failure(chain: Chain, stage: str, out: Callable[[str], None]) -> None:
    logs = chain.logs.get(stage, [])
    cause = first_error([entry["stderr"] for entry in logs])
    if cause:
        out(f"  cause: {cause}")
    for entry in logs:
        out(f"  log: {entry['stderr']}")


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
    seen: dict[str, str] = {}
    final: dict[str, JobState] = {}
    stuck_since: dict[str, float] = {}
    while any(job_id not in final for _, _, job_id in jobs):
        states = query([job_id for _, _, job_id in jobs if job_id not in final])
        for chain, stage, job_id in jobs:
            if job_id in final or job_id not in states:
                continue
            state = states[job_id]
            text = state.text()
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
                    _run(["scancel", job_id])
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
            _report_failure(chain, "pretrain", out)
        if chain.eval_id:
            ev = final[chain.eval_id]
            if ev.state == "COMPLETED":
                out(f"  eval job {chain.eval_id} COMPLETED: {RunDir(chain.run_dir).metrics}")
            elif not ok and ev.state == "CANCELLED":
                out(
                    f"  eval job {chain.eval_id} CANCELLED, never started: "
                    f"DependencyNeverSatisfied (pretrain job {chain.pretrain_id} {pre.state})"
                )
            else:
                out(f"  eval job {chain.eval_id} {ev.state}")
                _report_failure(chain, "eval", out)
            ok = ok and ev.state == "COMPLETED"
        results[chain.num] = ok
    return results

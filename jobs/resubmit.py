"""Finding the project's job chains and submitting them again (`tools/resubmit.py`).

A chain is what `<run_dir>/jobs.json` records: a pretrain job and its eval job. Its state
comes from SLURM (squeue, then sacct). A chain whose pretraining ended without completing
(preempted and not requeued, time limit, node failure, failure, cancellation, OOM) is
resumable: the same task is submitted again with the same resolved config, run directory,
code snapshot and sbatch parameters, and the trainer continues from the newest complete
checkpoint in the run directory, into the same MLflow run (its id is in the run directory).
A chain whose pretraining completed but whose eval did not gets only a new eval.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import watch
from jobs.slurm import EvalTask, PretrainTask
from jobs.submit import log_paths, make_executor
from vice.run_dir import RunDir, SweepDir

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
          "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}  # fmt: skip
# Ended without a final model: a restart continues from the last checkpoint.
RESUMABLE = {"PREEMPTED", "TIMEOUT", "NODE_FAIL", "FAILED", "CANCELLED", "OUT_OF_MEMORY",
             "BOOT_FAIL", "DEADLINE"}  # fmt: skip


@dataclass
class ChainStatus:
    record_path: Path
    record: dict[str, Any]
    pretrain: str  # SLURM state, or UNKNOWN when SLURM no longer knows the job
    eval: str | None  # None: no eval job in the chain

    @property
    def run_dir(self) -> str:
        return self.record["run_dir"]

    @property
    def pretrain_id(self) -> str:
        return self.record["pretrain"]["job_id"]

    @property
    def eval_id(self) -> str | None:
        return (self.record.get("eval") or {}).get("job_id")

    def action(self) -> tuple[str | None, str]:
        """("pretrain+eval" | "eval" | None, why)."""
        if self.pretrain in ACTIVE:
            return None, f"pretrain job {self.pretrain_id} is {self.pretrain}"
        if self.eval in ACTIVE and self.pretrain == "COMPLETED":
            return None, f"eval job {self.eval_id} is {self.eval}"
        if self.pretrain == "COMPLETED":
            if self.eval is None or self.eval == "COMPLETED":
                return None, "completed"
            return "eval", f"pretraining completed, eval {self.eval}"
        if self.pretrain in RESUMABLE or self.pretrain == "UNKNOWN":
            return "pretrain+eval", f"pretraining {self.pretrain}"
        return None, f"pretrain job {self.pretrain_id} is {self.pretrain}"


def find_records(paths: Iterable[str | Path]) -> list[Path]:
    """Every `jobs.json` at or under `paths` (run dirs, sweep dirs, or their parents)."""
    found = set()
    for path in map(Path, paths):
        record = RunDir(path).jobs
        if path.is_file() and path.name == record.name:
            found.add(path.resolve())
        elif record.is_file():
            found.add(record.resolve())
        elif path.is_dir():
            snapshot = SweepDir(path).code.name  # a copy of the project, holding no runs
            for hit in path.rglob(record.name):
                if snapshot not in hit.relative_to(path).parts[:-1]:
                    found.add(hit.resolve())
    return sorted(found)


def read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable job record ({err})") from err


def chain_states(
    records: Sequence[Path],
    query: Callable[[Sequence[str]], dict[str, watch.JobState]] = watch.query_states,
) -> list[ChainStatus]:
    loaded = [(path, read_record(path)) for path in records]
    ids = []
    for _, rec in loaded:
        ids.append(rec["pretrain"]["job_id"])
        if rec.get("eval"):
            ids.append(rec["eval"]["job_id"])
    states = query(ids) if ids else {}
    out = []
    for path, rec in loaded:
        pre = states.get(rec["pretrain"]["job_id"])
        ev = states.get(rec["eval"]["job_id"]) if rec.get("eval") else None
        out.append(
            ChainStatus(
                path,
                rec,
                pre.state if pre else "UNKNOWN",
                (ev.state if ev else "UNKNOWN") if rec.get("eval") else None,
            )
        )
    return out


def format_table(chains: Sequence[ChainStatus]) -> str:
    rows = [("PRETRAIN", "STATE", "EVAL", "STATE", "ACTION", "RUN_DIR")]
    for c in chains:
        action, why = c.action()
        rows.append(
            (
                c.pretrain_id,
                c.pretrain,
                c.eval_id or "-",
                c.eval or "-",
                f"resubmit {action}" if action else f"none ({why})",
                c.run_dir,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r[:5])) + "  " + r[5] for r in rows
    )


def resubmit(chain: ChainStatus, stages: str, submit: Callable[..., Any] | None = None) -> dict:
    """Submits `stages` ("pretrain+eval" or "eval") of `chain` again; updates jobs.json.

    Returns the new record. `submit(params, task, folder)` -> job id, for tests.
    """
    submit = submit or _submit
    rec = chain.record
    run_dir = rec["run_dir"]
    config = RunDir(run_dir).config
    if not config.is_file():
        raise ValueError(f"{run_dir}: {config.name} is missing; the run cannot be resubmitted")
    snapshot = rec["snapshot"]
    if not Path(snapshot).is_dir():
        raise ValueError(
            f"{run_dir}: its code snapshot {snapshot} is gone; the run cannot be resubmitted "
            "with the code it started with"
        )
    res = rec["resources"]
    history = list(rec.get("history", []))
    history.append(
        {
            "pretrain": {"job_id": chain.pretrain_id, "state": chain.pretrain},
            "eval": {"job_id": chain.eval_id, "state": chain.eval} if chain.eval_id else None,
            "until": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    new = dict(rec)
    pre_id = chain.pretrain_id
    if stages == "pretrain+eval":
        params = dict(rec["sbatch"]["pretrain"])
        task = PretrainTask(
            run_dir, snapshot, res["nodes"], res["procs_per_node"], rec.get("eval") is not None
        )
        pre_id = submit(params, task, run_dir)
        new["pretrain"] = {
            "job_id": pre_id,
            "logs": log_paths(run_dir, pre_id, res["nodes"]),
        }
    if rec.get("eval"):
        params = dict(rec["sbatch"]["eval"])
        params["additional_parameters"] = dict(params.get("additional_parameters", {}))
        if stages == "pretrain+eval":
            params["dependency"] = f"afterok:{pre_id}"
            params["additional_parameters"]["kill-on-invalid-dep"] = "yes"
        else:  # the pretraining this eval waits for has completed already
            params.pop("dependency", None)
            params["additional_parameters"].pop("kill-on-invalid-dep", None)
        eval_id = submit(params, EvalTask(run_dir), run_dir)
        new["eval"] = {
            "job_id": eval_id,
            "dependency": params.get("dependency"),
            "logs": log_paths(run_dir, eval_id, 1),
        }
        new["sbatch"] = {**rec["sbatch"], "eval": params}
    new["history"] = history
    new["resubmitted_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    tmp = chain.record_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=2) + "\n")
    os.replace(tmp, chain.record_path)
    return new


def job_tags(record: dict[str, Any]) -> dict[str, str]:
    """The MLflow tags naming a chain's jobs: the current pretrain and eval jobs, and every
    job of every attempt, oldest first (jobs.json's `history`, then the current ones)."""
    history = record.get("history", [])
    pretrain = [h["pretrain"]["job_id"] for h in history] + [record["pretrain"]["job_id"]]
    evals = [(h.get("eval") or {}).get("job_id") for h in history]
    current_eval = (record.get("eval") or {}).get("job_id")
    return {
        "slurm.pretrain_job_id": pretrain[-1],
        "slurm.eval_job_id": current_eval or "",
        "slurm.pretrain_job_ids": ",".join(pretrain),
        "slurm.eval_job_ids": ",".join(e for e in [*evals, current_eval] if e),
        "slurm.resubmissions": str(len(history)),
    }


def tag_run(record: dict[str, Any]) -> str | None:
    """Names the chain's jobs on its MLflow run (`job_tags`), through the run's own tracker
    (the journal keeps them if the server is down); returns a warning, or None."""
    run_dir = record["run_dir"]
    rd = RunDir(run_dir)
    if not (rd.mlflow_run_id.is_file() or rd.tracking.is_dir()):
        return None  # tracking.enabled=false (a run the server never saw has a journal)
    from vice.pipeline import load_config
    from vice.tracking import build_tracker

    tracker_log = logging.getLogger("vice.tracking")
    level = tracker_log.level
    tracker_log.setLevel(logging.ERROR)  # the warning returned says it, in one line
    try:
        tracking = load_config(run_dir).tracking
        tracker = build_tracker(tracking, run_dir)
        tracker.set_tags(job_tags(record))
        sent = tracker.close()
    except Exception as err:  # the jobs are queued; a tag is not worth failing for
        return f"{run_dir}: MLflow tags not updated ({type(err).__name__}: {err})"
    finally:
        tracker_log.setLevel(level)
    if not sent:
        return (
            f"{run_dir}: MLflow ({tracking.uri}) does not answer; the new job ids wait in the "
            f"run's journal, sent when it answers (or by python tools/mlflow_sync.py {run_dir})"
        )
    return None


def _submit(params: dict[str, Any], task: Any, run_dir: str) -> str:
    import submitit

    from vice.pipeline import load_config

    max_requeues = load_config(run_dir).trainer.max_requeues
    with submitit.helpers.clean_env():
        job = make_executor(run_dir, params, max_requeues).submit(task)
    return str(job.job_id)

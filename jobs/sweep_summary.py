"""A sweep's summary on its MLflow parent run, refreshed by every eval job that finishes.

The evals of a sweep finish in any order, on any node. Each one, after writing its
`eval/metrics.json`, takes a lock in the sweep directory, reads every point's metrics and
rewrites the summary: `sweep_summary.md` and `.csv` (one row per point) as artifacts of the
parent run, the best point's metrics as `best.<metric>` metrics, and tags naming it. The last
eval to finish leaves the complete table; an earlier one leaves the table so far (pending
points are listed as such).

The best point is the one with the highest `clustering.<C>.miou` at C = the number of classes
(unsupervised segmentation's headline number), else the highest `linear.miou`.

Everything goes through the parent run's journal in the sweep directory
(`vice.tracking.SweepTracker`): with the tracking server down, the summary and the parent's
status wait there and are sent when it answers (or by `tools/mlflow_sync.py`).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
from pathlib import Path
from typing import Any

from vice.run_dir import RunDir, SweepDir
from vice.tracking import read_run_id, sweep_config, sweep_tracker
from vice.tracking_journal import Journal


def primary_metric(metrics: dict[str, Any]) -> str | None:
    key = f"clustering.{metrics.get('num_classes')}.miou"
    if key in metrics:
        return key
    return "linear.miou" if "linear.miou" in metrics else None


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per point of the sweep (run dirs with a jobs.json), by job number."""
    rows = []
    points = (RunDir(d) for d in sorted(Path(sweep_dir).iterdir()) if d.is_dir())
    for point in (p for p in points if p.jobs.is_file()):
        record = json.loads(point.jobs.read_text())
        metrics = json.loads(point.metrics.read_text()) if point.metrics.is_file() else {}
        rows.append(
            {
                "num": record.get("job_num"),
                "overrides": record.get("overrides", ""),
                # The run dir's id first: the server may have been down at submission.
                "run_id": read_run_id(point.path) or record.get("mlflow_run_id") or "",
                "run_dir": record["run_dir"],
                "metrics": {
                    k: v for k, v in metrics.items() if isinstance(v, int | float) and "." in k
                },
                "num_classes": metrics.get("num_classes"),
            }
        )
    return sorted(rows, key=lambda r: (r["num"] is None, r["num"]))


def best_row(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], str] | None:
    scored = []
    for row in rows:
        key = primary_metric({**row["metrics"], "num_classes": row["num_classes"]})
        if key is not None:
            scored.append((row["metrics"][key], key, row))
    if not scored:
        return None
    _, key, row = max(scored, key=lambda t: t[0])
    return row, key


def render(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """(markdown, csv) tables: one row per point, the metrics as columns (percent in md)."""
    keys = sorted({k for r in rows for k in r["metrics"] if k.endswith((".miou", ".acc"))})
    header = ["#", "overrides", "mlflow run", *keys]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["num", "overrides", "run_id", "run_dir", *keys])
    for r in rows:
        cells = [f"{100 * r['metrics'][k]:.2f}" if k in r["metrics"] else "pending" for k in keys]
        md.append(f"| {r['num']} | {r['overrides']} | {r['run_id']} | " + " | ".join(cells) + " |")
        writer.writerow(
            [r["num"], r["overrides"], r["run_id"], r["run_dir"],
             *[r["metrics"].get(k, "") for k in keys]]
        )  # fmt: skip
    return "\n".join(md) + "\n", out.getvalue()


def update_parent_summary(run_dir: str | Path, tracking_uri: str) -> dict[str, Any] | None:
    """Refreshes the summary of the sweep `run_dir` belongs to; None when it is no sweep."""
    sweep = RunDir(run_dir).sweep
    tracker = sweep_tracker(sweep.path, tracking_uri)
    if tracker is None:
        return None
    with open(sweep.summary_lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = collect(sweep.path)
        md, table = render(rows)
        for suffix, text in ((".md", md), (".csv", table)):
            path = sweep.summary(suffix)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            tracker.log_artifact(path)
        best = best_row(rows)
        done = sum(1 for r in rows if r["metrics"])
        tags = {"sweep.points": str(len(rows)), "sweep.evaluated": str(done)}
        if best is not None:
            row, key = best
            best_metrics = {f"best.{name}": float(v) for name, v in row["metrics"].items()}
            tracker.log_metrics(best_metrics, step=done)
            tags.update(
                {"best.metric": key, "best.run_id": row["run_id"], "best.run_dir": row["run_dir"],
                 "best.overrides": row["overrides"]}
            )  # fmt: skip
        tracker.set_tags(tags)
    tracker.close()  # outside the lock: the other evals need not wait on the server
    return {"rows": rows, "best": best[0]["num"] if best else None, "markdown": md}


# MLflow's terminal run statuses, the worst first: a sweep is as bad as its worst point.
_WORST_FIRST = ("FAILED", "KILLED", "FINISHED")


def point_statuses(sweep_dir: str | Path) -> list[str]:
    """Each tracked point's run status as its journal logged it (RUNNING until one ended it):
    the truth also while the server is down, since every status goes through the journal."""
    statuses = []
    for row in collect(sweep_dir):
        journal = Journal(row["run_dir"])
        if journal.directory.is_dir():  # else tracking.enabled=false for this point
            statuses.append(journal.record()["status"] or "RUNNING")
    return statuses


def close_parent_if_done(sweep_dir: str | Path, tracking_uri: str) -> str | None:
    """Ends the sweep's parent run once no point's run is RUNNING, with the worst point's
    status; returns that status, or None while a point still runs (or for no sweep). Every
    process that ends a point's run calls this: the last one closes the parent.

    Args:
        sweep_dir: The sweep directory (its parent run's journal, its points' run dirs).
        tracking_uri: The MLflow tracking URI of a sweep whose parent run predates its journal.
    """
    sweep = SweepDir(sweep_dir)
    if sweep_config(sweep.path) is None and not sweep.parent_run_id.is_file():
        return None  # no sweep with a parent run
    statuses = point_statuses(sweep.path)
    ended = [s for s in statuses if s in _WORST_FIRST]
    if not statuses or len(ended) < len(statuses):
        return None
    tracker = sweep_tracker(sweep.path, tracking_uri)
    if tracker is None:
        return None
    status = min(ended, key=_WORST_FIRST.index)
    if tracker.journal.record()["status"] == status:
        tracker.close()  # ended already (by another point's job): only send what waits
    else:
        tracker.finish(status)
    return status

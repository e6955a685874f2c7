"""The run directory's record of what was sent to the tracking server, and what is pending.

Two JSON-lines files under `<run_dir>/tracking/`:

- `pending.jsonl`: tracking operations (params, tags, metrics, artifacts, status) not yet
  accepted by the server, in order. Appended before anything is sent, emptied from the front
  as the server accepts them, so an outage or a crash loses nothing: the next process (or
  `tools/mlflow_sync.py`) replays what is left.
- `metrics.jsonl`: every metric value ever logged for the run (key, step, value, time),
  append-only: what the server's history is checked against.
- `record.json`: the run's params, tags, artifacts and status as the operations leave them
  (params keep their first value, as MLflow does; tags and the status their last), and the
  sweep whose parent run it is nested under: what `tools/mlflow_sync.py` checks the server's
  run against, and the status it restores.

A sweep directory holds the same journal for the sweep's parent run (`vice.tracking.SweepTracker`).

Several processes may share a run's journal (the launcher, rank 0 of training, the
evaluation, a sync tool): appends and removals hold a short file lock, and sending holds a
second one, so an operation is sent by one process only, and removed by id once accepted.
Training never waits for the server: only the sender holds the sending lock over the network.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vice.run_dir import RunDir

PENDING_FILE = "pending.jsonl"
LEDGER_FILE = "metrics.jsonl"
RECORD_FILE = "record.json"
LOCK_FILE = "journal.lock"
SEND_LOCK_FILE = "send.lock"

# {"op": "metrics" | "params" | "tags" | "artifact" | "model" | "inputs" | "parent" | "reopen"
#  | "terminate"}
Op = dict[str, Any]


class Journal:
    def __init__(self, run_dir: str | Path) -> None:
        self.directory = RunDir(run_dir).tracking
        self.pending_path = self.directory / PENDING_FILE
        self.ledger_path = self.directory / LEDGER_FILE
        self.record_path = self.directory / RECORD_FILE
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()

    @contextmanager
    def _flocked(self, name: str, lock: threading.Lock) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with lock, open(self.directory / name, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def locked(self) -> Any:
        """This thread and process alone touch the journal files (held briefly)."""
        return self._flocked(LOCK_FILE, self._lock)

    def sending(self) -> Any:
        """This thread and process alone send the pending operations (held over the network)."""
        return self._flocked(SEND_LOCK_FILE, self._send_lock)

    def append(self, op: Op) -> None:
        """Queues `op` (it gets an "id"); metric values also go into the ledger."""
        op = {**op, "id": uuid.uuid4().hex}
        with self.locked():
            line = json.dumps(op, allow_nan=True) + "\n"
            _append(self.pending_path, line)
            if op["op"] == "metrics":
                rows = "".join(
                    json.dumps({"key": k, "step": s, "value": v, "time": t}, allow_nan=True) + "\n"
                    for k, v, t, s in op["items"]
                )
                _append(self.ledger_path, rows)
            else:
                self._update_record(op)

    def _update_record(self, op: Op) -> None:
        """Folds one operation into record.json (the journal lock is held)."""
        record = self.record()
        kind = op["op"]
        if kind == "params":
            for key, value in op["items"].items():
                record["params"].setdefault(key, value)
        elif kind == "tags":
            record["tags"].update(op["items"])
        elif kind == "artifact":
            where = "/".join(p for p in (op["artifact_path"], Path(op["path"]).name) if p)
            if where not in record["artifacts"]:
                record["artifacts"].append(where)
        elif kind == "model":
            if op["name"] not in record["models"]:
                record["models"].append(op["name"])
        elif kind == "parent":
            record["parent_sweep"] = op["sweep_dir"]
        elif kind == "reopen":
            record["status"] = "RUNNING"
        elif kind == "terminate":
            record["status"] = op["status"]
        else:
            return
        tmp = self.record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
        os.replace(tmp, self.record_path)

    def record(self) -> dict[str, Any]:
        """{"params", "tags", "artifacts", "models", "status", "parent_sweep"} as logged (status
        None: never set; parent_sweep: the sweep dir of `set_parent_sweep`, else None)."""
        empty: dict[str, Any] = {
            "params": {}, "tags": {}, "artifacts": [], "models": [], "status": None,
            "parent_sweep": None,
        }  # fmt: skip
        if not self.record_path.is_file():
            return empty
        try:
            return {**empty, **json.loads(self.record_path.read_text())}
        except json.JSONDecodeError:
            return empty

    def pending(self) -> list[Op]:
        """The queued operations, oldest first (a torn last line, from a crash, is dropped)."""
        with self.locked():
            return self._read_pending()

    def _read_pending(self) -> list[Op]:
        if not self.pending_path.is_file():
            return []
        ops = []
        for line in self.pending_path.read_text().splitlines():
            try:
                ops.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return ops

    def drop(self, ids: set[str]) -> None:
        """Removes the operations with these ids (the server has them)."""
        if not ids:
            return
        with self.locked():
            rest = [op for op in self._read_pending() if op.get("id") not in ids]
            tmp = self.pending_path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                f.writelines(json.dumps(op, allow_nan=True) + "\n" for op in rest)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.pending_path)

    def pending_metric_values(self) -> int:
        return sum(len(op["items"]) for op in self.pending() if op["op"] == "metrics")

    def ledger(self) -> list[dict[str, Any]]:
        """Every metric value logged for the run, oldest first."""
        if not self.ledger_path.is_file():
            return []
        rows = []
        for line in self.ledger_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def compare_history(
    ledger: list[dict[str, Any]], history: dict[str, list[tuple[int, float]]]
) -> list[str]:
    """What is wrong with the server's metric history, given the run's ledger.

    `history`: key -> [(step, value), ...] as the server holds it. Every (key, step) of the
    ledger must be there exactly once, with a value the ledger holds for it (a step logged
    again after a resume may hold the first or the second computation). Returns problems;
    empty means the server has everything, without duplicates.
    """
    expected: dict[tuple[str, int], list[float]] = {}
    for row in ledger:
        expected.setdefault((row["key"], int(row["step"])), []).append(float(row["value"]))
    got: dict[tuple[str, int], list[float]] = {}
    for key, points in history.items():
        for step, value in points:
            got.setdefault((key, int(step)), []).append(float(value))
    problems = []
    for (key, step), values in sorted(expected.items()):
        held = got.get((key, step))
        if not held:
            problems.append(f"missing: {key} at step {step}")
        elif len(held) > 1:
            problems.append(f"duplicate: {key} at step {step} has {len(held)} values {held}")
        elif not any(_same(held[0], v) for v in values):
            problems.append(f"different: {key} at step {step} is {held[0]}, logged {values}")
    return problems


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)  # NaN equals NaN here

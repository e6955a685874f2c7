"""Send what runs could not send to MLflow, and prove that MLflow has every value.

    python tools/mlflow_sync.py multirun/2026-11-22            # send pending, then check
    python tools/mlflow_sync.py outputs/2026-11-22/10-00-00 --check-only

Each run directory keeps a journal (`<run_dir>/tracking/`): operations MLflow has not
accepted yet (an outage, a crash) and every metric value ever logged. This tool sends the
pending operations in order (metric steps MLflow already holds are skipped, so nothing is
duplicated), then compares MLflow's metric history with the journal: every logged (key, step)
must be there exactly once. Exit code 0 only when every run checks out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_dirs(paths: list[str]) -> list[Path]:
    """Run directories (holding `mlflow_run_id` or a journal) at or under `paths`."""
    from vice.run_dir import RunDir, SweepDir

    found = set()
    for path in map(Path, paths):
        run, snapshot = RunDir(path), SweepDir(path).code.name  # a snapshot holds no runs
        for marker in (run.mlflow_run_id, run.tracking):
            if marker.exists():
                found.add(path.resolve())
            for hit in path.rglob(marker.name):
                if snapshot not in hit.relative_to(path).parts[:-1]:
                    found.add(hit.parent.resolve())
    return sorted(found)


def sync(run_dir: Path, send: bool) -> list[str]:
    """Sends (if `send`) and checks one run; returns its problems."""
    from mlflow.tracking import MlflowClient

    from vice.pipeline import load_config
    from vice.tracking import MlflowTracker, read_run_id
    from vice.tracking_journal import Journal, compare_history

    cfg = load_config(run_dir)
    journal = Journal(run_dir)
    if send:
        tracker = MlflowTracker(cfg.tracking, run_dir, background=False)
        tracker.flush()
        if tracker.journal.pending():
            return [f"MLflow ({cfg.tracking.uri}) did not accept the pending operations"]
    run_id = read_run_id(run_dir)
    if run_id is None:
        return ["no MLflow run yet (the server never answered); run without --check-only"]
    problems = [f"still pending: {len(journal.pending())} operations"] if journal.pending() else []
    ledger = journal.ledger()
    client = MlflowClient(cfg.tracking.uri)
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in sorted({row["key"] for row in ledger})
    }
    return problems + compare_history(ledger, history)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="run directories, or folders holding them")
    parser.add_argument("--check-only", action="store_true", help="send nothing, only check")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"error: no such directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    dirs = run_dirs(args.paths)
    if not dirs:
        print(f"error: no run directories under {', '.join(args.paths)}", file=sys.stderr)
        return 2
    from vice.tracking_journal import Journal

    failed = 0
    for run_dir in dirs:
        values = len(Journal(run_dir).ledger())
        problems = sync(run_dir, send=not args.check_only)
        if problems:
            failed += 1
            print(f"FAIL {run_dir}: {len(problems)} problems")
            for problem in problems[:20]:
                print(f"  {problem}")
        else:
            print(f"ok   {run_dir}: all {values} logged metric values are in MLflow, once each")
    print(f"{len(dirs) - failed}/{len(dirs)} runs complete in MLflow")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

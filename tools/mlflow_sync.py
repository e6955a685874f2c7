"""Send what runs could not send to MLflow, and prove that MLflow has every value.

    python tools/mlflow_sync.py multirun/2026-11-22            # send pending, then check
    python tools/mlflow_sync.py outputs/2026-11-22/10-00-00 --check-only

Each run directory keeps a journal (`<run_dir>/tracking/`): operations MLflow has not
accepted yet (an outage, a crash), every metric value ever logged, and the run's params,
tags, artifacts, models and status as logged. A sweep directory keeps one for the sweep's
parent run; it is synced first (created if the server was down all along), then its points,
whose runs must be nested under it. This tool sends the pending operations in
order (metric steps MLflow already holds are skipped, so nothing is duplicated), restores
the run's logged status (FINISHED, FAILED, KILLED; it never reopens a run), then compares
MLflow's run with the journal: every logged (key, step) exactly once, every param, tag,
artifact and model there with its value, the same status. Exit code 0 only when every run
checks out; 3, in one line, when a tracking server does not answer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_dirs(paths: list[str]) -> list[Path]:
    """Sweep directories (with a journaled parent run), then run directories (holding
    `mlflow_run_id` or a journal), at or under `paths`."""
    from vice.run_dir import RunDir, SweepDir

    found = set()
    for path in map(Path, paths):
        run, sweep = RunDir(path), SweepDir(path)
        snapshot = sweep.code.name  # a snapshot holds no runs
        for marker in (run.mlflow_run_id, run.tracking):
            if marker.exists():
                found.add(path.resolve())
            for hit in path.rglob(marker.name):
                if snapshot not in hit.relative_to(path).parts[:-1]:
                    found.add(hit.parent.resolve())
    return sorted(found, key=lambda d: (not is_sweep(d), d))


def is_sweep(path: Path) -> bool:
    from vice.tracking import sweep_config

    return sweep_config(path) is not None


def tracking_of(path: Path) -> Any:
    """The `TrackingConfig` of a run directory (its config.yaml) or a sweep's parent run."""
    from vice.pipeline import load_config
    from vice.tracking import sweep_config

    return sweep_config(path) or load_config(path).tracking


def sync(run_dir: Path, send: bool) -> list[str]:
    """Sends (if `send`) and checks one run, or a sweep's parent run; returns its problems."""
    from mlflow.tracking import MlflowClient

    from vice.tracking import MlflowTracker, SweepTracker
    from vice.tracking_journal import Journal, compare_history

    cfg = tracking_of(run_dir)
    kind = SweepTracker if is_sweep(run_dir) else MlflowTracker
    journal = Journal(run_dir)
    if send:
        # reopen=False: sending what others logged must not turn a FINISHED run RUNNING.
        tracker = kind(cfg, run_dir, background=False, reopen=False)
        tracker.flush()
        if tracker.journal.pending():
            return [f"MLflow ({cfg.uri}) did not accept the pending operations"]
    run_id = kind.read_id(run_dir)
    if run_id is None:
        return ["no MLflow run yet (the server never answered); run without --check-only"]
    problems = [f"still pending: {len(journal.pending())} operations"] if journal.pending() else []
    client = MlflowClient(cfg.uri)
    record = journal.record()
    run = client.get_run(run_id)
    if send and record["status"] and run.info.status != record["status"]:
        restore_status(client, run_id, record["status"])
        run = client.get_run(run_id)
    ledger = journal.ledger()
    history = {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
        for key in sorted({row["key"] for row in ledger})
    }
    return problems + compare_run(client, run, record) + compare_history(ledger, history)


def restore_status(client: Any, run_id: str, status: str) -> None:
    """Sets the run's status to the one its journal logged last."""
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status)


def compare_run(client: Any, run: Any, record: dict[str, Any]) -> list[str]:
    """What the server's run lacks or holds otherwise than the journal's record logged."""
    problems = []
    for kind, held in (("param", run.data.params), ("tag", run.data.tags)):
        for key, value in sorted(record[f"{kind}s"].items()):
            if key not in held:
                problems.append(f"missing {kind}: {key}")
            elif held[key] != value:
                problems.append(f"different {kind}: {key} is {held[key]!r}, logged {value!r}")
    if record["status"] and run.info.status != record["status"]:
        problems.append(f"status: {run.info.status}, logged {record['status']}")
    if record["parent_sweep"]:
        from vice.tracking import PARENT_RUN_TAG, SweepTracker

        parent = SweepTracker.read_id(record["parent_sweep"])
        if run.data.tags.get(PARENT_RUN_TAG) != parent:
            held = run.data.tags.get(PARENT_RUN_TAG)
            problems.append(f"parent: {held}, not the sweep's parent run {parent}")
    folders: dict[str, set[str]] = {}
    for path in record["artifacts"]:
        folder = path.rpartition("/")[0]
        if folder not in folders:
            listed = client.list_artifacts(run.info.run_id, folder or None)
            folders[folder] = {a.path for a in listed}
        if path not in folders[folder]:
            problems.append(f"missing artifact: {path}")
    outputs = run.outputs.model_outputs if run.outputs else []
    models = {client.get_logged_model(o.model_id).name for o in outputs}
    problems += [f"missing model: {name}" for name in record["models"] if name not in models]
    return problems


def unreachable(uri: str) -> str | None:
    """Why the tracking server at `uri` does not answer (one line), or None when it does."""
    from mlflow.tracking import MlflowClient

    from vice.tracking import quick_http_failures

    quick_http_failures()  # one quick attempt, no retry warnings
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as err:
        return _first_line(err)
    return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


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

    try:
        uris = sorted({tracking_of(d).uri for d in dirs})
    except (OSError, ValueError) as err:  # a folder with a journal but no config.yaml
        print(f"error: {err}", file=sys.stderr)
        return 2
    for uri in uris:
        why = unreachable(uri)
        if why is not None:
            print(
                f"error: MLflow at {uri} does not answer ({why}); nothing was sent or checked: "
                "start it (python tools/mlflow_server.py start ...) and run this again",
                file=sys.stderr,
            )
            return 3
    failed = 0
    for run_dir in dirs:
        values = len(Journal(run_dir).ledger())
        try:
            problems = sync(run_dir, send=not args.check_only)
        except Exception as err:  # the server went away meanwhile, or refused a request
            problems = [f"MLflow error: {_first_line(err)}"]
        if problems:
            failed += 1
            print(f"FAIL {run_dir}: {len(problems)} problems")
            for problem in problems[:20]:
                print(f"  {problem}")
        else:
            what = " (the sweep's parent run)" if is_sweep(run_dir) else ""
            print(
                f"ok   {run_dir}{what}: all {values} logged metric values are in MLflow, once "
                "each; params, tags, artifacts, models and status as logged"
            )
    print(f"{len(dirs) - failed}/{len(dirs)} runs complete in MLflow")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

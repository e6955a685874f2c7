"""Screenshots of the MLflow UI with headless Chromium: an experiment's run list and the
compare view of a sweep's runs, as a user opening them in a browser sees them.

    python tools/mlflow_screenshot.py http://127.0.0.1:5000 --experiment vice --out shots/
    python tools/mlflow_screenshot.py http://127.0.0.1:5000 --sweep multirun/2026-12-04/10-00-00

--sweep compares the sweep's points (their `mlflow_run_id` files) in the experiment they are
in. Needs Chromium (Debian: `apt-get install chromium`) and a running `mlflow server`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

CHROMIUMS = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in CHROMIUMS:
        if path := shutil.which(name):
            return path
    raise SystemExit(
        "no Chromium found (looked for chromium, chromium-browser, google-chrome); "
        "install it: apt-get install chromium"
    )


def run_list_url(server: str, experiment_id: str) -> str:
    # the "Training runs" tab (MLflow 3 opens an experiment on its GenAI overview)
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs"


def compare_url(server: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare-runs page (parallel coordinates, scatter and contour plots of the
    params and metrics of `run_ids`)."""
    query = urllib.parse.urlencode(
        {"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])}
    )
    return f"{server.rstrip('/')}/#/compare-runs?{query}"


def screenshot(url: str, out: Path, size: str = "1600,1100", wait_ms: int = 20000) -> Path:
    """Renders `url` headless (the page's scripts get `wait_ms` of virtual time) into `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--window-size={size}", f"--virtual-time-budget={wait_ms}",
        f"--screenshot={out}", url,
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 or not out.is_file():
        raise SystemExit(f"chromium could not render {url}: {proc.stderr.strip()[-500:]}")
    return out


def sweep_runs(sweep_dir: Path) -> list[str]:
    ids = [p.read_text().strip() for p in sorted(sweep_dir.glob("*/mlflow_run_id"))]
    if not ids:
        raise SystemExit(f"{sweep_dir}: no point has an mlflow_run_id; pass a sweep directory")
    return ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("server", help="the MLflow server's address, e.g. http://127.0.0.1:5000")
    parser.add_argument("--experiment", default="vice", help="experiment name (default vice)")
    parser.add_argument("--sweep", type=Path, help="a sweep directory: compare its points")
    parser.add_argument("--out", type=Path, default=Path("mlflow_screenshots"))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mlflow.tracking import MlflowClient

    from vice.tracking import quick_http_failures

    quick_http_failures()  # a server that is down: say so in seconds, not minutes
    client = MlflowClient(args.server)
    try:
        run_ids = sweep_runs(args.sweep) if args.sweep else []
        if run_ids:
            experiment_id = client.get_run(run_ids[0]).info.experiment_id
        else:
            found = client.get_experiment_by_name(args.experiment)
            if found is None:
                raise SystemExit(f"--experiment {args.experiment}: no such experiment")
            experiment_id = found.experiment_id
    except Exception as err:  # the server down: one line, not the client's traceback
        if isinstance(err, SystemExit):
            raise
        raise SystemExit(f"MLflow at {args.server} does not answer: {type(err).__name__}") from None
    shots = [screenshot(run_list_url(args.server, experiment_id), args.out / "runs.png")]
    if run_ids:
        url = compare_url(args.server, experiment_id, run_ids)
        shots.append(screenshot(url, args.out / "compare.png"))
    for path in shots:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Show the project's SLURM job chains: state, progress, restarts, stops, causes and fixes.

    python tools/status.py                        # every chain under ./multirun
    python tools/status.py multirun/2026-11-22    # ... under these run or sweep dirs
    python tools/status.py --all                  # also every vice job SLURM knows of yours
    python tools/status.py --watch                # follow it (every 10 s) until all ended
    python tools/status.py --watch 30             # ... every 30 s

Per chain: the pretrain and eval jobs' states (a requeued job waiting on SLURM's requeue
delay is said so), step/total, images/s and ETA from rank 0's log, restarts and stops with
their causes, past attempts (tools/resubmit.py), the MLflow run id, the log holding rank 0's
progress, and for a failed job its true last cause and the fix. It reads, with one exception:
the MLflow run of a chain whose jobs ended without ending it (`scancel`, SLURM killed them) is
ended KILLED or FAILED, through the run's journal. The logic is in jobs/status.py.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.status import status_text  # noqa: E402

CLEAR = "\033[H\033[2J"  # cursor home, clear screen: a terminal shows only the newest view


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(
            f"--watch {text}: the poll interval must be a number of seconds > 0 (e.g. --watch 10)"
        )
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="run or sweep dirs (default: ./multirun)")
    parser.add_argument("--all", action="store_true", help="every vice job of yours in SLURM")
    parser.add_argument(
        "--watch", nargs="?", const=10.0, type=_seconds, metavar="SECONDS",
        help="print again every SECONDS (default 10) until every chain ended",
    )  # fmt: skip
    args = parser.parse_args(argv)
    paths = args.paths or ([] if args.all and not Path("multirun").is_dir() else ["multirun"])
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        print(
            f"error: no such run or sweep directory: {', '.join(missing)} "
            "(pass a run or sweep dir, or --all for your jobs in SLURM)",
            file=sys.stderr,
        )
        return 2
    tty = sys.stdout.isatty()
    while True:
        text, ended = status_text(paths, args.all)
        print((CLEAR if tty and args.watch else "") + text, flush=True)
        if args.watch is None or ended:
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 130
        if not tty:
            print()


if __name__ == "__main__":
    sys.exit(main())

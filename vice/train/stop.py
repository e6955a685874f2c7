"""Stop requests from signals, acted on at step boundaries.

A scheduler asks a job to stop with a signal (preemption: SIGTERM; the time limit: the job's
own `--signal`, SIGUSR2 by default; a user: Ctrl-C). Doing work inside a signal handler is
what makes other launchers hang (a collective started in a handler on one rank only), so the
handler here only records the request. The trainer asks `StopSignals.requested()` at every
step boundary and all ranks all-reduce the answer, so they stop at the same step together.

A second SIGINT means "now": it raises KeyboardInterrupt as Python normally would.

Stop events are kept as JSON lines in `<run_dir>/stops.jsonl`; a supervisor reads them to tell
a clean stop (checkpoint saved) from a failure.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from vice.run_dir import RunDir
from vice.signals import STOP_SIGNALS, ignore_stop_signals

__all__ = ["STOP_SIGNALS", "StopEvent", "StopRequest", "StopSignals", "ignore_stop_signals"]


@dataclass(frozen=True)
class StopRequest:
    signal: str  # e.g. "SIGTERM"
    time: float  # when it arrived (time.time())


@dataclass(frozen=True)
class StopEvent:
    """A stop that the trainer completed: a checkpoint of `step` was saved, then it exited."""

    signal: str
    step: int
    time: float  # when the checkpoint was saved
    pid: int
    # From the signal's arrival to the saved checkpoint: the rest of the step plus the save;
    # what a save window (SLURM's GraceTime, cluster.signal_delay_s) must hold. None: older
    # records, or a stop whose signal reached another rank only.
    since_signal_s: float | None = None
    save_s: float | None = None  # the stop checkpoint's write alone


class StopSignals:
    """Installs handlers that only record the first stop signal.

    Use as a context manager around training; the previous handlers come back after.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.request: StopRequest | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.request is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        if self.request is None:
            self.request = StopRequest(name, time.time())

    def __call__(self, step: int = 0) -> str | None:
        """The trainer's `should_stop(step)`: the signal's name once one arrived."""
        return self.request.signal if self.request is not None else None

    def __enter__(self) -> StopSignals:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


def record_stop(run_dir: str | Path, event: StopEvent) -> None:
    """Appends `event` to `<run_dir>/stops.jsonl` (one line, flushed to disk)."""
    path = RunDir(run_dir).stops
    with open(path, "a") as f:
        f.write(json.dumps(asdict(event)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_stops(run_dir: str | Path) -> list[StopEvent]:
    """Every recorded stop, oldest first; a torn last line (a crash mid-write) is ignored."""
    path = RunDir(run_dir).stops
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(StopEvent(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return events

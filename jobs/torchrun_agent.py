"""torchrun (`python -m torch.distributed.run`), with one line instead of a traceback when a
stop signal ends it.

On a stop signal (preemption, requeue, time limit, Ctrl-C) torchrun's agent forwards the
signal to the workers, waits for them to save and exit, then raises `SignalException`, which
Python prints as a traceback in every node's `.err` log: where a user looks for real errors.
Here that exception becomes one line and the exit code a shell gives a signal (128 + n);
every other error (a failed worker: ChildFailedError) keeps torchrun's own report.

Usage: the arguments of torchrun (`jobs/torchrun.py` builds them).
"""

from __future__ import annotations

import signal
import socket
import sys


def main() -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun()  # reads sys.argv[1:], as `python -m torch.distributed.run` does
    except SignalException as err:
        name = signal.Signals(err.sigval).name
        print(
            f"torchrun on {socket.gethostname()}: stopped by {name}; its workers were asked to "
            "save and exit (stops.jsonl records each completed stop)",
            file=sys.stderr,
            flush=True,
        )
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())

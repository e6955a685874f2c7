"""The signals that ask a job to stop, shared by the trainer and its helper processes.

A scheduler asks a job to stop with a signal (preemption: SIGTERM; the time limit: the job's
own `--signal`, SIGUSR2 by default; a user: Ctrl-C). The trainer handles them
(`vice.train.stop`); every other process of the job ignores them.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


def ignore_stop_signals() -> None:
    """For helper processes (data loader workers): the scheduler signals every process of the
    job, and a worker killed by SIGUSR2's default action would crash the loader before the
    trainer can save. The trainer's process shuts its workers down itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)

"""The torchrun command line of pretraining, for both paths.

Locally torchrun runs standalone (one node, its own rendezvous). On SLURM every node of the
job runs it with a c10d rendezvous on the job's first node, so torchrun (not srun) starts and
supervises the training processes, and forwards stop signals to them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

PRETRAIN_SCRIPT = Path(__file__).resolve().parent / "pretrain.py"
AGENT_SCRIPT = Path(__file__).resolve().parent / "torchrun_agent.py"  # torchrun, quiet on stops
# What torchrun forwards to the training processes: SLURM's SIGTERM (preemption, requeue),
# submitit's SIGUSR2 (time limit near), Ctrl-C, and hang-ups.
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2"
# How long torchrun's agent waits for its workers to save and exit after forwarding a stop
# signal, before it SIGKILLs them (torchrun's own default, 30 s, would cut a longer save).
# Locally nothing else bounds a Ctrl-C's save; a second Ctrl-C ends the wait.
LOCAL_SHUTDOWN_TIMEOUT_S = 600


@dataclass(frozen=True)
class Rendezvous:
    """A c10d rendezvous joining the nodes of one job."""

    nnodes: int
    endpoint: str  # host:port of node 0
    rdzv_id: str  # the same for every node of the job and after a requeue: the job id
    is_host: bool  # whether this node hosts the rendezvous store (node 0)


def torchrun_command(
    run_dir: str | Path,
    nproc_per_node: int,
    rendezvous: Rendezvous | None = None,
    script: str | Path = PRETRAIN_SCRIPT,
    python: str = sys.executable,
    shutdown_timeout_s: int = LOCAL_SHUTDOWN_TIMEOUT_S,
) -> list[str]:
    """`python <jobs>/torchrun_agent.py ... <script> <run_dir>` (torchrun's arguments).

    Args:
        run_dir: The run directory; the training processes read their config from it.
        nproc_per_node: Training processes on this node.
        rendezvous: None: standalone on this machine (`--nnodes=1`).
        script: The training entry point (a SLURM job names its code snapshot's copy).
        python: The interpreter of the training processes.
        shutdown_timeout_s: torchrun's `--shutdown-timeout`: the save window torchrun
            itself allows after a stop signal (a SLURM job passes its configured one).
    """
    if rendezvous is None:
        nodes = ["--standalone", "--nnodes=1"]
        rdzv = []
    else:
        nodes = [f"--nnodes={rendezvous.nnodes}"]
        rdzv = [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rendezvous.endpoint}",
            f"--rdzv-id={rendezvous.rdzv_id}",
            # Said explicitly, because guessing the host from host names fails where several
            # nodes share a host name or resolve to one address.
            f"--rdzv-conf=is_host={int(rendezvous.is_host)}",
        ]
    # torchrun through jobs/torchrun_agent.py (next to `script`: the snapshot's copy on
    # SLURM), which ends a stop-signal shutdown with one line instead of a traceback.
    return [
        python,
        str(Path(script).parent / AGENT_SCRIPT.name),
        *nodes,
        f"--nproc-per-node={nproc_per_node}",
        *rdzv,
        f"--signals-to-handle={TORCHRUN_SIGNALS}",
        f"--shutdown-timeout={shutdown_timeout_s}",
        str(script),
        str(run_dir),
    ]


def torchrun_env(nproc_per_node: int, cpus: int) -> dict[str, str]:
    """This process's environment for torchrun: the node's CPUs shared between the training
    processes (unless OMP_NUM_THREADS is set), and unbuffered output so logs show progress."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // nproc_per_node)))
    env["PYTHONUNBUFFERED"] = "1"
    return env

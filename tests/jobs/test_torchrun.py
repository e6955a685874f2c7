"""The one torchrun command builder: standalone (local) and c10d rendezvous (SLURM)."""

from jobs.torchrun import (
    AGENT_SCRIPT,
    PRETRAIN_SCRIPT,
    Rendezvous,
    torchrun_command,
    torchrun_env,
)

SIGNALS = "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2"
LOCAL_WINDOW = "--shutdown-timeout=600"


def test_standalone_command():
    cmd = torchrun_command("/r", 2, python="py")
    assert cmd == [
        "py", str(AGENT_SCRIPT), "--standalone", "--nnodes=1",
        "--nproc-per-node=2", SIGNALS, LOCAL_WINDOW, str(PRETRAIN_SCRIPT), "/r",
    ]  # fmt: skip
    assert PRETRAIN_SCRIPT.name == "pretrain.py" and PRETRAIN_SCRIPT.is_file()
    assert AGENT_SCRIPT.parent == PRETRAIN_SCRIPT.parent and AGENT_SCRIPT.is_file()


def test_rendezvous_command():
    rdzv = Rendezvous(nnodes=2, endpoint="n1:20019", rdzv_id="19", is_host=False)
    cmd = torchrun_command("/r", 4, rdzv, script="/s/jobs/pretrain.py", python="py")
    assert cmd == [
        "py", "/s/jobs/torchrun_agent.py", "--nnodes=2", "--nproc-per-node=4",
        "--rdzv-backend=c10d", "--rdzv-endpoint=n1:20019", "--rdzv-id=19",
        "--rdzv-conf=is_host=0", SIGNALS, LOCAL_WINDOW, "/s/jobs/pretrain.py", "/r",
    ]  # fmt: skip
    window = torchrun_command("/r", 4, rdzv, shutdown_timeout_s=90)
    assert "--shutdown-timeout=90" in window
    host = torchrun_command("/r", 4, Rendezvous(2, "n1:20019", "19", True))
    assert "--rdzv-conf=is_host=1" in host and "--standalone" not in host


def test_env_shares_the_cpus_unless_told(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = torchrun_env(nproc_per_node=4, cpus=16)
    assert env["OMP_NUM_THREADS"] == "4" and env["PYTHONUNBUFFERED"] == "1"
    assert torchrun_env(8, 2)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert torchrun_env(4, 16)["OMP_NUM_THREADS"] == "7"


WORKER = """
import os, signal, sys, time
stop = []
signal.signal(signal.SIGUSR2, lambda *a: stop.append(1))
print("ready", flush=True)
while not stop:
    time.sleep(0.05)
time.sleep(SAVE_S)  # the stop checkpoint's write
print(f"rank {os.environ['RANK']}: stopped, saved", file=sys.stderr, flush=True)
"""


def _stop_torchrun(tmp_path, save_s: float, shutdown_timeout_s: int) -> tuple[int, str]:
    """torchrun over 2 workers that take `save_s` to save after SIGUSR2: exit code, stderr."""
    import signal
    import subprocess
    import sys
    import threading

    script = tmp_path / "worker.py"
    script.write_text(WORKER.replace("SAVE_S", str(save_s)))
    cmd = torchrun_command(
        tmp_path, 2, python=sys.executable, shutdown_timeout_s=shutdown_timeout_s
    )
    cmd[cmd.index(str(PRETRAIN_SCRIPT))] = str(script)
    proc = subprocess.Popen(
        cmd[:-1], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**torchrun_env(2, 2), "LOGLEVEL": "WARNING"},
    )  # fmt: skip
    errors: list[str] = []  # read all along: a full stderr pipe would block torchrun
    reader = threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        ready = 0
        while ready < 2:  # both workers installed their handler
            line = proc.stdout.readline()
            assert line, "".join(errors)
            # count, not test: the workers run unbuffered (python -u), so print's "ready" and
            # its newline are two writes, and two workers can interleave into "readyready"
            ready += line.count("ready")
        proc.send_signal(signal.SIGUSR2)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        proc.kill()
    err = "".join(errors)
    return proc.returncode, err


def test_torchrun_waits_for_a_save_as_long_as_its_shutdown_timeout(tmp_path):
    # torchrun's default (30 s) would SIGKILL a longer save: the window is the caller's
    _, err = _stop_torchrun(tmp_path, save_s=4, shutdown_timeout_s=1)
    assert "stopped, saved" not in err  # killed mid-save
    _, err = _stop_torchrun(tmp_path, save_s=4, shutdown_timeout_s=30)
    assert "rank 0: stopped, saved" in err and "rank 1: stopped, saved" in err


def test_a_stop_signal_ends_torchrun_with_one_line_not_a_traceback(tmp_path):
    import signal

    code, err = _stop_torchrun(tmp_path, save_s=0, shutdown_timeout_s=30)
    assert code == 128 + signal.SIGUSR2, err
    assert "Traceback" not in err and "SignalException" not in err, err
    assert "rank 0: stopped, saved" in err and "rank 1: stopped, saved" in err
    assert [x for x in err.splitlines() if x.startswith("torchrun on ")] == [
        f"torchrun on {__import__('socket').gethostname()}: stopped by SIGUSR2; its workers "
        "were asked to save and exit (stops.jsonl records each completed stop)"
    ]

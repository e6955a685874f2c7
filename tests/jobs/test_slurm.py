"""What runs inside the SLURM jobs: rendezvous ports, tasks pickled by reference."""

import pickle
import subprocess
import sys
from pathlib import Path

from jobs import slurm

ROOT = Path(__file__).resolve().parents[2]


def test_rdzv_port():
    ports = {slurm.rdzv_port(i) for i in range(1000, 1100)}
    assert len(ports) == 100 and min(ports) >= 20000 and max(ports) < 32768
    assert slurm.rdzv_port("123") == slurm.rdzv_port(123) == slurm.rdzv_port("123_4") == 20123
    assert slurm.rdzv_port(12_000 * 7 + 5) == 20005  # wraps within the span


def test_tasks_pickle_by_reference_and_checkpoint():
    task = slurm.PretrainTask("/r", "/s", 2, 1)
    assert b"jobs.slurm" in pickle.dumps(task)
    resubmission = task.checkpoint()
    assert resubmission.function is task and resubmission.args == ()
    assert slurm.EvalTask("/r").checkpoint().function.run_dir == "/r"


def test_jobs_do_not_import_the_submitting_side():
    """The jobs and the sweep summary they refresh import neither jobs.submit (no circle
    slurm <-> sweep_summary) nor the preflight checks, only what runs in a job."""
    code = (
        "import sys, jobs.slurm, jobs.sweep_summary; "
        "print(sorted(m for m in sys.modules if m in ('jobs.submit', 'jobs.preflight', "
        "'jobs.watch', 'submitit')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"


def test_submitits_requeue_waits_until_training_saved(monkeypatch):
    """submitit's handler for its signal would requeue at once (SLURM then SIGKILLs after
    KillWait); inside the task it runs only when `requeue()` is called, after the save."""
    import os
    import signal

    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    assert slurm.submitit_signal() == signal.SIGUSR2
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert slurm.submitit_signal() == signal.SIGUSR1

    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with slurm.DeferredRequeue(signal.SIGUSR2) as deferred:
            deferred.requeue()  # no signal yet: nothing to hand over
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGUSR2)  # a second one changes nothing
            assert calls == [] and deferred.received is not None
        # submitit's handler is back in place, and called once, when the task says so
        assert signal.getsignal(signal.SIGUSR2) is deferred._submitit_handler
        deferred.requeue()
        assert calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_sigterm_is_noted_and_still_reaches_submitits_handler():
    """A preemption's SIGTERM: noted as the stop, then passed to the handler before it
    (submitit's, which lets it pass); the submitit signal is named if it came first."""
    import os
    import signal

    passed: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: passed.append(signum))
    try:
        with slurm.DeferredRequeue(signal.SIGUSR2) as deferred:
            assert deferred.stopped_by is None
            os.kill(os.getpid(), signal.SIGTERM)
            assert deferred.stopped_by == "SIGTERM" and deferred.received is None
            assert passed == [signal.SIGTERM]
            os.kill(os.getpid(), signal.SIGUSR2)
            assert deferred.stopped_by == "SIGTERM" and deferred.received is not None
        assert signal.getsignal(signal.SIGTERM) is not deferred._note_term
        with slurm.DeferredRequeue(signal.SIGUSR2) as deferred:
            os.kill(os.getpid(), signal.SIGUSR2)
            os.kill(os.getpid(), signal.SIGTERM)
            assert deferred.stopped_by == "SIGUSR2"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_save_window_is_the_signal_lead_at_least_a_minute(tmp_path):
    from vice.config import Config
    from vice.hydra_schema import write_config

    cfg = Config()
    cfg.cluster.signal_delay_s = 180
    write_config(cfg, tmp_path)
    assert slurm.save_window_s(str(tmp_path)) == 180
    cfg.cluster.signal_delay_s = 20
    write_config(cfg, tmp_path)
    assert slurm.save_window_s(str(tmp_path)) == 60

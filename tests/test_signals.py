import signal
import subprocess
import sys

from vice.signals import STOP_SIGNALS


def test_stop_signals_are_the_schedulers():
    assert set(STOP_SIGNALS) == {signal.SIGTERM, signal.SIGUSR2, signal.SIGINT}


def test_a_helper_process_survives_every_stop_signal():
    code = (
        "import os, signal\n"
        "from vice.signals import STOP_SIGNALS, ignore_stop_signals\n"
        "ignore_stop_signals()\n"
        "for sig in STOP_SIGNALS: os.kill(os.getpid(), sig)\n"
        "print('alive')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "alive"

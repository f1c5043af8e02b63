"""Signals during a run (`jaxtrade.engine.signals`)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from jaxtrade.engine.signals import Interrupts


def test_first_signal_sets_the_flag_and_handlers_are_put_back(capsys):
    before = signal.getsignal(signal.SIGINT)
    with Interrupts() as interrupts:
        assert not interrupts.requested
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the loop decides
        deadline = time.monotonic() + 5
        while not interrupts.requested and time.monotonic() < deadline:
            time.sleep(0.01)
        assert interrupts.requested and interrupts.signal_name == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before
    assert ("SIGINT: stopping after the current call; press Ctrl+C again to exit now"
            in capsys.readouterr().err)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_second_signal_exits_at_once(sig, code):
    """The second signal ends the process with 128 + signum while the main thread is busy
    outside Python (here: sleeping), without waiting for it to come back."""
    script = textwrap.dedent("""
        import sys, time
        from jaxtrade.engine.signals import Interrupts
        with Interrupts():
            print("ready", flush=True)
            time.sleep(60)
        sys.exit(3)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    proc.send_signal(sig)
    time.sleep(0.2)
    assert proc.poll() is None  # the first only asks to stop after the current call
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == code
    assert time.monotonic() - t0 < 10
    assert "stopping after the current call" in proc.stderr.read()

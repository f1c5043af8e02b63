"""The watchdog names what a run waits for once a step outlasts its threshold."""

import math
import re
import threading
import time

import pytest

from jaxtrade import watchdog as W


def test_a_long_step_is_named_then_again_at_doubling_intervals():
    notes = []
    dog = W.Watchdog(notes.append, after=1.0)
    with dog.waiting("compiling the training program"):
        time.sleep(2.5)
    n = len(notes)
    time.sleep(1.2)  # nothing more once the step has ended
    assert len(notes) == n == 2, notes  # after 1 s and 2 s; the next is due at 4 s
    assert notes[0] == "still compiling the training program after 1s"
    assert notes[1] == "still compiling the training program after 2s"


def test_a_quick_step_says_nothing():
    notes = []
    with W.Watchdog(notes.append, after=5.0).waiting("placing the market"):
        pass
    assert notes == []


def test_a_step_that_outlasted_the_threshold_is_named_even_if_the_watcher_was_late():
    # Threshold 0: every step outlasts it, so every step is named exactly once (the next
    # notice would be due a second later), however the watcher thread is scheduled.
    for _ in range(50):
        notes = []
        with W.Watchdog(notes.append, after=0.0).waiting("running iteration 1"):
            pass
        assert notes == ["still running iteration 1 after 0s"]


def test_the_watcher_thread_ends_with_the_step():
    before = {t.name for t in threading.enumerate()}
    with W.Watchdog(lambda _: None, after=0.0).waiting("x"):
        assert "jaxtrade-watchdog" in {t.name for t in threading.enumerate()}
    assert {t.name for t in threading.enumerate()} == before


def test_threshold_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(W.ENV_AFTER, raising=False)
    assert W.default_after() == 60.0
    monkeypatch.setenv(W.ENV_AFTER, "0.5")
    assert W.Watchdog(print).after == 0.5
    monkeypatch.setenv(W.ENV_AFTER, "soon")
    with pytest.raises(ValueError, match="JAXTRADE_WATCHDOG_SECONDS must be a number"):
        W.default_after()


@pytest.mark.parametrize("seconds, text", [
    (0.4, "0s"), (45, "45s"), (60, "1m00s"), (125.9, "2m05s"), (3780, "1h03m"),
    (math.inf, "?"), (math.nan, "?"),
])
def test_format_seconds(seconds, text):
    assert W.format_seconds(seconds) == text


class _Writes:
    """A stream that records each write call."""

    def __init__(self):
        self.writes = []

    def write(self, text):
        self.writes.append(text)

    def flush(self):
        pass


def test_every_console_line_is_one_write(monkeypatch):
    """A save finishing in Orbax's thread, or the watchdog's wait, may print while the run
    prints: each of the run's lines goes out in one write, so no other line lands inside it
    (`print` writes the text and its newline separately)."""
    from jaxtrade.engine.console import Console

    out, err = _Writes(), _Writes()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    console = Console(1, True)
    console.line("saving checkpoint at iteration 4 -> run/checkpoints/4")
    console.say("market:", "4 assets")
    with console.timed("compiling"):
        console.notice("still compiling after 1m00s")
    console.warn("the GPU is busy")
    assert out.writes[:3] == ["saving checkpoint at iteration 4 -> run/checkpoints/4\n",
                              "market: 4 assets\n", "compiling... "]
    assert len(out.writes) == 4 and re.fullmatch(r"done in \d+\.\ds\n", out.writes[3])
    assert err.writes == ["\nwaiting: still compiling after 1m00s\n",
                          "warning: the GPU is busy\n"]

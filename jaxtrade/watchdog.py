"""Says what a run is waiting for when a step takes long (host-only).

Start-up steps (placing the market, building or restoring the state, compiling) and
compiled calls block the main thread inside JAX. When one of them takes longer than a
minute, a watcher thread prints what it is, and again after 2, 4, 8, ... minutes, so a
user who comes back to a silent terminal knows what it is doing (or stuck in). Send
SIGUSR1 to a running `python -m jaxtrade.train` for every thread's Python stack.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

# Seconds before the first notice; overridable for tests and debugging.
ENV_AFTER = "JAXTRADE_WATCHDOG_SECONDS"
DEFAULT_AFTER = 60.0


def default_after() -> float:
    """`$JAXTRADE_WATCHDOG_SECONDS`, else 60."""
    text = os.environ.get(ENV_AFTER, "")
    try:
        return float(text) if text else DEFAULT_AFTER
    except ValueError:
        raise ValueError(f"{ENV_AFTER} must be a number of seconds, got {text!r}") from None


def format_seconds(seconds: float) -> str:
    """E.g. 45s, 2m05s, 1h03m; "?" for an unknown (non-finite) duration."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Watchdog:
    """`with watchdog.waiting("compiling the training program"): ...` reports
    "still compiling the training program after 1m00s" through `report` if the block is
    still running after `after` seconds, then after 2x, 4x, ... that (at least a second
    apart)."""

    def __init__(self, report: Callable[[str], None], after: float | None = None):
        self.report = report
        self.after = default_after() if after is None else after

    @contextlib.contextmanager
    def waiting(self, what: str) -> Iterator[None]:
        done = threading.Event()
        start = time.monotonic()
        took = [math.inf]  # the block's duration, once it has ended

        def watch() -> None:
            deadline, reported = self.after, False
            while True:
                if done.wait(max(0.0, deadline - (time.monotonic() - start))):
                    # Ended: a block that outlasted the threshold is still named once, even
                    # when it ended before this thread got to run (no notice is lost to
                    # scheduling, and a late thread does not repeat itself).
                    if not reported and took[0] >= self.after:
                        self.report(f"still {what} after {format_seconds(took[0])}")
                    return
                self.report(f"still {what} after "
                            f"{format_seconds(time.monotonic() - start)}")
                reported = True
                deadline = max(2 * deadline, deadline + 1.0)

        thread = threading.Thread(target=watch, name="jaxtrade-watchdog", daemon=True)
        thread.start()
        try:
            yield
        finally:
            took[0] = time.monotonic() - start
            done.set()
            thread.join()


def enable_stack_dumps() -> bool:
    """SIGUSR1 prints every thread's Python stack to stderr (POSIX); False where unavailable."""
    if not hasattr(signal, "SIGUSR1"):
        return False
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    return True

"""SIGINT/SIGTERM during a training run: the first stops the loop after the current call,
the second exits at once (host-only; installed by the engine's loop, never at import)."""

from __future__ import annotations

import os
import signal
import sys
import threading

from jaxtrade.engine.console import emit

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _no_op(signum, frame):  # the wakeup fd, not this, carries the signal to the watcher
    pass


class Interrupts:
    """SIGINT/SIGTERM handling for the CLI's host loop (host-only; a context manager, never
    installed at import).

    The first signal sets `requested` and prints that the run stops after the current call;
    the loop then saves a checkpoint and exits 0. A second signal exits at once with
    128 + its number (130 for SIGINT, 143 for SIGTERM), leaving the last complete
    checkpoint as it is. Signals reach a watcher thread through the signal wakeup fd, so
    the second one acts even while the main thread waits inside a compiled call.
    """

    def __init__(self, message: str = "stopping after the current call; press Ctrl+C again "
                 "to exit now"):
        self.message = message
        self.signal_name: str | None = None  # the first signal received, e.g. "SIGINT"
        self._event = threading.Event()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def __enter__(self) -> Interrupts:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {s: signal.signal(s, _no_op) for s in _SIGNALS}
        self._thread = threading.Thread(target=self._watch, name="jaxtrade-signals", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write_fd)  # the watcher reads end-of-file and returns
        self._thread.join()
        os.close(self._read_fd)

    def _watch(self) -> None:
        while data := os.read(self._read_fd, 64):
            for signum in data:
                if signum not in _SIGNALS:
                    continue
                if self._event.is_set():
                    os._exit(128 + signum)
                self.signal_name = signal.Signals(signum).name
                self._event.set()
                emit(f"\n{self.signal_name}: {self.message}\n", sys.stderr)  # one write


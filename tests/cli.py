"""`python -m jaxtrade.train` in subprocesses, for the tests that drive the CLI as users do.

Every subprocess shares the session's persistent XLA compilation cache (`xla_cache` in
conftest), so an identical program compiles once per session. A process that does not
finish in time is a hang: it is asked for its threads' Python stacks (SIGUSR1), killed,
and the test fails with its last output. The repository root is on the subprocesses'
PYTHONPATH, so that a launcher in `tests/` (`Cli(cache, module="tests.stalled_save")`)
runs from any working directory.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TAIL_LINES = 40  # output lines shown when a process hangs or fails


class Cli:
    """Runs `python -m jaxtrade.train` (or `module`, a launcher that wraps it) in subprocesses
    sharing one compilation cache."""

    def __init__(self, cache_dir, module: str = "jaxtrade.train"):
        self.module = module
        self.env = {
            **os.environ,
            "JAX_COMPILATION_CACHE_DIR": str(cache_dir),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        }

    def start(self, *argv, env=None, cwd=None):
        """Starts the CLI; its stdout and stderr, merged in order, are read line by line."""
        proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *map(str, argv)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**self.env, **(env or {})}, cwd=cwd,
        )
        proc.lines = queue.Queue()
        proc.seen = []

        def pump():
            for line in proc.stdout:
                proc.lines.put(line)
            proc.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        return proc

    def wait_for(self, proc, pattern, timeout=180):
        """Reads output until a line matches `pattern`; fails on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = proc.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.fail_hung(proc, f"no line matching {pattern!r} within {timeout}s")
            if line is None:
                pytest.fail(f"exited before {pattern!r}:\n{''.join(proc.seen)}")
            proc.seen.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, proc, timeout=180):
        """All output, once the process has exited; a process still running after
        `timeout` seconds fails the test as hung."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.fail_hung(proc, f"still running after {timeout}s")
        self._drain(proc)
        return "".join(proc.seen)

    def check(self, *argv, env=None, cwd=None, timeout=180):
        """Runs the CLI to the end; fails unless it exits 0 within `timeout` seconds."""
        proc = self.start(*argv, env=env, cwd=cwd)
        out = self.finish(proc, timeout=timeout)
        if proc.returncode != 0:
            pytest.fail(f"exit code {proc.returncode}:\n{tail(out)}")
        return out

    def fail_hung(self, proc, what: str):
        """Dumps the process's Python stacks (SIGUSR1), kills it and fails with its output."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            proc.wait(timeout=30)
        self._drain(proc, timeout=5)
        pytest.fail(f"hung: {what}; its last output:\n{tail(''.join(proc.seen))}")

    @staticmethod
    def _drain(proc, timeout=10):
        while True:
            try:
                line = proc.lines.get(timeout=timeout)
            except queue.Empty:
                return
            if line is None:
                return
            proc.seen.append(line)


def tail(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-n:])

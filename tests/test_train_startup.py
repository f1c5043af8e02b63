"""`python -m jaxtrade.train` starts: the commands that hung before the first iteration, run
through the CLI (the README's multi-device command on 4 simulated devices, a user's CSV on
one device), and the banner that comes first.

The hang (jaxlib 0.10's batched CPU LAPACK kernels blocking every XLA pool thread, reached
through the GRU's orthogonal init; see `jaxtrade.networks.orthonormal`) struck every
multi-device run and most single-device runs with the default network. Its cause is now
checked where it would be compiled: no LAPACK kernel in the network's init
(`tests/test_networks.py`) or in a run's initial-state and training programs
(`tests/test_trainer.py`). The runs here start each command once (the README command on 4
devices, run to the end in the banner test; one device on a user's CSV: they used to be
3 + 3 + 6 runs, about 4 minutes of the suite, when the repetition was the only guard, and
then 1 + 1 + 1, the README command also on 2 devices), keep networks that hung (64 wide, 1
or 2 GRU layers) but tiny batches, and share the session's compilation cache; a hang fails
the test with the process's stacks and last output. (A 2-device CLI run:
`tests/test_parallel.py`'s one-process twin of its two-process run.)
"""

import re

import pytest

from jaxtrade.data import SyntheticConfig, synthetic_panel
from tests import xla_flags
from tests.cli import Cli
from tests.conftest import long_frame

TIMEOUT = 240  # seconds for one run, first compile included (a run takes ~10-30 s)
# The README's multi-device command, ended after one iteration of a tiny batch.
README_MULTI_DEVICE = ("--config", "configs/cpu-small.toml", "--iterations", 1,
                       "--worlds", 8, "--val-worlds", 4, "--test-worlds", 4)  # fewer worlds
TINY_BATCH = ("--n-envs", 16, "--n-steps", 8, "--eval-every", 0)
BANNER = ("jaxtrade ", "market: ", "model: ", "ppo: ", "memory: estimated", "run: ", "eval: ",
          "test: ")


def devices_env(n: int) -> dict:
    return {"XLA_FLAGS": xla_flags.flags(n)}


@pytest.fixture(scope="module")
def cli(xla_cache):
    return Cli(xla_cache)


@pytest.fixture(scope="module")
def prices_csv(tmp_path_factory):
    """Three daily assets over 3,000 bars in the long CSV format, as a user has them."""
    path = tmp_path_factory.mktemp("data") / "prices.csv"
    long_frame(synthetic_panel(SyntheticConfig(n_assets=3, n_bars=3000, seed=11))).to_csv(
        path, index=False)
    return path


def run_once(cli, tmp_path, argv, env=None) -> str:
    out = cli.check(*argv, "--run-dir", tmp_path / "run", env=env, timeout=TIMEOUT)
    assert re.search(r"^done: 1 iterations", out, re.M), out
    return out


@pytest.mark.slow
def test_single_device_real_data_run_starts(cli, tmp_path, prices_csv):
    # The reported command on a user's CSV, its default network's 2 GRU layers at width 64
    # (two batched QRs big enough to be split over the pool, as at 256; faster to compile).
    argv = ["--data", prices_csv, "--n-steps", 32, "--iterations", 1, "--n-envs", 16,
            "--seed", 5, "--eval-every", 0, "--hidden-dim", 64, "-q"]
    out = run_once(cli, tmp_path, argv)
    assert "error" not in out.lower(), out


@pytest.mark.slow
def test_banner_is_printed_before_placing_or_compiling_and_waits_are_named(cli, tmp_path):
    # Every blocking step reports itself after 0 s here, so its notice shows where it sits.
    # The README's multi-device command on 4 devices, its tiny batch evaluated at the end.
    out = cli.check(*README_MULTI_DEVICE, *TINY_BATCH[:4], "--devices", 4,
                    "--run-dir", tmp_path / "run",
                    env={**devices_env(4), "JAXTRADE_WATCHDOG_SECONDS": "0"}, timeout=TIMEOUT)
    assert re.search(r"^done: 1 iterations", out, re.M), out
    assert "| 4 x cpu (1 process)" in out
    lines = out.splitlines()

    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    banner_end = max(first(p) for p in BANNER)
    assert banner_end == first("test: ")
    for notice in ("placing the market on 4 devices", "building the initial state on 4 devices",
                   "compiling the training program (1 iteration(s) per call)",
                   "compiling the evaluation", "running iteration 1",
                   "evaluating iteration 1 on the validation worlds",
                   "writing the last checkpoint"):
        at = first(f"waiting: still {notice} after 0s")
        assert at > banner_end, notice
    assert first("compiling 1 iteration(s) per call...") > banner_end

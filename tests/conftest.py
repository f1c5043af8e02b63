"""Shared fixtures: tiny markets, built once per session so compiled functions are reused, and
one persistent XLA compilation cache for the session.

The cache: most of the suite's time is XLA compiling small programs, and many tests build
the same program again (a new `make_train` closure, a CLI run in-process or in a
subprocess). With the cache every distinct program compiles once per session; the others
load it (a 16 s compile becomes under 1 s). It lives in a fresh temporary directory, so
nothing carries over between sessions, and subprocesses inherit it through the
environment. Under pytest-xdist (the README's `-n 2`) the workers inherit the controller's
directory the same way, and only the process that made it removes it.

Distribution over xdist workers (`pytest_xdist_make_scheduler`, with the README's `-n 2`
and pyproject's `--dist loadfile`): a test file runs whole on one worker, so its module
fixtures are built once; the files that share an expensive session fixture (a trained
run) run on the same worker, so it is trained once; the slowest files start first.
(`--dist loadgroup` with `xdist_group` marks did this before, until pytest 9.2 made node
ids immutable: xdist 3.8 groups by rewriting them, which now does nothing, so files were
split over both workers and their fixtures built twice.)
"""

import atexit
import contextlib
import gc
import io
import os
import shutil
import tempfile

from tests import xla_flags

_CACHE_VAR = "JAXTRADE_TEST_XLA_CACHE"  # the session's cache, for xdist workers to find
if os.environ.get(_CACHE_VAR) and os.environ.get("PYTEST_XDIST_WORKER"):
    XLA_CACHE = os.environ[_CACHE_VAR]  # the controller's; it removes it
else:
    XLA_CACHE = tempfile.mkdtemp(prefix="jaxtrade-test-xla-cache-")
    os.environ[_CACHE_VAR] = XLA_CACHE
    atexit.register(shutil.rmtree, XLA_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = XLA_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
xla_flags.add_fast_compile()  # the suite's compile effort, inherited by subprocesses

import jax  # noqa: E402  (after the cache settings, which JAX reads when it starts)
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from xdist.scheduler import LoadFileScheduling  # noqa: E402

from jaxtrade.data import SyntheticConfig, build_market, synthetic_panel  # noqa: E402
from jaxtrade.envs import PortfolioEnv  # noqa: E402

jax.config.update("jax_compilation_cache_dir", XLA_CACHE)  # if JAX started before this file
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# Python's cyclic garbage collector, in each pytest process (it lives the whole session):
# tracing and lowering make millions of short-lived objects, and each full collection walks
# every object the session holds (JAX, Flax, pandas, every fixture and compiled program so
# far). What is imported by now is frozen out of the collector's walks (`gc.freeze`), and a
# young collection runs after 10,000 net allocations of tracked objects instead of 700, so
# full collections become rare and cyclic garbage that holds arrays can live longer. Measured
# with `gc.callbacks` on tests/test_schedule.py + tests/test_trainer.py in one process
# (2026-12-01, 2-core machine): 9.2 s of collections (24 full ones of 0.31 s) in 176 s of
# CPU with Python's defaults; 1.9 s (3 full ones) in 148-169 s with these; peak memory
# 1.67 GB either way. Subprocesses (the CLI, the multi-device workers) start fresh
# interpreters with the defaults: a CLI run spent under 0.1 s of its 6 s in collections.
gc.collect()
gc.freeze()
gc.set_threshold(10_000, 10, 10)

# Session fixtures worth building once, and the files that use them: these files run on one
# xdist worker. The scheduler sees node ids only (the controller collects nothing), so the
# files are listed; `pytest_collection_modifyitems` checks the list against the fixtures
# the collected tests request, and stops the run if a file is missing.
SHARED_FIXTURES = ("trained_run", "csv_evaluation", "user_csv", "funding_run")
SHARED_FIXTURE_FILES = (
    "tests/test_archive.py", "tests/test_evaluate.py", "tests/test_funding_policy.py",
    "tests/test_funding_report.py", "tests/test_policy.py", "tests/envs/test_funding.py",
)
# Started first, so that neither worker is left with a long unit at the end: the slowest
# units of a run on 2 cores (seconds: 500, 415, 266, 258, 249, 243, 239, 217, 214 on
# 2026-12-01; the first is the shared fixtures' files).
SLOW_FIRST = (
    "shared session fixtures", "tests/test_train_startup.py", "tests/test_parallel.py",
    "tests/test_population_mesh.py", "tests/test_trainer.py",
    "tests/test_memory.py", "tests/test_worlds_run.py", "tests/test_train.py",
    "tests/test_population_run.py", "tests/test_population.py",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _scope(nodeid: str) -> str:
    """The unit a worker runs whole: the shared fixtures' files together, else the file."""
    path = _file(nodeid)
    return "shared session fixtures" if path in SHARED_FIXTURE_FILES else path


class _FileScheduling(LoadFileScheduling):
    """xdist's `loadfile`, with the shared fixtures' files as one unit and `SLOW_FIRST`
    first (then the larger units, as xdist orders them)."""

    _ordered = False

    def _split_scope(self, nodeid: str) -> str:
        return _scope(nodeid)

    def _assign_work_unit(self, node) -> None:
        if not self._ordered:  # the queue is complete when the first unit goes out
            self._ordered = True
            rank = {scope: i for i, scope in enumerate(SLOW_FIRST)}
            units = sorted(self.workqueue.items(), key=lambda kv: rank.get(kv[0], len(rank)))
            self.workqueue.clear()
            self.workqueue.update(units)
        super()._assign_work_unit(node)


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") == "loadfile":
        return _FileScheduling(config, log)
    return None


def pytest_collection_modifyitems(config, items):
    """Stops the run if a file that uses a shared session fixture is not in
    `SHARED_FIXTURE_FILES` (under xdist it would build the fixture on both workers)."""
    using = {os.path.relpath(str(item.path), ROOT).replace(os.sep, "/") for item in items
             if set(item.fixturenames) & set(SHARED_FIXTURES)}
    if missing := sorted(using - set(SHARED_FIXTURE_FILES)):
        raise pytest.UsageError(f"tests/conftest.py: add {missing} to SHARED_FIXTURE_FILES: "
                                f"they use a shared session fixture {SHARED_FIXTURES}")


SMALL = SyntheticConfig(n_assets=5, n_bars=400, seed=1)
SMALL_EPISODE = 32


@pytest.fixture(scope="session")
def small_panel():
    return synthetic_panel(SMALL)


@pytest.fixture(scope="session")
def small_market(small_panel):
    return build_market(small_panel, episode_length=SMALL_EPISODE, val_fraction=0.2,
                        test_fraction=0.1)


@pytest.fixture(scope="session")
def small_env(small_market):
    return PortfolioEnv(small_market)


@pytest.fixture(scope="session")
def small_params(small_env):
    return small_env.make_params("train", episode_length=SMALL_EPISODE)


@pytest.fixture(scope="session")
def xla_cache():
    """The session's persistent XLA compilation cache, which CLI subprocesses share
    (`tests.cli.Cli`): a program compiled once loads everywhere else."""
    return XLA_CACHE


# --- a trained run, shared by the evaluation and deployment tests -----------------------------
TRAINED_ITERATIONS = 6
TRAINED_EVAL_EVERY = 2


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny `python -m jaxtrade.train` run (in-process) that walks its validation bars every
    2 iterations and saves only on a new best val_score (and at the end): (run dir, stdout)."""
    from jaxtrade import train
    from tests.test_train import TINY

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    argv = [*TINY, "--iterations", str(TRAINED_ITERATIONS), "--eval-every",
            str(TRAINED_EVAL_EVERY), "--save-every", "0", "--run-dir", str(run_dir)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train.main(argv) == 0
    return run_dir, out.getvalue()


@pytest.fixture(scope="session")
def user_csv(tmp_path_factory):
    """A long-format CSV of 4 synthetic assets the run was not trained on (another seed, other
    dates), with the training symbols' names: (path, the frame written)."""
    panel = synthetic_panel(SyntheticConfig(n_assets=4, n_bars=140, seed=7, start="2016-03-01"))
    frame = long_frame(panel)
    path = tmp_path_factory.mktemp("user") / "prices.csv"
    frame.to_csv(path, index=False)
    return path, frame


def long_frame(panel):
    """A panel as the loader's long format: date, symbol, open, high, low, close, volume."""
    return pd.concat([
        pd.DataFrame({"date": panel.dates, "symbol": s, "open": panel.open[:, j],
                      "high": panel.high[:, j], "low": panel.low[:, j],
                      "close": panel.close[:, j], "volume": panel.volume[:, j]})
        for j, s in enumerate(panel.symbols)
    ], ignore_index=True)


@pytest.fixture(scope="session")
def csv_evaluation(trained_run, user_csv, tmp_path_factory):
    """`python -m jaxtrade.evaluate --data user.csv` (in-process): (output dir, stdout)."""
    from jaxtrade import evaluate

    run_dir, _ = trained_run
    out_dir = tmp_path_factory.mktemp("csv-eval")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = evaluate.main(["--run-dir", str(run_dir), "--data", str(user_csv[0]),
                              "--out", str(out_dir)])
    assert code == 0
    return out_dir, out.getvalue()


# --- a tiny trained funding run, shared by the funding evaluation and deployment tests ---------
FUNDING_HOURS = 12  # hours per episode ("day") of the tiny funding run


@pytest.fixture(scope="session")
def funding_run(tmp_path_factory):
    """A tiny `python -m jaxtrade.train --env funding` run (in-process) on the embedded
    synthetic opportunity data, half-day episodes, validated every iteration: (run dir,
    stdout)."""
    from jaxtrade import train

    run_dir = tmp_path_factory.mktemp("funding") / "run"
    argv = ["--env", "funding", "--episode-length", str(FUNDING_HOURS), "--n-envs", "16",
            "--n-steps", str(FUNDING_HOURS), "--n-minibatches", "2", "--iterations", "2",
            "--hidden-dim", "16", "--eval-every", "1", "--seed", "3", "--run-dir",
            str(run_dir)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train.main(argv) == 0
    return run_dir, out.getvalue()

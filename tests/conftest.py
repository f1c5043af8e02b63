"""Shared fixtures: tiny markets, built once per session so compiled functions are reused."""

import contextlib
import io

import pandas as pd
import pytest

from jaxtrade.data import SyntheticConfig, build_market, synthetic_panel
from jaxtrade.envs import PortfolioEnv

SMALL = SyntheticConfig(n_assets=5, n_bars=400, seed=1)
SMALL_EPISODE = 32


@pytest.fixture(scope="session")
def small_panel():
    return synthetic_panel(SMALL)


@pytest.fixture(scope="session")
def small_market(small_panel):
    return build_market(small_panel, episode_length=SMALL_EPISODE, eval_fraction=0.25)


@pytest.fixture(scope="session")
def small_env(small_market):
    return PortfolioEnv(small_market)


@pytest.fixture(scope="session")
def small_params(small_env):
    return small_env.make_params("train", episode_length=SMALL_EPISODE)


@pytest.fixture(scope="session")
def xla_cache(tmp_path_factory):
    """A persistent XLA compilation cache the session's CLI subprocesses share
    (`tests.cli.Cli`): a program compiled by one of them loads in the others."""
    return tmp_path_factory.mktemp("xla-cache")


# --- a trained run, shared by the evaluation and deployment tests -----------------------------
TRAINED_ITERATIONS = 6
TRAINED_EVAL_EVERY = 2


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny `python -m jaxtrade.train` run (in-process) that walks its held-out bars every
    2 iterations and saves only on a new best eval_score (and at the end): (run dir, stdout)."""
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

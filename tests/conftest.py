"""Shared fixtures: tiny markets, built once per session so compiled functions are reused."""

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

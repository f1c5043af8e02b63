"""Pure-functional trading environments with a gymnax-style API."""

from jaxtrade.envs.portfolio import EnvParams, EnvState, PortfolioEnv
from jaxtrade.envs.regimes import N_REGIMES, NAMES, Regime

__all__ = ["N_REGIMES", "NAMES", "EnvParams", "EnvState", "PortfolioEnv", "Regime"]

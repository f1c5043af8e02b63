"""Pure-functional trading environments: the protocol (`base`), the registry and the envs."""

from jaxtrade.envs.base import Environment, env_class, make_env, register, registered
from jaxtrade.envs.portfolio import EnvParams, EnvState, PortfolioEnv
from jaxtrade.envs.regimes import N_REGIMES, NAMES, Regime

__all__ = [
    "N_REGIMES", "NAMES", "EnvParams", "EnvState", "Environment", "PortfolioEnv", "Regime",
    "env_class", "make_env", "register", "register_gymnax", "registered",
]


def register_gymnax() -> list[str]:
    """Registers jaxtrade's envs with gymnax, so that `gymnax.make("jaxtrade-Portfolio-v0")`
    works; returns the ids. Needs the extra `gymnax` (`pip install 'jaxtrade[gymnax]'`),
    imported only here so that jaxtrade itself never needs it
    (`jaxtrade.envs.gymnax_api`)."""
    from jaxtrade.envs.gymnax_api import register_gymnax as register

    return register()

"""jaxtrade: end-to-end jitted PPO for trading agents in JAX."""

__version__ = "0.1.0"

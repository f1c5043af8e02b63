"""jaxtrade: end-to-end jitted PPO for trading agents in JAX."""

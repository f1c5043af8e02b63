"""jaxtrade: end-to-end jitted PPO for trading agents in JAX.

`jaxtrade.load_policy(run_dir)` loads a trained policy for deployment
(`jaxtrade.policy`); it is imported on first use, so `import jaxtrade` stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_policy"]


def __getattr__(name: str):
    if name == "load_policy":
        from jaxtrade.policy import load_policy

        return load_policy
    raise AttributeError(f"module 'jaxtrade' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

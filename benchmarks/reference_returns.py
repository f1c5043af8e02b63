"""Reference episode returns of fixed policies: what a training log's `ret` compares with.

    python -m benchmarks.reference_returns [--episodes 4096] [--seed 0] [--out DIR]

On the embedded market's training range with the default env params (episodes of 256
steps, the reference frictions, ruin below half the starting value; the market and
params `python -m jaxtrade.train` uses without flags), it plays --episodes episodes, each
from a uniformly random start bar (the same starts for every policy), of

* `random`: a uniformly random regime every step;
* `equal_weight_then_hold`: EQUAL_WEIGHT at the first step, then HOLD (equal weight
  bought once and held as it drifts);
* `equal_weight`: EQUAL_WEIGHT every step (rebalanced to equal weight every bar).

and reports per policy the mean episode return (the sum of the rewards: the episode's
log growth net of costs), its standard deviation and standard error, the fraction of
episodes ruined (terminated), the mean episode length, and the mean sum of trading
costs (in units of the starting value). Episodes run without auto-reset
(`step_env`), one whole episode per env, under jit + vmap + lax.scan.

Prints a table and writes benchmarks/results/reference_returns_<device>_<date>.json
(host-only code).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import device_info, save, table
from jaxtrade.config import Config
from jaxtrade.data import load_market
from jaxtrade.envs import N_REGIMES, PortfolioEnv, Regime

POLICIES = ("random", "equal_weight_then_hold", "equal_weight")


def policy_action(name: str, key: jax.Array, step: jax.Array) -> jax.Array:
    """int32 [] action of the policy `name` at episode step `step`."""
    if name == "random":
        return jax.random.randint(key, (), 0, N_REGIMES, jnp.int32)
    if name == "equal_weight_then_hold":
        return jnp.where(step == 0, Regime.EQUAL_WEIGHT, Regime.HOLD).astype(jnp.int32)
    if name == "equal_weight":
        return jnp.asarray(Regime.EQUAL_WEIGHT, jnp.int32)
    raise ValueError(f"unknown policy {name!r}; one of {', '.join(POLICIES)}")


def episode_stats(env: PortfolioEnv, params, policy: str, episode_length: int, keys):
    """One episode per key (without auto-reset): per episode the return, ruined, length
    and summed cost, each [n]."""

    def one(key):
        key_reset, key_run = jax.random.split(key)
        _, state = env.reset_env(key_reset, params)
        zero = jnp.zeros((), jnp.float32)
        carry = (state, zero, zero, jnp.ones((), bool), jnp.zeros((), bool),
                 jnp.zeros((), jnp.int32))

        def body(carry, xs):
            state, ret, cost, alive, ruined, length = carry
            key, step = xs
            key_act, key_step = jax.random.split(key)
            action = policy_action(policy, key_act, step)
            _, state, reward, done, info = env.step_env(key_step, state, action, params)
            ret = ret + jnp.where(alive, reward, 0.0)
            cost = cost + jnp.where(alive, info["cost"], 0.0)
            ruined = ruined | (alive & info["terminated"])
            length = length + alive.astype(jnp.int32)
            return (state, ret, cost, alive & ~done, ruined, length), None

        xs = (jax.random.split(key_run, episode_length), jnp.arange(episode_length))
        (_, ret, cost, alive, ruined, length), _ = jax.lax.scan(body, carry, xs)
        return ret, ruined, length, cost, alive

    ret, ruined, length, cost, alive = jax.jit(jax.vmap(one))(keys)
    # Every episode ends within episode_length steps (truncation), so none is still running.
    assert not np.asarray(alive).any(), "an episode outlived its length"
    return {k: np.asarray(v) for k, v in
            (("return", ret), ("ruined", ruined), ("length", length), ("cost", cost))}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reference_returns",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=4096, help="episodes per policy [4096]")
    p.add_argument("--seed", type=int, default=0, help="start bars and random actions [0]")
    p.add_argument("--out", type=Path, default=None,
                   help="results directory [benchmarks/results]")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = Config()  # jaxtrade.train's defaults: the embedded market and the env params
    d, e = cfg.data, cfg.env
    market = load_market(
        None, synthetic=d.synthetic(), episode_length=e.episode_length,
        val_fraction=d.val_fraction, test_fraction=d.test_fraction,
    ).without_test()
    env = PortfolioEnv(market)
    params = env.make_params("train", **e.params_kwargs())
    info = device_info()
    print(f"market: {market.describe()}")
    print(f"env: training range, episodes of {e.episode_length} steps from a random start bar "
          f"in [{int(params.start_min)}, {int(params.start_max)}], slippage {e.slippage}, "
          f"spread {e.spread}, impact {e.impact}, ruin below {e.ruin_fraction}")
    print(f"{args.episodes} episodes per policy, seed {args.seed}, on {info['platform']} "
          f"({info['device_kind']}, {info['host_cpus']} host CPUs)")
    keys = jax.random.split(jax.random.key(args.seed), args.episodes)
    rows = []
    for policy in POLICIES:
        t0 = time.perf_counter()
        s = episode_stats(env, params, policy, e.episode_length, keys)
        n = len(s["return"])
        rows.append({
            "policy": policy,
            "episodes": n,
            "mean_return": float(s["return"].mean()),
            "std_return": float(s["return"].std(ddof=1)),
            "stderr_return": float(s["return"].std(ddof=1) / np.sqrt(n)),
            "median_return": float(np.median(s["return"])),
            "ruined_fraction": float(s["ruined"].mean()),
            "mean_length": float(s["length"].mean()),
            "mean_cost": float(s["cost"].mean()),
            "seconds": time.perf_counter() - t0,
        })
        print(f"  {policy}: done in {rows[-1]['seconds']:.1f}s", flush=True)
    print(table(rows, [
        ("policy", "policy", "s"), ("mean_return", "mean return", "+.4f"),
        ("stderr_return", "std err", ".4f"), ("median_return", "median", "+.4f"),
        ("ruined_fraction", "ruined", ".3f"), ("mean_length", "mean length", ".1f"),
        ("mean_cost", "mean cost", ".4f"),
    ]))
    settings = {
        "market": market.describe(),
        "split": "train",
        "episode_length": e.episode_length,
        "env_params": e.params_kwargs(),
        "start_min": int(params.start_min),
        "start_max": int(params.start_max),
        "episodes": args.episodes,
        "seed": args.seed,
        "return": "sum of the rewards of one episode (log growth net of costs)",
        "cost": "sum of the trading costs of one episode, in units of the starting value",
    }
    path = save("reference_returns", info, rows, args.out, settings)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

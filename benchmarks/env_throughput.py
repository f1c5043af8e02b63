"""Env-only throughput: vmapped `PortfolioEnv.step` with random actions, `lax.scan` over 256 steps.

    python -m benchmarks.env_throughput [--n-envs 1024 4096 16384 65536] [--steps 256]

Prints a table and writes benchmarks/results/env_throughput_<device>_<date>.json.
Compile time is measured apart from the timed runs (best of --repeats).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from benchmarks.common import device_info, save, table
from jaxtrade.data import SyntheticConfig, load_market
from jaxtrade.envs import N_REGIMES, PortfolioEnv


def make_run(env: PortfolioEnv, n_envs: int, n_steps: int):
    """jit: (key, params) -> mean reward; resets n_envs envs and steps them n_steps times."""

    def run(key, params):
        key_reset, key_run = jax.random.split(key)
        _, state = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(key_reset, n_envs), params
        )
        step = jax.vmap(env.step, in_axes=(0, 0, 0, None))

        def body(carry, key):
            state, total = carry
            key_act, key_step = jax.random.split(key)
            actions = jax.random.randint(key_act, (n_envs,), 0, N_REGIMES)
            _, state, reward, _, _ = step(
                jax.random.split(key_step, n_envs), state, actions, params
            )
            return (state, total + reward.sum()), None

        (_, total), _ = jax.lax.scan(
            body, (state, jnp.zeros((), jnp.float32)), jax.random.split(key_run, n_steps)
        )
        return total / (n_envs * n_steps)

    return jax.jit(run)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--assets", type=int, default=12)
    parser.add_argument(
        "--out", default=None, help="results directory (default benchmarks/results)"
    )
    args = parser.parse_args(argv)

    market = load_market(synthetic=SyntheticConfig(n_assets=args.assets))
    env = PortfolioEnv(market)
    params = env.default_params
    info = device_info()
    print(
        f"device: {info['device_kind']} x{info['n_devices']} ({info['platform']}), "
        f"jax {info['jax']}; market: {market.describe()}; obs_dim {env.obs_dim}"
    )
    rows = []
    for n_envs in args.n_envs:
        run = make_run(env, n_envs, args.steps)
        t0 = time.perf_counter()
        run(jax.random.key(0), params).block_until_ready()
        compile_s = time.perf_counter() - t0
        times = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            run(jax.random.key(i + 1), params).block_until_ready()
            times.append(time.perf_counter() - t0)
        best = min(times)
        rows.append(
            {
                "n_envs": n_envs,
                "steps": args.steps,
                "env_steps_per_s": n_envs * args.steps / best,
                "best_s": best,
                "compile_s": compile_s,
            }
        )
        print(
            table(
                rows[-1:],
                [
                    ("n_envs", "n_envs", "d"),
                    ("env_steps_per_s", "env steps/s", ",.0f"),
                    ("best_s", "run s", ".3f"),
                    ("compile_s", "compile s", ".2f"),
                ],
            ),
            flush=True,
        )
    print()
    print(
        table(
            rows,
            [
                ("n_envs", "n_envs", ",d"),
                ("env_steps_per_s", "env steps/s", ",.0f"),
                ("best_s", "run s (256 steps)", ".3f"),
                ("compile_s", "compile+1st s", ".2f"),
            ],
        )
    )
    path = save("env_throughput", info, rows, args.out)
    print(f"saved {path}")


if __name__ == "__main__":
    main()

"""End-to-end training throughput: env steps per second of whole PPO iterations vs n_envs.

    python -m benchmarks.train_throughput [--n-envs 32 64 128 256] [--hidden-dim 256]

One iteration = rollout (n_steps x n_envs env steps) + GAE + joint PPO epochs + critic
epochs, all in one compiled call; SPS counts env steps of the timed iterations,
learning included. Compile time is measured apart (AOT lower + compile). Prints a
table and writes benchmarks/results/train_throughput_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import time

import jax

from benchmarks.common import device_info, save, table
from jaxtrade import config as cfgmod
from jaxtrade.data import load_market
from jaxtrade.trainer import make_train


def measure(cfg: cfgmod.Config, market, iterations: int) -> dict:
    trainer = make_train(cfg, market)
    state = jax.block_until_ready(jax.jit(trainer.init)(jax.random.key(0)))
    t0 = time.perf_counter()
    compiled = trainer.run.lower(state, 1).compile()
    compile_s = time.perf_counter() - t0
    state, _ = compiled(state)  # warm-up
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(iterations):
        state, metrics = compiled(state)
    jax.block_until_ready((state, metrics))
    elapsed = time.perf_counter() - t0
    steps = iterations * trainer.steps_per_iteration
    return {
        "n_envs": cfg.ppo.n_envs,
        "n_steps": cfg.ppo.n_steps,
        "hidden_dim": cfg.network.hidden_dim,
        "n_gru_layers": cfg.network.n_gru_layers,
        "precision": cfg.network.precision,
        "n_params": trainer.n_params,
        "iterations": iterations,
        "train_steps_per_s": steps / elapsed,
        "s_per_iteration": elapsed / iterations,
        "compile_s": compile_s,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    on_cpu = jax.default_backend() == "cpu"
    parser.add_argument(
        "--n-envs",
        type=int,
        nargs="+",
        default=[32, 64, 128, 256] if on_cpu else [4096, 16384, 65536],
    )
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--n-gru-layers", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=cfgmod.PRECISIONS)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per size")
    parser.add_argument(
        "--out", default=None, help="results directory (default benchmarks/results)"
    )
    args = parser.parse_args(argv)

    info = device_info()
    market = load_market()
    print(
        f"device: {info['device_kind']} x{info['n_devices']} ({info['platform']}), "
        f"jax {info['jax']}; network hidden {args.hidden_dim} x {args.n_gru_layers}, "
        f"n_steps {args.n_steps}, 4 PPO + 4 critic epochs, 4 minibatches"
    )
    columns = [
        ("n_envs", "n_envs", ",d"),
        ("train_steps_per_s", "train steps/s", ",.0f"),
        ("s_per_iteration", "s/iteration", ".2f"),
        ("compile_s", "compile s", ".1f"),
    ]
    rows = []
    for n_envs in args.n_envs:
        cfg = cfgmod.resolve(
            cfgmod.with_values(
                cfgmod.Config(),
                n_envs=n_envs,
                n_steps=args.n_steps,
                hidden_dim=args.hidden_dim,
                n_gru_layers=args.n_gru_layers,
                precision=args.precision,
            ),
            info["platform"],
        )
        cfgmod.validate(cfg)
        rows.append(measure(cfg, market, args.iterations))
        print(table(rows[-1:], columns), flush=True)
    print()
    print(table(rows, columns))
    print(f"saved {save('train_throughput', info, rows, args.out)}")


if __name__ == "__main__":
    main()

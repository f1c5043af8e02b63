"""Training throughput on a pool of procedural worlds against the single fixed market, for
the same network, side by side in one process (the machines are shared and noisy: compare
the ratios, not the absolute figures).

    python -m benchmarks.worlds_throughput                 # CPU: the cpu-small shapes
    python -m benchmarks.worlds_throughput --n-envs 4096 --hidden-dim 256 --n-gru-layers 2

Rows, each for the flat and the set encoder:

* fixed: the embedded market (`--assets` stocks), as `--market fixed` trains on it;
* pool, same assets: a pool of worlds with exactly `--assets` assets each (no padding):
  the cost of the pool itself (the world drawn at reset, the asset flags, the masks);
* pool, default prior: the default worlds (4-24 assets, padded to 24), what
  `--market worlds` trains on: more assets per observation, so more work per step.

Each row: one compiled PPO iteration timed `--iterations` times after a warm-up, in
rounds that alternate the markets (so drift in the machine's speed hits every row alike);
steps/s is the median over rounds. Writes
benchmarks/results/worlds_throughput_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

from benchmarks.common import device_info, save, table
from jaxtrade import worlds
from jaxtrade.config import Config, resolve, with_values
from jaxtrade.data import SyntheticConfig, build_market, synthetic_panel
from jaxtrade.trainer import make_train


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worlds_throughput",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--n-envs", type=int, default=64)
    p.add_argument("--n-steps", type=int, default=64)
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--n-gru-layers", type=int, default=1)
    p.add_argument("--assets", type=int, default=12, help="assets of the fixed market [12]")
    p.add_argument("--worlds", type=int, default=256, help="worlds in each pool [256]")
    p.add_argument("--iterations", type=int, default=5, help="timed rounds [5]")
    p.add_argument("--out", help="results directory [benchmarks/results]")
    return p.parse_args(argv)


def markets(args) -> dict:
    fixed = build_market(synthetic_panel(SyntheticConfig(n_assets=args.assets, n_bars=2520)),
                         episode_length=256, val_fraction=0.2, test_fraction=0.2).without_test()
    same = worlds.WorldPrior(n_assets=(args.assets, args.assets))
    pool_same, _ = worlds.pool_market(0, "train", range(args.worlds), 600, same)
    pool_default, _ = worlds.pool_market(0, "train", range(args.worlds), 600)
    return {"fixed": fixed, "pool, same assets": pool_same, "pool, default prior": pool_default}


def main(argv=None) -> int:
    args = parse_args(argv)
    info = device_info()
    rows = []
    for encoder in ("flat", "set"):
        cfg = resolve(with_values(Config(), n_envs=args.n_envs, n_steps=args.n_steps,
                                  n_minibatches=2, hidden_dim=args.hidden_dim,
                                  n_gru_layers=args.n_gru_layers, precision="fp32",
                                  encoder=encoder), info["platform"])
        runs = {}
        for name, market in markets(args).items():
            trainer = make_train(cfg, market)
            state = trainer.initial_state(jax.random.key(0))
            t0 = time.perf_counter()
            compiled = trainer.compile(state, 1)
            compile_s = time.perf_counter() - t0
            state, _ = jax.block_until_ready(  # warm-up
                compiled(state, trainer.env_params, trainer.schedule))
            runs[name] = {"trainer": trainer, "compiled": compiled, "state": state,
                          "compile_s": compile_s, "times": [],
                          "obs_dim": trainer.env.obs_dim, "n_params": trainer.n_params}
        for _ in range(args.iterations):  # rounds alternate the markets
            for run in runs.values():
                t0 = time.perf_counter()
                run["state"], _ = jax.block_until_ready(
                    run["compiled"](run["state"], run["trainer"].env_params))
                run["times"].append(time.perf_counter() - t0)
        base = None
        for name, run in runs.items():
            sps = args.n_envs * args.n_steps / statistics.median(run["times"])
            base = base or sps
            rows.append({"encoder": encoder, "market": name, "obs_dim": run["obs_dim"],
                         "n_params": run["n_params"], "train_steps_per_s": sps,
                         "ratio_to_fixed": sps / base, "compile_s": run["compile_s"],
                         "s_per_iteration": run["times"]})
            print(f"{encoder:>4} | {name:<20} | {sps:>9,.0f} steps/s | x{sps / base:.3f} of "
                  f"fixed", flush=True)
    print(table(rows, [("encoder", "encoder", "s"), ("market", "market", "s"),
                       ("obs_dim", "obs", "d"), ("train_steps_per_s", "steps/s", ",.0f"),
                       ("ratio_to_fixed", "x fixed", ".3f")]))
    path = save("worlds_throughput", info, rows, args.out, settings=vars(args))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

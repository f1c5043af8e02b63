"""What the fixed strategies earn on a run's worlds: the room a policy has above them.

    python -m benchmarks.worlds_headroom [--seed 0] [--stream test] [--worlds 128] [--out DIR]

Every baseline of `jaxtrade.evaluation.BASELINES` (cash, buy-and-hold, each regime
rebalanced every 1, 5 or 20 bars) walks every world of a seed stream (the worlds of a run
with `--world-seed SEED` and the default 600 bars: `--stream test` are the worlds
`python -m jaxtrade.evaluate` reports on), with the run's default frictions, as the
evaluation does. Per group of worlds by signal strength (none, weak below 0.6, strong):

* each strategy's median Sharpe ratio over the worlds, and its median Sharpe minus
  buy-and-hold's in the same world; the best five are printed;
* the per-world oracle: the best fixed strategy of each world, chosen on that world's own
  test bars. No honest strategy can choose so (it is the upper bound of a switch among
  the fixed strategies that knew the world); a policy that infers the world's kind from
  its bars can approach it.

The baseline a run chooses is the best median Sharpe over its *validation* worlds; on
other worlds the order of the strategies near the top changes (compare `--stream
validation --worlds 64` with the test worlds). Host-only and single-device; writes
benchmarks/results/worlds_headroom_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import device_info, save, table
from jaxtrade import worlds
from jaxtrade.config import EnvConfig, WorldsConfig
from jaxtrade.envs import PortfolioEnv
from jaxtrade.evaluation import BASELINES, world_baselines

GROUPS = (("none", 0.0, 0.0), ("weak", 1e-9, 0.6), ("strong", 0.6, np.inf))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worlds_headroom",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="the run's --world-seed")
    p.add_argument("--stream", choices=("validation", "test"), default="test")
    p.add_argument("--worlds", type=int, default=128, help="worlds of the stream, from 0")
    p.add_argument("--bars", type=int, default=WorldsConfig().world_bars)
    p.add_argument("--top", type=int, default=5, help="strategies printed per group")
    p.add_argument("--out", type=Path, default=None, help="results directory")
    return p.parse_args(argv)


def headroom(sharpe: np.ndarray, signal: np.ndarray) -> list[dict]:
    """Rows per group of worlds: sharpe [W, len(BASELINES)], signal [W]."""
    hold = sharpe[:, BASELINES.index("buy_and_hold")]
    rows = []
    for name, lo, hi in GROUPS:
        sel = signal == 0 if hi == 0 else (signal >= lo) & (signal < hi)
        if not sel.any():
            continue
        median = {b: float(np.median(sharpe[sel, i])) for i, b in enumerate(BASELINES)}
        over = {b: float(np.median(sharpe[sel, i] - hold[sel])) for i, b in enumerate(BASELINES)}
        won = {b: float(np.mean(sharpe[sel, i] > hold[sel])) for i, b in enumerate(BASELINES)}
        best = max(median, key=median.get)
        rows.append({"group": name, "worlds": int(sel.sum()),
                     "buy_and_hold": median["buy_and_hold"],
                     "best_fixed": best, "best_fixed_sharpe": median[best],
                     "oracle": float(np.median(sharpe[sel].max(axis=1))),
                     "median_sharpe": median, "median_over_buy_and_hold": over,
                     "share_beating_buy_and_hold": won})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    market, settings = worlds.pool_market(args.seed, args.stream, range(args.worlds),
                                          args.bars)
    env = PortfolioEnv(market)
    base = world_baselines(env, EnvConfig(), args.seed, market.bars_per_year)
    sharpe = np.asarray(base["metrics"]["sharpe"], np.float64)
    signal = np.asarray(settings.signal_strength, np.float64)
    rows = headroom(sharpe, signal)
    every = headroom(sharpe, np.zeros_like(signal))[0]  # all worlds as one ("none") group
    rows.append({**every, "group": "all"})
    print(f"{args.worlds} {args.stream} worlds of seed {args.seed}, {args.bars} bars; median "
          f"Sharpe over the worlds of each group")
    print(table(rows, [("group", "worlds", ""), ("worlds", "n", "d"),
                       ("buy_and_hold", "buy_and_hold", "+.2f"),
                       ("best_fixed", "best fixed", ""),
                       ("best_fixed_sharpe", "its Sharpe", "+.2f"),
                       ("oracle", "per-world oracle", "+.2f")]))
    for r in rows:
        top = sorted(r["median_over_buy_and_hold"].items(), key=lambda kv: -kv[1])[:args.top]
        print(f"{r['group']}: median Sharpe minus buy_and_hold's in the same world: " + ", ".join(
            f"{b} {v:+.2f} (beats it in {r['share_beating_buy_and_hold'][b]:.0%})"
            for b, v in top))
    path = save("worlds_headroom", device_info(), rows, args.out,
                {"seed": args.seed, "stream": args.stream, "worlds": args.worlds,
                 "bars": args.bars})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

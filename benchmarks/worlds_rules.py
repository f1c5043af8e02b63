"""What an honest rule that reads each factor's recent payoff earns on a run's worlds.

    python -m benchmarks.worlds_rules [--seed 0] [--val-worlds 64] [--test-worlds 128]

`benchmarks.worlds_headroom` shows that no fixed strategy beats buy-and-hold in more than
half of the test worlds, and that the per-world oracle (the best fixed strategy of each
world, chosen on that world) has a median Sharpe far above buy-and-hold's. Between the
two lies what a strategy can learn from the bars it has seen. This measures one such
strategy family, written by hand, with no learning: a *factor-payoff switch*.

Each factor score f of `jaxtrade.data.features.SCORE_NAMES` has a payoff at bar t, as its
regime earns it in the env: the mean return over bar t of the top half of the assets that
exist, ranked by f at bar t-2 (bought at the close of t-1), minus the mean return of all
of them. Every K bars the switch computes, from the bars it has seen, each factor's
t-statistic of its payoffs over the last L bars (mean / standard error); if the best one
exceeds a threshold it trades that factor's regime (MOMENTUM, LOW_VOL, QUALITY,
SIZE_SMALL; or, "safe", SAFE_MOMENTUM and SAFE_QUALITY for the two that have a 30%-cash
variant), otherwise it holds the equal-weight portfolio (bought at the first step, bought
back when it leaves a factor) or rebalances to it. Between decisions it holds.

The grid (L in 20, 60, 120 bars; threshold in 0.5, 1, 1.5, 2, 3; K in 5, 20; plain or
safe regimes; hold or rebalance otherwise: 120 candidates) walks the validation worlds
and the test worlds of a seed, with the run's default frictions, as evaluation walks do.
The candidate with the best median Sharpe over the validation worlds is chosen (as a run
chooses its baseline) and reported on the test worlds against buy-and-hold: median
Sharpe, median difference in the same world, the share of worlds it beats buy-and-hold
in. The best candidate on the test worlds is shown too, marked as chosen on them (an
upper bound of the family, not a result). Host-only and single-device; writes
benchmarks/results/worlds_rules_<device>_<date>.json.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import device_info, save, table
from jaxtrade import worlds
from jaxtrade.config import EnvConfig, WorldsConfig
from jaxtrade.envs import PortfolioEnv, Regime
from jaxtrade.evaluation import (
    make_baseline_walk,
    walk_key,
    walk_metrics,
    world_axes,
    world_pass_params,
)

# The regime that holds each factor's basket (SCORE_NAMES order): all in stocks ("plain"),
# or with 30% cash where the table has such a regime ("safe").
FACTOR_REGIMES = {
    "plain": (Regime.MOMENTUM, Regime.LOW_VOL, Regime.QUALITY, Regime.SIZE_SMALL),
    "safe": (Regime.SAFE_MOMENTUM, Regime.LOW_VOL, Regime.SAFE_QUALITY, Regime.SIZE_SMALL),
}
WINDOWS = (20, 60, 120)
THRESHOLDS = (0.5, 1.0, 1.5, 2.0, 3.0)
EVERY = (5, 20)
FALLBACKS = ("hold", "rebalance")  # without a factor: hold equal weight, or rebalance to it
GRID = tuple(itertools.product(WINDOWS, THRESHOLDS, EVERY, tuple(FACTOR_REGIMES), FALLBACKS))


def factor_payoffs(price: np.ndarray, scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64 [T, F]: payoff of each factor at each bar of one world, as its regime earns
    it in the env (the basket chosen by the scores of bar t-2 at the close of t-1, held
    over bar t): the mean return over bar t of the top half (k = ceil(n / 2) of the n
    assets that exist) by the score of bar t-2, minus the mean return of the n. Rows 0
    and 1 are 0. Known after bar t."""
    ret = price[2:] / price[1:-1] - 1.0  # [T-2, A]: bar t's return at row t-2
    exists = mask[2:] & mask[1:-1] & mask[:-2]
    n = exists.sum(-1)
    k = np.ceil(n / 2).astype(int)
    out = np.zeros((price.shape[0], scores.shape[-1]))
    mean_all = np.where(exists, ret, 0.0).sum(-1) / np.maximum(n, 1)
    for f in range(scores.shape[-1]):
        s = np.where(exists, scores[:-2, :, f], -np.inf)
        rank = np.argsort(np.argsort(-s, axis=-1, kind="stable"), axis=-1)  # 0 = best
        top = exists & (rank < k[:, None])
        out[2:, f] = np.where(top, ret, 0.0).sum(-1) / np.maximum(k, 1) - mean_all
    return out


def switch_actions(payoff: np.ndarray, n_steps: int, window: int, threshold: float,
                   every: int, regimes: str = "plain", fallback: str = "hold") -> np.ndarray:
    """int32 [n_steps]: the switch's actions on a pass whose step s trades at bar s + 1 and
    has seen bars <= s (`payoff` of one world, [T, F])."""
    csum = np.concatenate([np.zeros((1, payoff.shape[1])), np.cumsum(payoff, 0)])
    csq = np.concatenate([np.zeros((1, payoff.shape[1])), np.cumsum(payoff ** 2, 0)])
    actions = np.full(n_steps, int(Regime.HOLD), np.int32)
    held = int(Regime.EQUAL_WEIGHT)
    actions[0] = held
    for s in range(every, n_steps, every):
        lo, hi = max(2, s + 1 - window), s + 1  # payoffs of bars lo .. s (seen)
        m = hi - lo
        if m < 5:
            continue
        mean = (csum[hi] - csum[lo]) / m
        var = np.maximum((csq[hi] - csq[lo]) / m - mean ** 2, 1e-18)
        t = mean / np.sqrt(var / m)
        best = int(np.argmax(t))
        if t[best] > threshold:
            held = int(FACTOR_REGIMES[regimes][best])
            actions[s] = held  # (re)balance into the factor's basket
        elif held != int(Regime.EQUAL_WEIGHT) or fallback == "rebalance":
            held = int(Regime.EQUAL_WEIGHT)
            actions[s] = held
    return actions


def walk_grid(seed: int, stream: str, n_worlds: int, bars: int) -> dict:
    """Sharpe [W, len(GRID)] of every candidate and buy-and-hold's [W] on one stream."""
    market, settings = worlds.pool_market(seed, stream, range(n_worlds), bars)
    env = PortfolioEnv(market)
    wb, n_steps = env.world_bars, env.world_bars - 2
    data = jax.device_get(market.data)
    actions = np.empty((n_worlds, len(GRID) + 1, n_steps), np.int32)
    for w in range(n_worlds):
        rows = slice(w * wb, (w + 1) * wb)
        payoff = factor_payoffs(np.asarray(data.price[rows], np.float64),
                                np.asarray(data.scores[rows], np.float64),
                                np.asarray(data.asset_mask[rows]))
        for i, candidate in enumerate(GRID):
            actions[w, i] = switch_actions(payoff, n_steps, *candidate)
        actions[w, -1] = Regime.HOLD
        actions[w, -1, 0] = Regime.EQUAL_WEIGHT  # buy-and-hold
    params = world_pass_params(env, EnvConfig())
    walk = make_baseline_walk(env)
    key = walk_key(seed)

    @jax.jit
    def run(actions, params):
        def one(a, p):
            return walk_metrics(walk(a, p, key), p, jnp.float32(market.bars_per_year))["sharpe"]

        return jax.vmap(one, in_axes=(0, world_axes(params)))(actions, params)

    sharpe = np.asarray(jax.device_get(run(jnp.asarray(actions), params)), np.float64)
    return {"sharpe": sharpe[:, :-1], "hold": sharpe[:, -1],
            "signal": np.asarray(settings.signal_strength, np.float64),
            "decisions": actions[:, :-1]}


def summary(sharpe: np.ndarray, hold: np.ndarray) -> list[dict]:
    """Per candidate: median Sharpe, median difference to buy-and-hold, share beating it."""
    return [{"window": w, "threshold": th, "every": k, "regimes": r, "fallback": fb,
             "median_sharpe": float(np.median(sharpe[:, i])),
             "median_over_buy_and_hold": float(np.median(sharpe[:, i] - hold)),
             "share_beating_buy_and_hold": float(np.mean(sharpe[:, i] > hold))}
            for i, (w, th, k, r, fb) in enumerate(GRID)]


def describe(row: dict) -> str:
    return (f"L {row['window']}, threshold {row['threshold']}, every {row['every']}, "
            f"{row['regimes']} regimes, otherwise {row['fallback']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.worlds_rules",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0, help="the run's --world-seed")
    p.add_argument("--val-worlds", type=int, default=64)
    p.add_argument("--test-worlds", type=int, default=128)
    p.add_argument("--bars", type=int, default=WorldsConfig().world_bars)
    p.add_argument("--out", type=Path, default=None, help="results directory")
    args = p.parse_args(argv)

    val = walk_grid(args.seed, "validation", args.val_worlds, args.bars)
    test = walk_grid(args.seed, "test", args.test_worlds, args.bars)
    val_rows, test_rows = summary(val["sharpe"], val["hold"]), summary(test["sharpe"],
                                                                        test["hold"])
    chosen = max(range(len(GRID)), key=lambda i: val_rows[i]["median_sharpe"])
    best_test = max(range(len(GRID)), key=lambda i: test_rows[i]["median_sharpe"])
    cols = [("window", "L", "d"), ("threshold", "threshold", ".1f"), ("every", "K", "d"),
            ("regimes", "regimes", ""), ("fallback", "otherwise", ""),
            ("median_sharpe", "median Sharpe", "+.2f"),
            ("median_over_buy_and_hold", "minus B&H", "+.2f"),
            ("share_beating_buy_and_hold", "beats B&H", ".0%")]
    print(f"validation worlds ({args.val_worlds}): buy-and-hold median Sharpe "
          f"{np.median(val['hold']):+.2f}")
    print(table(val_rows, cols))
    print(f"\ntest worlds ({args.test_worlds}): buy-and-hold median Sharpe "
          f"{np.median(test['hold']):+.2f}")
    print(table(test_rows, cols))
    c, b = test_rows[chosen], test_rows[best_test]
    by_group = {}
    for name, lo, hi in (("none", 0.0, 0.0), ("weak", 1e-9, 0.6), ("strong", 0.6, np.inf)):
        sel = test["signal"] == 0 if hi == 0 else (test["signal"] >= lo) & (test["signal"] < hi)
        d = test["sharpe"][sel, chosen] - test["hold"][sel]
        by_group[name] = {"worlds": int(sel.sum()), "median_over_buy_and_hold":
                          float(np.median(d)), "share_beating_buy_and_hold":
                          float(np.mean(d > 0))}
    print(f"\nchosen on validation ({len(GRID)} candidates): {describe(c)}: test median "
          f"Sharpe {c['median_sharpe']:+.2f}, "
          f"minus buy-and-hold {c['median_over_buy_and_hold']:+.2f}, beats it in "
          f"{c['share_beating_buy_and_hold']:.0%} of the test worlds")
    print("  by signal strength: " + ", ".join(
        f"{k} ({g['worlds']}): {g['median_over_buy_and_hold']:+.2f}, "
        f"{g['share_beating_buy_and_hold']:.0%}" for k, g in by_group.items()))
    print(f"best on the test worlds themselves (not a result): {describe(b)}: "
          f"{b['median_sharpe']:+.2f}, beats "
          f"buy-and-hold in {b['share_beating_buy_and_hold']:.0%}")
    path = save("worlds_rules", device_info(), [
        {"stream": "validation", "rows": val_rows},
        {"stream": "test", "rows": test_rows, "chosen_on_validation": c,
         "chosen_by_signal_group": by_group, "best_on_test": b}],
        args.out, {"seed": args.seed, "val_worlds": args.val_worlds,
                   "test_worlds": args.test_worlds, "bars": args.bars,
                   "grid": {"window": WINDOWS, "threshold": THRESHOLDS, "every": EVERY,
                            "regimes": {k: [r.name for r in v]
                                        for k, v in FACTOR_REGIMES.items()},
                            "fallback": FALLBACKS}})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

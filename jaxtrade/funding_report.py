"""The funding env's trading report: a policy and three rule-based baselines, day by day
through a range of hours, for fixed trading configs.

    python -m jaxtrade.funding_report --run-dir RUN [--range test] [--config 3,0.6,3 ...]

Each strategy trades every day of the range as one episode of `episode_length` hours
(the days back to back, each from cash 1.0, as training's episodes), under a fixed
config (max leverage, target utilisation, max positions; liquidation buffer 0 unless
given). A day ends flat: the env closes what is open at its last hour, with fees and
slippage, so a day's result is cash in hand (`info["exit_cost"]`, the cost of closing what
is still open, is subtracted too, for a walk cut short by the end of the range).
Strategies:

* policy: the run's best checkpoint (chosen on validation), greedy;
* never: holds cash (its return is 0 by construction);
* greedy: opens the best opportunity by fund_apr at the full position budget whenever a
  slot is free, closes a position when its pair's fund_apr turns negative;
* threshold: in the style of open-source funding-rate bots: enters the best opportunity
  when its fund_apr is at least `ENTER_APR` (30% a year), closes when it falls below
  `EXIT_APR` (10%: the stop on the funding spread) or when the position's funding plus
  unrealised PnL reaches `TAKE_PROFIT` (0.2%) of its notional. The rule's levels are
  fixed here, not tuned on any range.

Per strategy and config: total return (days compounded), daily Sharpe annualised with
sqrt(365), max drawdown of the compounded days, funding earned, fees and slippage paid
(percent of the starting equity, summed over days), legs liquidated, positions opened, the
mean hours a position was held, and the mean margin used over equity.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrade.envs.funding import HOLD, N_OPEN, SIZES, TOP_K, FundingEnv

ENTER_APR = 30.0  # percent a year
EXIT_APR = 10.0
TAKE_PROFIT = 0.002  # of a position's notional
FULL = SIZES.index(1.0)
CONFIGS = ((1.0, 0.4, 2), (3.0, 0.6, 3), (8.0, 0.75, 5))  # the three fixed configs
STRATEGIES = ("policy", "never", "greedy", "threshold")


def _first(mask_row):
    """Index of the first True of `mask_row` and whether there is one."""
    return jnp.argmax(mask_row), jnp.any(mask_row)


def rule_action(name: str, env: FundingEnv, state, params) -> jax.Array:
    """The action of baseline `name` ("never", "greedy", "threshold") in `state`."""
    if name == "never":
        return jnp.int32(HOLD)
    data, t, s = params.data, state.t, state.slots
    mask = env.action_mask(state, params)
    apr_now = env.pair_apr(data, t, s.symbol, s.long_ex, s.short_ex)
    top = data.top[t]
    offered = env.pair_apr(data, t, top[:, 0], top[:, 1], top[:, 2])
    opens = mask[1:N_OPEN + 1].reshape(TOP_K, len(SIZES))[:, FULL]
    if name == "greedy":
        leave = s.open & (apr_now < 0)
    elif name == "threshold":
        m_long = data.price[t, s.symbol, s.long_ex]
        m_short = data.price[t, s.symbol, s.short_ex]
        gain = s.funding + s.size * (jnp.where(s.alive_long, m_long - s.entry_long, 0.0)
                                     + jnp.where(s.alive_short, s.entry_short - m_short, 0.0))
        notional = s.size * s.entry_long
        leave = s.open & ((apr_now < EXIT_APR) | (gain >= TAKE_PROFIT * notional))
        opens = opens & (offered >= ENTER_APR)
    else:
        raise ValueError(f"unknown baseline {name!r}")
    slot, closing = _first(leave)
    k, opening = _first(opens)
    return jnp.where(closing, 1 + N_OPEN + slot,
                     jnp.where(opening, 1 + k * len(SIZES) + FULL, HOLD)).astype(jnp.int32)


def day_params(env: FundingEnv, split: str, episode_length: int, config, settings: dict):
    """Params of each day of `split` (leaves [D] where days differ: the start hour) and the
    vmap axes; `config` = (leverage, utilisation, max positions[, buffer])."""
    leverage, utilisation, positions, *rest = config
    buffer = rest[0] if rest else 0.0
    fixed = dict(settings, leverage_min=leverage, leverage_max=leverage,
                 utilisation_min=utilisation, utilisation_max=utilisation,
                 positions_min=int(positions), positions_max=int(positions),
                 buffer_min=buffer, buffer_max=buffer)
    lo, hi = env.market.ranges[split]
    starts = np.arange(lo, hi - 1 - episode_length + 1, episode_length)
    if len(starts) == 0:
        raise ValueError(f"the {split} range has no whole day of {episode_length} hours")
    one = env.make_params(split, episode_length=episode_length, start=int(starts[0]), **fixed)
    days = one.replace(start_min=jnp.asarray(starts, jnp.int32),
                       start_max=jnp.asarray(starts, jnp.int32))
    axes = jax.tree.map(lambda _: None, one).replace(start_min=0, start_max=0)
    return days, axes, starts


def rule_walk(name: str, env: FundingEnv, n_steps: int):
    """jit: (day params, axes) -> per-day info [D, n_steps] of baseline `name`."""

    def one(params, key):
        _, state = env.reset(key, params)

        def body(state, k):
            action = rule_action(name, env, state, params)
            _, new, _, _, info = env.step_env(k, state, action, params)
            return new, info

        return jax.lax.scan(body, state, jax.random.split(key, n_steps))[1]

    return one


def day_metrics(info: dict, episode_hours: int) -> dict:
    """The report's numbers from per-day info leaves [D, T] (numpy)."""
    final = info["equity"][:, -1] - info["exit_cost"][:, -1]
    days = final - 1.0
    curve = np.cumprod(1.0 + days)
    peak = np.maximum.accumulate(np.concatenate([[1.0], curve]))
    drawdown = float(np.max(1.0 - np.concatenate([[1.0], curve]) / peak))
    std = float(np.std(days, ddof=1)) if len(days) > 1 else 0.0
    opened = float(info["opened"].sum())
    position_hours = float(info["positions"].sum())
    equity = np.maximum(info["equity"], 1e-9)
    return {
        "days": int(len(days)),
        "total_return": float(curve[-1] - 1.0),
        "sharpe": float(np.mean(days) / std * np.sqrt(365.0)) if std > 0 else 0.0,
        "max_drawdown": drawdown,
        "funding": float(info["funding"].sum()),
        "fees": float(info["fees"].sum() + info["slippage"].sum()
                      + info["exit_cost"][:, -1].sum()),
        "liquidations": int(info["liquidations"].sum()),
        "positions_opened": int(opened),
        "mean_hours_held": position_hours / opened if opened else 0.0,
        "utilisation": float(np.mean(info["margin_used"] / equity)),
        "daily_returns": days.tolist(),
    }


def report(run_dir: str | Path, split: str = "test", configs=CONFIGS, seed: int = 0) -> dict:
    """Every strategy under every config through the days of `split` (see the module
    docstring); {config label: {strategy: metrics}}."""
    from jaxtrade import checkpoint as ckpt
    from jaxtrade.engine.start import load_run_market
    from jaxtrade.evaluation import make_policy_walk
    from jaxtrade.trainer import build_network

    source = ckpt.select(run_dir, "best")
    cfg = source.config
    if cfg.env.name != "funding":
        raise ValueError(f"{run_dir} trained the {cfg.env.name} env, not funding")
    env = FundingEnv(load_run_market(cfg, test=True))
    hours = cfg.env.episode_length
    settings = {k: v for k, v in cfg.env.params_kwargs().items() if k != "episode_length"}
    network = build_network(cfg, env)
    params = ckpt.read_params(source)
    walk = make_policy_walk(network, env, hours)
    key = jax.random.key(seed)
    walks = {name: rule_walk(name, env, hours) for name in STRATEGIES if name != "policy"}
    walks["policy"] = lambda p: jax.tree.map(lambda x: x[:, 0], walk(params, p, key)[1].info)
    fns = {}  # compiled once per strategy: every config's day params have the same shapes
    out = {}
    for config in configs:
        days, axes, _ = day_params(env, split, hours, config, settings)
        table = {}
        for name in STRATEGIES:
            if name not in fns:
                one = walks[name]
                fns[name] = jax.jit(jax.vmap(
                    one if name == "policy" else (lambda p, one=one: one(p, key)),
                    in_axes=(axes,)))
            info = {k: np.asarray(v, np.float64)
                    for k, v in jax.device_get(fns[name](days)).items()}
            table[name] = day_metrics(info, hours)
        out["{}x / {:.0%} / {} positions".format(*config[:3])] = table
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxtrade.funding_report",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True)
    p.add_argument("--range", default="test", choices=("train", "validation", "test"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="report JSON (default RUN/eval/funding.json)")
    args = p.parse_args(argv)
    result = report(args.run_dir, args.range, seed=args.seed)
    print(f"{'config':<28} {'strategy':<10} {'return':>8} {'Sharpe':>7} {'max DD':>7} "
          f"{'funding':>8} {'costs':>7} {'liq':>4} {'opened':>6} {'hours':>6} {'util':>5}")
    for label, table in result.items():
        for name, m in table.items():
            print(f"{label:<28} {name:<10} {100 * m['total_return']:>+7.2f}% "
                  f"{m['sharpe']:>+7.2f} {100 * m['max_drawdown']:>6.2f}% "
                  f"{100 * m['funding']:>+7.3f}% {100 * m['fees']:>6.3f}% "
                  f"{m['liquidations']:>4d} {m['positions_opened']:>6d} "
                  f"{m['mean_hours_held']:>6.1f} {m['utilisation']:>5.2f}")
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval" / "funding.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"range": args.range, "configs": result}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

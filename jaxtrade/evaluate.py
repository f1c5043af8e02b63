"""`python -m jaxtrade.evaluate`: a trained policy and the baselines in one continuous pass of a
date range; report.json, equity.csv, decisions.csv, equity.png and a table (host-only).

No evaluation logic lives here: the passes and metrics are `jaxtrade.evaluation`'s, loading
the run is `jaxtrade.policy`'s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxtrade import __version__
from jaxtrade.data import features as feats
from jaxtrade.data.panel import DataError, format_date

COLUMNS = (  # the terminal table: (header, metric, format)
    ("total", "total_return", "{:+.2%}"),
    ("annual", "annual_return", "{:+.2%}"),
    ("Sharpe", "sharpe", "{:+.2f}"),
    ("Sortino", "sortino", "{:+.2f}"),
    ("max DD", "max_drawdown", "{:.2%}"),
    ("Calmar", "calmar", "{:+.2f}"),
    ("win rate", "win_rate", "{:.1%}"),
    ("turnover", "turnover_total", "{:.2f}"),
    ("costs", "costs_fraction", "{:.3%}"),
)


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxtrade.evaluate",
        description="Walk a trained policy and the baselines (cash, buy and hold, equal weight, "
                    "each fixed regime) once through a date range, with the training frictions.",
        allow_abbrev=False,  # a misspelt flag is an error, never another flag
    )
    add = p.add_argument
    add("--run-dir", required=True, help="the training run directory")
    add("--checkpoint", default="best",
        help="best (by eval_score, else episode return), latest, or an iteration number [best]")
    add("--data", metavar="PATH",
        help="CSV/Parquet file or directory of per-symbol CSVs, as training accepts, with the "
             "run's asset count; default: the run's own data")
    add("--start", metavar="DATE",
        help="first bar of the range; default: the run's held-out range (with --data: the "
             "data's first bar after the 20-bar feature window)")
    add("--end", metavar="DATE", help="last bar of the range (inclusive)")
    add("--out", metavar="DIR", help="output directory [RUN_DIR/eval]")
    add("--sample", action="store_true", help="sample the policy's actions instead of greedy")
    add("--seed", type=int,
        help="key of the slippage draws (and of --sample) [the run's seed, as training's "
             "evaluations]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jaxtrade.checkpoint import CheckpointError
    from jaxtrade.config import ConfigError
    from jaxtrade.evaluation import EvaluationError

    try:
        return _evaluate(args)
    except (CheckpointError, ConfigError, DataError, EvaluationError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _date(text: str, flag: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        stamp = pd.NaT
    if pd.isna(stamp):
        raise UsageError(f"{flag} {text!r} is not a date (expected YYYY-MM-DD[ HH:MM])")
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tz is not None else stamp


def select_range(dates: pd.DatetimeIndex, start: str | None, end: str | None,
                 default: tuple[str, str] | None) -> tuple[int, int, list[str]]:
    """Bars [first, last] of the pass and notes for the user.

    `start`/`end` as given (an `end` at midnight includes its whole day), else `default`
    (dates), else the whole market. The first bar is at least 1: the first decision reads
    the features of the bar before it.
    """
    notes = []
    if start is None and end is None and default is not None:
        start, end = default
    lo = _date(start, "--start") if start is not None else None
    hi = _date(end, "--end") if end is not None else None
    if lo is not None and hi is not None and lo > hi:
        raise UsageError(f"--start {start} is after --end {end}")
    first = 1 if lo is None else int(dates.searchsorted(lo, "left"))
    if hi is None:
        last = len(dates) - 1
    else:
        bound = hi + pd.Timedelta(days=1) if hi == hi.normalize() else hi
        last = int(dates.searchsorted(bound, "left" if hi == hi.normalize() else "right")) - 1
    if first < 1:
        first = 1
        if lo is not None:
            notes.append(f"the pass starts at {format_date(dates[1])}: the bars before feed the "
                         f"{feats.WINDOW}-bar feature window and the first decision")
    span = (f"{format_date(dates[1])} .. {format_date(dates[-1])}")
    if first >= len(dates) or last < 1 or last - first < 1:
        raise UsageError(
            f"the range {start or 'start'} .. {end or 'end'} holds fewer than 2 bars with "
            f"features; the data's bars with features are {span}"
        )
    return first, last, notes


def _evaluate(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from jaxtrade.data.loader import load_panel
    from jaxtrade.data.market import load_market
    from jaxtrade.envs import NAMES, PortfolioEnv
    from jaxtrade.evaluation import (
        HEALTH_KEYS,
        STRATEGIES,
        make_strategy_walk,
        pass_params,
        score,
        walk_key,
    )
    from jaxtrade.policy import CASH, load_policy

    if not Path(args.run_dir).is_dir():
        raise UsageError(f"{args.run_dir}: no such run directory")
    policy = load_policy(args.run_dir, args.checkpoint, seed=args.seed)
    cfg, record, source = policy.config, policy.record, policy.checkpoint

    if args.data:
        panel = load_panel(args.data, max_fill=cfg.data.max_fill)
        chosen = policy.choose_symbols(panel.symbols, args.data)
        if chosen is not None and list(panel.symbols) != chosen:
            panel = load_panel(args.data, symbols=chosen, max_fill=cfg.data.max_fill)
        market = policy.market(panel)
        default, what = None, "the whole data"
    else:
        d = cfg.data
        market = load_market(d.path, symbols=d.symbols, start=d.start, end=d.end,
                             max_fill=d.max_fill, synthetic=d.synthetic(), stats=policy.stats,
                             episode_length=1, eval_fraction=0.0)
        held = record.get("held_out")
        if held is None and args.start is None and args.end is None:
            raise UsageError(f"{args.run_dir} holds no bars out (trained on all of its data); "
                             f"choose a range with --start/--end, or other data with --data")
        default = (held["start"], held["end"]) if held else None
        what = "the run's held-out range"
    if args.start is not None or args.end is not None:
        what = "the requested range"
    first, last, notes = select_range(market.dates, args.start, args.end, default)
    n_steps = last - first
    seed = policy.seed

    env = PortfolioEnv(market)
    env_params = pass_params(env, cfg.env, first, last)
    walk = jax.jit(make_strategy_walk(policy.network, env, n_steps, greedy=not args.sample))
    strategies, metrics = jax.device_get(walk(
        policy.params, env_params, walk_key(seed), jnp.float32(market.bars_per_year)
    ))

    health = source.meta.get("metrics") or {}
    model_score = None
    if all(k in health for k in HEALTH_KEYS):
        row = {k: v[0] for k, v in metrics.items()}
        model_score = float(score(row, health))

    dates = market.dates[first:last + 1]
    names = [*market.symbols, CASH]
    table = {}
    for i, name in enumerate(STRATEGIES):
        m = {k: _plain(v[i]) for k, v in metrics.items()}
        m["action_freq"] = dict(zip(NAMES, m["action_freq"], strict=True))
        m["final_value"] = float(strategies.values[i, -1])
        table[name] = m

    out = Path(args.out) if args.out else Path(args.run_dir) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "jaxtrade_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_dir": str(Path(args.run_dir)),
        "checkpoint": {
            "requested": str(args.checkpoint),
            "iteration": source.step,
            "path": str(source.path),
            "timesteps": source.meta.get("timesteps"),
            "eval_score": health.get("eval_score"),
        },
        "data": {
            "source": market.source,
            "symbols": list(market.symbols),
            "trained_symbols": list(policy.symbols),
            "bars_per_year": market.bars_per_year,
        },
        "range": {
            "start": format_date(dates[0]),
            "end": format_date(dates[-1]),
            "bars": len(dates),
            "steps": n_steps,
            "what": what,
        },
        "actions": "sampled" if args.sample else "greedy",
        "seed": seed,
        # The run's frictions and penalties; a pass has no episode cuts and no ruin stop.
        "env": {k: v for k, v in cfg.env.params_kwargs().items()
                if k not in ("episode_length", "ruin_fraction")},
        "model_score": model_score,
        "strategies": table,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    equity = pd.DataFrame({"date": [format_date(d) for d in dates],
                           **{s: strategies.values[i] for i, s in enumerate(STRATEGIES)}})
    equity.to_csv(out / "equity.csv", index=False, float_format="%.10g")
    decisions = pd.DataFrame({
        "date": [format_date(d) for d in dates[:-1]],
        "regime": [NAMES[a] for a in strategies.actions[0]],
        **{f"w_{k}": strategies.weights[0, :, j] for j, k in enumerate(names)},
        "turnover": strategies.turnover[0],
        "cost": strategies.costs[0],
    })
    decisions.to_csv(out / "decisions.csv", index=False, float_format="%.10g")
    plot_equity(out / "equity.png", dates, strategies.values, STRATEGIES,
                title=f"{args.run_dir} @ {source.step} | {report['range']['start']} .. "
                      f"{report['range']['end']}")

    how = "sampled" if args.sample else "greedy"
    print(f"policy: {source.path} ({args.checkpoint}; {how}, seed {seed})"
          + (f"; model score {model_score:+.2f}" if model_score is not None else ""))
    print(f"range: {report['range']['start']} .. {report['range']['end']} "
          f"({len(dates)} bars, {what}) of {market.source}")
    for note in notes:
        print(f"note: {note}")
    print(format_table(table))
    print(f"wrote report.json, equity.csv, decisions.csv, equity.png to {out}")
    return 0


def _plain(x: Any) -> Any:
    x = np.asarray(x)
    return x.tolist() if x.ndim else x.item()


def format_table(table: dict[str, dict]) -> str:
    """Strategies as rows, the headline metrics as columns."""
    width = max(len(name) for name in table) + 2
    header = "strategy".ljust(width) + "".join(h.rjust(10) for h, _, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, m in table.items():
        cells = []
        for _, key, fmt in COLUMNS:
            v = m[key]
            cells.append((fmt.format(v) if math.isfinite(v) else str(v)).rjust(10))
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)


def plot_equity(path: Path, dates: pd.DatetimeIndex, values: np.ndarray, names, title: str):
    """Equity curves (policy bold) over a drawdown panel, as a PNG (matplotlib, no pyplot)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 7), layout="constrained")
    ax_eq, ax_dd = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    colors = colormaps["tab20"]
    for i, name in enumerate(names):
        bold = i == 0
        peak = np.maximum.accumulate(values[i])
        style = dict(lw=2.2 if bold else 0.9, alpha=1.0 if bold else 0.8, zorder=3 if bold else 2,
                     color="black" if bold else colors((i - 1) % 20))
        ax_eq.plot(dates, values[i], label=name, **style)
        ax_dd.plot(dates, values[i] / peak - 1.0, **style)
    ax_eq.set_ylabel("value (start = 1)")
    ax_eq.set_title(title, fontsize=10)
    ax_eq.grid(alpha=0.3)
    ax_eq.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax_dd.set_ylabel("drawdown")
    ax_dd.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.exit(main())

"""`python -m jaxtrade.evaluate`: a trained policy and the baselines in one continuous pass of a
date range (the run's untouched test range by default), compared honestly: the baseline to
beat is chosen on the validation range, and the statistics count the candidates compared;
report.json, equity.csv, decisions.csv, equity.png and a table (host-only).

No evaluation logic lives here: the passes and metrics are `jaxtrade.evaluation`'s, the
comparison (baseline choice, candidates, statistics, verdict) `jaxtrade.report`'s, loading
the run `jaxtrade.policy`'s.
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
from jaxtrade.data.panel import DataError, format_date, parse_date

COLUMNS = (  # the terminal table: (header, metric, format)
    ("total", "total_return", "{:+.2%}"),
    ("annual", "annual_return", "{:+.2%}"),
    ("Sharpe", "sharpe", "{:+.2f}"),
    ("PSR", "psr", "{:.2f}"),
    ("DSR", "dsr", "{:.2f}"),
    ("max DD", "max_drawdown", "{:.2%}"),
    ("Sortino", "sortino", "{:+.2f}"),
    ("turnover", "turnover_total", "{:.2f}"),
    ("costs", "costs_fraction", "{:.3%}"),
)
RANGE_CHOICES = ("test", "validation", "train", "all")
HEADLINE = ("buy_and_hold", "cash", "EQUAL_WEIGHT/1")  # shown beside the policy and the
# chosen baseline; --all shows every strategy


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxtrade.evaluate",
        description="Walk a trained policy and the baselines (cash, buy and hold, each fixed "
                    "regime rebalanced every 1, 5 or 20 bars) once through a date range with the "
                    "training frictions, and compare the policy with the baseline chosen on the "
                    "validation range.",
        allow_abbrev=False,  # a misspelt flag is an error, never another flag
    )
    add = p.add_argument
    add("--run-dir", required=True, help="the training run directory")
    add("--checkpoint", default="best",
        help="best (by val_score on the validation range, else episode return), latest, or "
             "an iteration number [best]")
    add("--data", metavar="PATH",
        help="CSV/Parquet file or directory of per-symbol CSVs, as training accepts, with the "
             "run's asset count; default: the run's own data")
    add("--range", choices=RANGE_CHOICES,
        help="the run's range to report: test (never read in training), validation (chose the "
             "checkpoint: optimistic), train, or all [test]")
    add("--start", metavar="DATE",
        help="first bar of a range of your choosing (instead of --range; with --data, default "
             "the data's first bar after the 20-bar feature window)")
    add("--end", metavar="DATE", help="last bar of a range of your choosing (inclusive)")
    add("--all", action="store_true", help="every baseline in the table, not only the headline")
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
    stamp = parse_date(text)
    if stamp is None:
        raise UsageError(f"{flag} {text!r} is not a date (expected YYYY-MM-DD[ HH:MM])")
    return stamp


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

    from jaxtrade import report as comparison
    from jaxtrade.data.loader import load_panel
    from jaxtrade.data.market import MARKET_FILE, load_market, span_bounds
    from jaxtrade.envs import NAMES, PortfolioEnv
    from jaxtrade.evaluation import (
        BASELINES,
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
    custom = args.start is not None or args.end is not None
    if args.range and (custom or args.data):
        raise UsageError("--range picks one of the run's own ranges; for a range of your choosing "
                         "give --start/--end (and --data for other data) instead")
    record_path = Path(args.run_dir) / MARKET_FILE
    if record_path.exists() and json.loads(record_path.read_text()).get("format", 1) < 2:
        raise UsageError(f"{args.run_dir} was trained before train, validation and test ranges "
                         f"existed: its best checkpoint was chosen on the range it would "
                         f"report, and its config uses older keys; train it again")
    policy = load_policy(args.run_dir, args.checkpoint, seed=args.seed)
    cfg, record, source = policy.config, policy.record, policy.checkpoint
    if cfg.env.name != PortfolioEnv.name:
        raise UsageError(f"{args.run_dir} trained the {cfg.env.name} env; evaluate reports "
                         f"trading strategies of the {PortfolioEnv.name} env only")
    d = cfg.data
    own = load_market(d.path, symbols=d.symbols, start=d.start, end=d.end, max_fill=d.max_fill,
                      synthetic=d.synthetic(), stats=policy.stats, episode_length=1,
                      val_fraction=0.0, test_fraction=0.0)
    if args.data:
        panel = load_panel(args.data, max_fill=d.max_fill)
        chosen = policy.choose_symbols(panel.symbols, args.data)
        if chosen is not None and list(panel.symbols) != chosen:
            panel = load_panel(args.data, symbols=chosen, max_fill=d.max_fill)
        market, range_name, default = policy.market(panel), None, None
        what = "the whole data" if not custom else "the requested range"
    else:
        market = own
        range_name = None if custom else (args.range or "test")
        if range_name in (None, "all"):
            default, what = None, "the requested range" if custom else "all of the run's data"
        else:
            span = record.get(range_name)
            if span is None:
                raise UsageError(
                    f"{args.run_dir} has no {range_name} range ({_fractions(cfg)}); choose "
                    f"another with --range, or dates with --start/--end")
            default = span
            what = {"test": "the run's test range, never read in training",
                    "validation": "the run's validation range, which chose the checkpoint: "
                                  "optimistic",
                    "train": "the run's training range: in-sample"}[range_name]
    if isinstance(default, dict):  # one of the run's ranges, matched on its exact bars
        first, last = span_bounds(market.dates, default)
        first, notes = max(first, 1), []
    else:
        first, last, notes = select_range(market.dates, args.start, args.end, None)
    n_steps = last - first
    seed = policy.seed

    # The baseline to beat, chosen on the run's validation range (as a user without RL would).
    choice = comparison.choose_on_validation(own, record, cfg.env, seed)

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

    selection = comparison.checkpoint_selection(args.run_dir, args.checkpoint)
    chosen = choice["name"] if choice else None
    baseline = chosen or "buy_and_hold"
    statistics = comparison.honest_statistics(
        {name: strategies.values[i] for i, name in enumerate(STRATEGIES)}, baseline,
        market.bars_per_year, selection, choice, record["bars_per_year"], seed)
    dates = market.dates[first:last + 1]
    names = [*market.symbols, CASH]
    table = {}
    for i, name in enumerate(STRATEGIES):
        m = {k: _plain(v[i]) for k, v in metrics.items()}
        m["action_freq"] = dict(zip(NAMES, m["action_freq"], strict=True))
        m["final_value"] = float(strategies.values[i, -1])
        stats_of = statistics["strategies"].get(name, {})
        m["psr"], m["dsr"] = stats_of.get("psr", math.nan), stats_of.get("dsr", math.nan)
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
            "val_score": health.get("val_score"),
        },
        "selection": selection,
        "data": {
            "source": market.source,
            "symbols": list(market.symbols),
            "trained_symbols": list(policy.symbols),
            "bars_per_year": market.bars_per_year,
        },
        "range": {
            "name": range_name,
            "start": format_date(dates[0]),
            "end": format_date(dates[-1]),
            "bars": len(dates),
            "steps": n_steps,
            "what": what,
        },
        "ranges": {name: record.get(name) for name in ("train", "validation", "test")},
        "actions": "sampled" if args.sample else "greedy",
        "seed": seed,
        # The run's frictions and penalties; a pass has no episode cuts and no ruin stop.
        "env": {k: v for k, v in cfg.env.params_kwargs().items()
                if k not in ("episode_length", "ruin_fraction")},
        "model_score": model_score,
        "baseline": choice or {"name": baseline, "chosen_on": None,
                               "why": "the run has no validation range to choose one on"},
        "statistics": statistics,
        "verdict": comparison.verdict(statistics, baseline, range_name),
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
    shown = headline(baseline)
    plot_equity(out / "equity.png", dates,
                np.stack([strategies.values[STRATEGIES.index(n)] for n in shown]),
                [label(n, chosen) for n in shown],
                title=f"{args.run_dir} @ {source.step} | {report['range']['start']} .. "
                      f"{report['range']['end']} ({range_name or 'chosen dates'})")

    how = "sampled" if args.sample else "greedy"
    print(f"policy: {source.path} ({selection['chosen_by']}; {how}, seed {seed})"
          + (f"; model score {model_score:+.2f}" if model_score is not None else ""))
    print(f"range: {report['range']['start']} .. {report['range']['end']} "
          f"({len(dates)} bars, {what}) of {market.source}")
    if choice:
        print(f"baseline: {baseline}, the best fixed strategy by Sharpe on the validation range "
              f"({choice['validation']['start']} .. {choice['validation']['end']}; Sharpe "
              f"{choice['validation_sharpe'][baseline]:+.2f} there) among {len(BASELINES)} "
              f"compared ({choice['candidates']} distinct)")
    else:
        print("baseline: buy_and_hold (the run has no validation range to choose one on)")
    for note in notes:
        print(f"note: {note}")
    rows = STRATEGIES if args.all else shown
    print(format_table({label(n, chosen): table[n] for n in rows}))
    for line in statistics_lines(statistics, baseline):
        print(line)
    print(f"verdict: {report['verdict']}")
    print(f"wrote report.json, equity.csv, decisions.csv, equity.png to {out}")
    return 0


def _fractions(cfg) -> str:
    d = cfg.data
    if d.split_dates:
        return f"split_dates={','.join(d.split_dates)}"
    return f"val_fraction={d.val_fraction:g}, test_fraction={d.test_fraction:g}"


def headline(baseline: str) -> list[str]:
    """The strategies the table and plot show by default: the policy, the baseline to beat,
    then `HEADLINE` (each once)."""
    from jaxtrade.evaluation import POLICY

    return list(dict.fromkeys([POLICY, baseline, *HEADLINE]))


def label(name: str, chosen: str | None) -> str:
    """A strategy's name in the table and plot; the baseline chosen on validation is marked."""
    return f"{name} (best fixed)" if name == chosen else name


def statistics_lines(statistics: dict, baseline: str) -> list[str]:
    """The intervals in words, under the table."""
    diff, ann = statistics.get("sharpe_difference"), statistics.get("policy_annual_return")
    if diff is None:
        return [f"statistics: {statistics.get('note', 'not available')}"]
    level = f"{diff['level']:.0%}"
    return [
        f"Sharpe of policy minus {baseline}: {diff['sharpe_diff']:+.2f}, {level} interval "
        f"[{diff['ci_low']:+.2f}, {diff['ci_high']:+.2f}] (stationary bootstrap, mean block "
        f"{diff['mean_block']:.1f} bars, {diff['n_resamples']:,} resamples)",
        f"policy annualised return: {ann['estimate']:+.2%}, {level} interval "
        f"[{ann['ci_low']:+.2%}, {ann['ci_high']:+.2%}]",
    ]


def _plain(x: Any) -> Any:
    x = np.asarray(x)
    return x.tolist() if x.ndim else x.item()


def format_table(table: dict[str, dict]) -> str:
    """Strategies as rows, the headline metrics as columns; "-" where a metric is undefined
    (cash has no PSR)."""
    width = max(len(name) for name in table) + 2
    header = "strategy".ljust(width) + "".join(h.rjust(10) for h, _, _ in COLUMNS)
    lines = [header, "-" * len(header)]
    for name, m in table.items():
        cells = []
        for _, key, fmt in COLUMNS:
            v = m[key]
            cells.append((fmt.format(v) if math.isfinite(v) else "-").rjust(10))
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

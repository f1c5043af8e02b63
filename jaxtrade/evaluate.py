"""`python -m jaxtrade.evaluate`: a trained policy and the baselines in one continuous pass of a
date range (the run's untouched test range by default), compared honestly: the baseline to
beat is chosen on the validation range, and the statistics count the candidates compared;
report.json, equity.csv, decisions.csv, equity.png and a table (host-only). A run of an env
without the trading report (`Environment.trading`) gets the episode report instead: its
policy against a uniformly random one over the first episodes of 64 envs of the env's test
params (or `--range validation|train`), same keys; report.json and a table. An env with a
report of its own (`Environment.evaluation`) gets that: the funding env's policy and
baselines day by day under fixed trading configs (`jaxtrade.funding_report`; the user's
with --leverage, --utilisation, --max-positions, --buffer).

No evaluation logic lives here: `jaxtrade.engine.assess` computes the comparison (from
`jaxtrade.evaluation`'s passes and metrics, `jaxtrade.report`'s baseline choice, candidates,
statistics and verdict, and `jaxtrade.policy`'s loading); this module parses flags, writes
the files and prints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from jaxtrade.data.panel import DataError, format_date
from jaxtrade.errors import UsageError

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
EPISODE_COLUMNS = (  # the episode report's table: (header, metric, format)
    ("return mean", "return_mean", "{:+.4f}"),
    ("return std", "return_std", "{:.4f}"),
    ("length", "length_mean", "{:.1f}"),
    ("episodes", "episodes", "{:d}"),
)
RANGE_CHOICES = ("test", "validation", "train", "all")
HEADLINE = ("buy_and_hold", "cash", "EQUAL_WEIGHT/1")  # shown beside the policy and the
# chosen baseline; --all shows every strategy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxtrade.evaluate",
        description="Walk a trained policy and the baselines (cash, buy and hold, each fixed "
                    "regime rebalanced every 1, 5 or 20 bars) once through a date range with the "
                    "training frictions, and compare the policy with the baseline chosen on the "
                    "validation range. A run of an env without trading walks gets its episode "
                    "report instead: the policy against a uniformly random one on the env's "
                    "test params (or --range validation/train).",
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
    g = p.add_argument_group(
        "funding runs", "the user's trading config, reported instead of the three reference "
                        "configs (1x / 40% / 2, 3x / 60% / 3, 8x / 75% / 5); give the first "
                        "three together")
    g.add_argument("--leverage", type=float, help="max leverage of a position, e.g. 3")
    g.add_argument("--utilisation", type=float,
                   help="target share of equity used as margin, e.g. 0.6")
    g.add_argument("--max-positions", type=int, help="positions held at once, 1 to 5")
    g.add_argument("--buffer", type=float,
                   help="close a position when a leg gets this near (fraction of its entry) "
                        "its liquidation price [0]")
    return p


def trading_config(args: argparse.Namespace) -> tuple | None:
    """The funding flags as one config tuple (leverage, utilisation, max positions, buffer),
    None when none is given.

    Raises:
      UsageError: some of the first three flags without the others.
    """
    given = [args.leverage, args.utilisation, args.max_positions]
    if all(v is None for v in given) and args.buffer is None:
        return None
    if any(v is None for v in given):
        raise UsageError("a trading config needs --leverage, --utilisation and "
                         "--max-positions together (--buffer is optional)")
    return ((args.leverage, args.utilisation, args.max_positions, args.buffer or 0.0),)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jaxtrade.checkpoint import CheckpointError
    from jaxtrade.config import ConfigError
    from jaxtrade.evaluation import EvaluationError
    from jaxtrade.schedule import ScheduleError

    try:
        return _evaluate(args)
    except (CheckpointError, ConfigError, DataError, EvaluationError, ScheduleError,
            UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    from jaxtrade.engine.assess import AssessRequest, EpisodeAssessment, assess
    from jaxtrade.engine.worlds_report import WorldsAssessment
    from jaxtrade.population_run import SETTINGS_FILE

    run_dir = Path(args.run_dir)  # an archived member keeps population.json beside its checkpoint
    from jaxtrade import walk_forward_report as wfr

    if wfr.is_walk_forward(run_dir):  # each fold's member on its own test block, concatenated
        wfr.check_flags(args)
        result = wfr.assess(run_dir, seed=args.seed, sample=args.sample)
        out = Path(args.out) if args.out else run_dir / "eval"
        written = wfr.write_outputs(out, result, args.run_dir)
        wfr.print_report(result, show_all=args.all)
        print(f"wrote {', '.join(written)} to {out}")
        return 0
    if (run_dir / SETTINGS_FILE).exists() and not (run_dir / "checkpoints").exists():
        raise UsageError(
            f"{args.run_dir} is a population run: archive its members (python -m "
            f"jaxtrade.archive add {args.run_dir}) and evaluate one of them (python -m "
            f"jaxtrade.evaluate --run-dir ckpt/archive/models/<id>), whose deflated Sharpe "
            f"counts every member's every validation")

    result = assess(AssessRequest(
        run_dir=args.run_dir, checkpoint=args.checkpoint, data=args.data, range=args.range,
        start=args.start, end=args.end, sample=args.sample, seed=args.seed,
        settings=trading_config(args),
    ))
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval"
    if hasattr(result, "write"):  # an env's own report (`Environment.evaluation`)
        written = result.write(out)
        print("\n".join(result.lines(show_all=args.all)))
        print(f"wrote {', '.join(written)} to {out}")
        return 0
    if isinstance(result, WorldsAssessment):
        write_worlds_outputs(out, result, args.run_dir)
        print_worlds_report(result.report, show_all=args.all)
        print(f"wrote report.json, worlds.csv, worlds.png to {out}")
        return 0
    if isinstance(result, EpisodeAssessment):
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")
        print_episode_report(result.report)
        print(f"wrote report.json to {out}")
        return 0
    write_outputs(out, result, args.run_dir)
    print_report(result, show_all=args.all)
    print(f"wrote report.json, equity.csv, decisions.csv, equity.png to {out}")
    return 0


def write_outputs(out: Path, result, run_dir: str) -> None:
    """report.json, equity.csv (every strategy), decisions.csv (the policy's), equity.png."""
    from jaxtrade.envs import NAMES
    from jaxtrade.evaluation import STRATEGIES

    report, dates, strategies = result.report, result.dates, result.strategies
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    equity = pd.DataFrame({"date": [format_date(d) for d in dates],
                           **{s: strategies.values[i] for i, s in enumerate(STRATEGIES)}})
    equity.to_csv(out / "equity.csv", index=False, float_format="%.10g")
    decisions = pd.DataFrame({
        "date": [format_date(d) for d in dates[:-1]],
        "regime": [NAMES[a] for a in strategies.actions[0]],
        **{f"w_{k}": strategies.weights[0, :, j] for j, k in enumerate(result.symbols)},
        "turnover": strategies.turnover[0],
        "cost": strategies.costs[0],
    })
    decisions.to_csv(out / "decisions.csv", index=False, float_format="%.10g")
    shown = headline(result.baseline)
    r = report["range"]
    plot_equity(out / "equity.png", dates,
                np.stack([strategies.values[STRATEGIES.index(n)] for n in shown]),
                [label(n, result.chosen) for n in shown],
                title=f"{run_dir} @ {report['checkpoint']['iteration']} | {r['start']} .. "
                      f"{r['end']} ({r['name'] or 'chosen dates'})")


def print_report(result, show_all: bool) -> None:
    """The policy, range and baseline lines, the table, the intervals and the verdict."""
    from jaxtrade.evaluation import BASELINES, STRATEGIES

    report, baseline, choice = result.report, result.baseline, result.choice
    r, score = report["range"], report["model_score"]
    print(f"policy: {report['checkpoint']['path']} ({report['selection']['chosen_by']}; "
          f"{report['actions']}, seed {report['seed']})"
          + (f"; model score {score:+.2f}" if score is not None else ""))
    print(f"range: {r['start']} .. {r['end']} ({r['bars']} bars, {r['what']}) of "
          f"{report['data']['source']}")
    if choice and choice["chosen_on"] == "validation worlds":
        print(f"baseline: {baseline}, the best fixed strategy by median Sharpe over the run's "
              f"{choice['validation_worlds']} validation worlds "
              f"({choice['validation_sharpe'][baseline]:+.2f} there)")
    elif choice:
        print(f"baseline: {baseline}, the best fixed strategy by Sharpe on the validation range "
              f"({choice['validation']['start']} .. {choice['validation']['end']}; Sharpe "
              f"{choice['validation_sharpe'][baseline]:+.2f} there) among {len(BASELINES)} "
              f"compared ({choice['candidates']} distinct)")
    else:
        print("baseline: buy_and_hold (the run has no validation range to choose one on)")
    for note in result.notes:
        print(f"note: {note}")
    rows = STRATEGIES if show_all else headline(baseline)
    print(format_table({label(n, result.chosen): result.table[n] for n in rows}))
    for line in statistics_lines(report["statistics"], baseline):
        print(line)
    print(f"verdict: {report['verdict']}")


WORLD_COLUMNS = (  # the worlds table: (header, metric, format), medians over worlds
    ("Sharpe", "sharpe", "{:+.2f}"),
    ("p25", "sharpe", "{:+.2f}"),
    ("p75", "sharpe", "{:+.2f}"),
    ("return", "total_return", "{:+.2%}"),
    ("max DD", "max_drawdown", "{:.2%}"),
    ("turnover", "turnover_total", "{:.2f}"),
    ("costs", "costs_fraction", "{:.3%}"),
)


def write_worlds_outputs(out: Path, result, run_dir: str) -> None:
    """report.json, worlds.csv (a row per world: its settings, the headline strategies'
    Sharpe ratios and returns, the policy's PSR and DSR) and worlds.png."""
    from jaxtrade.evaluation import POLICY, STRATEGIES

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")
    pd.DataFrame(result.per_world).to_csv(out / "worlds.csv", index=False, float_format="%.6g")
    plot_worlds(out / "worlds.png", result.sharpe[:, STRATEGIES.index(POLICY)],
                result.sharpe[:, STRATEGIES.index(result.baseline)],
                np.asarray([r["signal_strength"] for r in result.per_world]), result.baseline,
                f"{run_dir} @ {result.report['checkpoint']['iteration']} | "
                f"{result.report['worlds']['count']} {result.report['worlds']['stream']} worlds")


def print_worlds_report(report: dict, show_all: bool) -> None:
    """The policy, worlds and baseline lines, the table of medians over worlds, the
    statistics and the verdict."""
    from jaxtrade.evaluation import POLICY, STRATEGIES

    w, b, st = report["worlds"], report["baseline"], report["statistics"]
    print(f"policy: {report['checkpoint']['path']} ({report['selection']['chosen_by']}; "
          f"{report['actions']}, seed {report['seed']})")
    print(f"worlds: {w['count']} {w['stream']} worlds of seed {w['seed']}, {w['steps_per_world']} "
          f"steps each ({w['what']})")
    print(f"baseline: {b['name']}, the best fixed strategy by median Sharpe over "
          f"{b['validation_worlds']} validation worlds "
          f"({b['validation_median_sharpe'][b['name']]:+.2f} there)")
    names = STRATEGIES if show_all else list(dict.fromkeys([POLICY, *headline(b["name"])]))
    first = "strategy (medians over worlds)"
    width = max(len(first), *(len(label(n, b["name"])) for n in names)) + 2
    header = (first.ljust(width)
              + "".join(h.rjust(10) for h, _, _ in WORLD_COLUMNS) + "policy wins".rjust(12))
    print(header)
    print("-" * len(header))
    for name in names:
        m = report["strategies"][name]
        cells = []
        for h, key, fmt in WORLD_COLUMNS:
            v = m[key]["p25" if h == "p25" else "p75" if h == "p75" else "median"]
            cells.append((fmt.format(v) if math.isfinite(v) else "-").rjust(10))
        share = m["policy_beats_share"]
        print(label(name, b["name"]).ljust(width) + "".join(cells)
              + ("" if share is None else f"{share:.0%}").rjust(12))
    d = st["sharpe_difference"]
    print(f"policy minus {b['name']}: median Sharpe difference {d['estimate']:+.2f}, "
          f"{d['level']:.0%} interval [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] (worlds "
          f"resampled); won {st['wins']}, lost {st['losses']}, tied {st['ties']} worlds "
          f"(sign test p = {st['sign_test_p']:.3f})")
    dsr, trials = st["policy_dsr"], st["dsr_trials"]
    print(f"policy DSR: median {dsr['median']:.2f} over worlds (deflated by "
          f"{trials['candidates']} checkpoint candidates), above 0.95 in "
          f"{st['share_dsr_above_0.95']:.0%} of the worlds")
    print(f"verdict: {report['verdict']}")


def plot_worlds(path: Path, policy: np.ndarray, baseline: np.ndarray, signal: np.ndarray,
                baseline_name: str, title: str) -> None:
    """Per world: the policy's Sharpe against the baseline's (above the diagonal: the policy
    won), coloured by the world's signal strength; and the histogram of the differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hist) = plt.subplots(1, 2, figsize=(11, 4.6))
    lo = float(np.nanmin([policy.min(), baseline.min()])) - 0.2
    hi = float(np.nanmax([policy.max(), baseline.max()])) + 0.2
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    dots = ax.scatter(baseline, policy, c=signal, cmap="viridis", s=18, alpha=0.85)
    fig.colorbar(dots, ax=ax, label="world signal strength (0 = nothing to learn)")
    ax.set_xlabel(f"{baseline_name} Sharpe (annualised)")
    ax.set_ylabel("policy Sharpe (annualised)")
    ax.set_title(f"per world: above the line, the policy won ({np.mean(policy > baseline):.0%})",
                 fontsize=10)
    diff = policy - baseline
    hist.hist(diff, bins=min(40, max(10, diff.size // 4)), color="#1f77b4", alpha=0.8)
    hist.axvline(0, color="grey", ls="--", lw=1)
    hist.axvline(float(np.median(diff)), color="#d62728", lw=1.5,
                 label=f"median {np.median(diff):+.2f}")
    hist.set_xlabel(f"policy minus {baseline_name} Sharpe")
    hist.set_ylabel("worlds")
    hist.legend(fontsize=9)
    fig.suptitle(title, x=0.01, ha="left", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_episode_report(report: dict) -> None:
    """The policy and range lines, the policy and the random policy's episodes, the verdict."""
    r, diff = report["range"], report["difference"]
    print(f"policy: {report['checkpoint']['path']} ({report['selection']['chosen_by']}; "
          f"{report['actions']}, seed {report['seed']})")
    print(f"episodes: {r['what']}; the same keys for both policies")
    header = "strategy".ljust(10) + "".join(h.rjust(12) for h, _, _ in EPISODE_COLUMNS)
    print(header)
    print("-" * len(header))
    for name, m in report["strategies"].items():
        print(name.ljust(10) + "".join(fmt.format(m[k]).rjust(12)
                                       for _, k, fmt in EPISODE_COLUMNS))
    print(f"policy minus random: {diff['return_mean']:+.4f}, {diff['level']:.0%} interval "
          f"[{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}] (normal approximation)")
    print(f"verdict: {report['verdict']}")


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


def plot_equity(path: Path, dates: pd.DatetimeIndex, values: np.ndarray, names, title: str,
                marks=()):
    """Equity curves (policy bold) over a drawdown panel, as a PNG (matplotlib, no pyplot);
    `marks`: dates to draw a dashed vertical line at (a walk-forward run's fold starts)."""
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
    for when in marks:
        for ax in (ax_eq, ax_dd):
            ax.axvline(when, color="grey", ls="--", lw=0.8)
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

"""`python -m jaxtrade.evaluate --run-dir RUN` of a walk-forward run: each fold's member on its
own test block, against the baselines, and the concatenated out-of-sample series (host-only).

Per fold k (`jaxtrade.walk_forward`):

* the member's checkpoint: the kept population checkpoint (`--keep-checkpoints`) at which
  its validation score (on fold k's validation slice) was best; no fold's test bars choose;
* the baseline to beat: the best fixed strategy by Sharpe on fold k's validation slice
  (`report.choose_on_validation`), as a user without RL would pick it there;
* one continuous pass of the policy and every baseline over the fold's test block (trades
  at its bars, marks its last trade at the next block's first bar), as evaluate's pass.

The concatenation: per strategy, the folds' per-bar returns one after another (the blocks
are consecutive, so this is one series over the whole test range, every bar of it out of
sample for the member that traded it); `best_fixed` is, in each fold, the baseline chosen
on that fold's validation slice. PSR, DSR and the bootstrap intervals are those of
evaluate's report (`report.honest_statistics`) on these series; the policy's deflated
Sharpe counts every validation walk of every member (members x intervals) as a trial,
with the variance of their validation Sharpe ratios, since each fold's checkpoint was
chosen among its member's walks and the recipe as a whole among all of them.

Files (in RUN/eval by default): report.json, folds.csv (a row per fold), equity.csv (the
concatenated curves: policy, best_fixed, every baseline), equity.png.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from jaxtrade import __version__
from jaxtrade.data.panel import format_date
from jaxtrade.errors import UsageError

BEST_FIXED = "best_fixed"  # per fold, the baseline chosen on that fold's validation slice


@dataclasses.dataclass
class WalkForwardAssessment:
    report: dict  # report.json
    dates: pd.DatetimeIndex  # [S + 1], the marks of the concatenated series
    curves: dict[str, np.ndarray]  # strategy -> concatenated equity curve [S + 1]
    folds: list[dict]  # folds.csv rows


def is_walk_forward(run_dir) -> bool:
    """Whether `run_dir` holds a walk-forward population run."""
    from jaxtrade.population_run import read_settings

    settings = read_settings(Path(run_dir))
    return settings is not None and bool(settings.walk_forward)


def _choose_intervals(records: list[list[dict]], kept: list[int], n: int) -> list[dict]:
    """Per slot: the kept interval whose validation score was best (the latest kept when
    none was scored) -> {"interval", "score", "id"}."""
    by_interval = {recs[0]["interval"]: recs for recs in records}
    chosen = []
    for slot in range(n):
        scored = [(by_interval[i][slot]["score"], -i, i) for i in kept
                  if i in by_interval and by_interval[i][slot]["score"] is not None]
        interval = max(scored)[2] if scored else kept[-1]
        rec = by_interval.get(interval, [{}] * n)[slot]
        chosen.append({"interval": interval, "score": rec.get("score"), "id": rec.get("id")})
    return chosen


def _max_drawdown(curve: np.ndarray) -> float:
    return float(np.max(1.0 - curve / np.maximum.accumulate(curve)))


def assess(run_dir, *, seed: int | None = None, sample: bool = False) -> WalkForwardAssessment:
    """The walk-forward report (module docstring).

    Raises:
      UsageError: a run without folds, checkpoints or records, or data that changed.
    """
    import jax
    import jax.numpy as jnp

    from jaxtrade import parallel
    from jaxtrade import report as comparison
    from jaxtrade import walk_forward as wf
    from jaxtrade.engine.start import load_run_market, read_config_json
    from jaxtrade.envs import make_env
    from jaxtrade.evaluation import (
        STRATEGIES,
        make_strategy_walk,
        pass_params,
        pass_settings,
        walk_key,
    )
    from jaxtrade.population_plot import POPULATION_FILE, read_records
    from jaxtrade.population_run import CHECKPOINT_DIR, PopulationCheckpoints, read_settings
    from jaxtrade.trainer import make_train

    run_dir = Path(run_dir)
    settings = read_settings(run_dir)
    cfg = read_config_json(run_dir / "config.json")
    if settings is None or not settings.walk_forward or cfg is None:
        raise UsageError(f"{run_dir} holds no walk-forward run (population.json with "
                         f"walk_forward, config.json)")
    folds = wf.read_folds(run_dir)
    full = load_run_market(cfg, test=True)
    if wf.folds_of_market(full, len(folds), cfg.env.episode_length) != folds:
        raise UsageError(f"{run_dir}: the run's data no longer splits into the folds of "
                         f"{wf.WALK_FORWARD_FILE} (did the data change?)")
    records = read_records(run_dir / POPULATION_FILE) if (run_dir / POPULATION_FILE).exists() \
        else []
    directory = run_dir / CHECKPOINT_DIR
    kept = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
        if directory.exists() else []
    if not kept or not records:
        raise UsageError(f"{run_dir}: no population checkpoint or record to evaluate (did the "
                         f"run finish an interval?)")
    seed = cfg.run.seed if seed is None else seed
    n = len(folds)
    chosen = _choose_intervals(records, kept, n)

    held = wf.held_market(full, folds)
    trainer = make_train(cfg, held, parallel.make_mesh(1))
    params = [None] * n
    with_ckpt = PopulationCheckpoints(run_dir, cfg.run.keep_checkpoints)
    try:
        for interval in sorted({c["interval"] for c in chosen}):
            pop, _, _ = with_ckpt.restore(trainer, n, interval)
            for k, c in enumerate(chosen):
                if c["interval"] == interval:
                    params[k] = jax.tree.map(lambda x, k=k: x[k], pop.members.params)
    finally:
        with_ckpt.close()

    env = make_env(cfg.env.name, full)
    programs: dict[int, object] = {}
    key, bars_per_year = walk_key(seed), jnp.float32(full.bars_per_year)
    fold_record = json.loads((run_dir / wf.WALK_FORWARD_FILE).read_text())["members"]
    returns: dict[str, list[np.ndarray]] = {name: [] for name in (*STRATEGIES, BEST_FIXED)}
    rows, choices = [], []
    for k, fold in enumerate(folds):
        lo, hi = fold.test
        steps = hi - lo
        if steps not in programs:
            programs[steps] = jax.jit(make_strategy_walk(trainer.network, env, steps,
                                                         greedy=not sample))
        walk, metrics = jax.device_get(programs[steps](
            params[k], pass_params(env, cfg.env, lo, hi), key, bars_per_year))
        choice = comparison.choose_on_validation(
            full, {"validation": fold_record[k]["validation"]}, cfg.env, seed)
        choices.append(choice)
        fold_returns = {name: comparison.bar_returns(walk.values[i])
                        for i, name in enumerate(STRATEGIES)}
        fold_returns[BEST_FIXED] = fold_returns[choice["name"]]
        for name, r in fold_returns.items():
            returns[name].append(r)
        sharpe = {name: float(metrics["sharpe"][i]) for i, name in enumerate(STRATEGIES)}
        total = {name: float(metrics["total_return"][i]) for i, name in enumerate(STRATEGIES)}
        rows.append({
            "fold": fold.index, "slot": k, "member_id": chosen[k]["id"],
            "interval": chosen[k]["interval"], "val_score": chosen[k]["score"],
            "train_end": format_date(full.dates[fold.train[1] - 1]),
            "validation_start": format_date(full.dates[fold.validation[0]]),
            "test_start": format_date(full.dates[lo]),
            "test_end": format_date(full.dates[hi - 1]),  # its last trade (marked at hi)
            "steps": steps,
            "policy_sharpe": sharpe["policy"], "policy_return": total["policy"],
            "baseline": choice["name"], "baseline_sharpe": sharpe[choice["name"]],
            "baseline_return": total[choice["name"]],
            "buy_and_hold_sharpe": sharpe["buy_and_hold"],
            "buy_and_hold_return": total["buy_and_hold"],
        })

    concat = {name: np.concatenate(parts) for name, parts in returns.items()}
    curves = {name: np.concatenate([[1.0], np.cumprod(1.0 + r)]) for name, r in concat.items()}
    all_val = [r for recs in records for r in recs]
    val_sharpes = [r["val"].get("sharpe") for r in all_val if r.get("val")]
    selection = {
        "chosen_by": f"per fold, the best val_score on the fold's validation slice among its "
                     f"member's kept checkpoints; {len(all_val)} validation walks of {n} "
                     f"members counted as candidates",
        "range": "validation", "metric": "val_score", "candidates": len(all_val),
        "candidate_sharpes": [x for x in val_sharpes if x is not None],
        "candidate_world_sharpes": []}
    choice = {"name": BEST_FIXED, "chosen_on": "validation", "by": "Sharpe ratio, per fold",
              "candidates": max(c["candidates"] for c in choices),
              "validation_sharpe": {f"{name}@{k + 1}": v for k, c in enumerate(choices)
                                    for name, v in c["validation_sharpe"].items()},
              "per_fold": [c["name"] for c in choices]}
    statistics = comparison.honest_statistics(curves, BEST_FIXED, full.bars_per_year,
                                              selection, choice, full.bars_per_year, seed)
    table = {}
    for name, curve in curves.items():
        st = statistics["strategies"].get(name, {})
        table[name] = {
            "total_return": float(curve[-1] - 1.0),
            "annual_return": float(curve[-1] ** (full.bars_per_year / (len(curve) - 1)) - 1.0),
            "sharpe": st.get("sharpe_annualised", math.nan),
            "psr": st.get("psr", math.nan), "dsr": st.get("dsr", math.nan),
            "max_drawdown": _max_drawdown(curve),
        }
    first, last = folds[0].test[0], folds[-1].test[1]
    dates = full.dates[first:last + 1]
    report = {
        "jaxtrade_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_dir": str(run_dir),
        "walk_forward": {"folds": n, "layout": wf.record(folds, full)["layout"],
                         "members": fold_record},
        "selection": selection,
        "data": {"source": full.source, "symbols": list(full.symbols),
                 "bars_per_year": full.bars_per_year},
        "range": {"name": "test", "start": format_date(dates[0]), "end": format_date(dates[-1]),
                  "bars": len(dates), "steps": last - first,
                  "what": f"the concatenated test blocks of {n} folds, each traded by the "
                          f"member that never read it"},
        "actions": "sampled" if sample else "greedy",
        "seed": seed,
        "env": pass_settings(cfg.env),
        "baseline": {**choice, "per_fold_candidates": [c["candidates"] for c in choices]},
        "statistics": statistics,
        "verdict": comparison.verdict(statistics, BEST_FIXED, "test"),
        "strategies": table,
        "folds": rows,
    }
    return WalkForwardAssessment(report, dates, curves, rows)


def check_flags(args) -> None:
    """Refuses evaluate's flags that a walk-forward report does not take, in one line."""
    for name, flag in (("data", "--data"), ("range", "--range"), ("start", "--start"),
                       ("end", "--end"), ("leverage", "--leverage"),
                       ("utilisation", "--utilisation"), ("max_positions", "--max-positions"),
                       ("buffer", "--buffer")):
        if getattr(args, name, None) is not None:
            raise UsageError(f"{flag}: a walk-forward run is evaluated on its folds' test "
                             f"blocks, each member on its own")
    if str(args.checkpoint) != "best":
        raise UsageError(f"--checkpoint {args.checkpoint}: a walk-forward run's checkpoints are "
                         f"chosen per fold, on the fold's validation slice")


def write_outputs(out: Path, result: WalkForwardAssessment, run_dir: str) -> list[str]:
    """report.json, folds.csv, equity.csv, equity.png; their names."""
    from jaxtrade.evaluate import plot_equity

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")
    pd.DataFrame(result.folds).to_csv(out / "folds.csv", index=False, float_format="%.10g")
    pd.DataFrame({"date": [format_date(d) for d in result.dates], **result.curves}).to_csv(
        out / "equity.csv", index=False, float_format="%.10g")
    shown = _shown(result.curves)
    r = result.report["range"]
    plot_equity(out / "equity.png", result.dates, np.stack([result.curves[s] for s in shown]),
                shown, title=f"{run_dir} | walk-forward, {result.report['walk_forward']['folds']}"
                             f" folds (dashed: fold starts) | {r['start']} .. {r['end']}",
                marks=[pd.Timestamp(m["test"]["first"])
                       for m in result.report["walk_forward"]["members"][1:]])
    return ["report.json", "folds.csv", "equity.csv", "equity.png"]


def _shown(curves) -> list[str]:
    """The headline strategies: the policy, best_fixed, then evaluate's `HEADLINE`."""
    from jaxtrade.evaluate import HEADLINE

    return list(dict.fromkeys(["policy", BEST_FIXED, *HEADLINE]))


def print_report(result: WalkForwardAssessment, show_all: bool = False) -> None:
    """The fold table, the concatenation's table, the statistics and the verdict."""
    from jaxtrade.evaluate import statistics_lines

    rep = result.report
    r = rep["range"]
    print(f"walk-forward: {rep['walk_forward']['folds']} folds of {rep['run_dir']}; "
          f"{rep['actions']} actions, seed {rep['seed']}")
    header = (f"{'fold':>4}  {'test':<25}{'steps':>6}{'member':>7}{'interval':>9}"
              f"{'val score':>10}{'policy':>9}{'baseline (chosen on validation)':>34}"
              f"{'buy&hold':>9}")
    print(header)
    print("-" * len(header))
    for row in result.folds:
        val = "-" if row["val_score"] is None else f"{row['val_score']:+.2f}"
        print(f"{row['fold']:>4}  {row['test_start'] + ' .. ' + row['test_end']:<25}"
              f"{row['steps']:>6}{row['member_id']:>7}{row['interval']:>9}{val:>10}"
              f"{row['policy_sharpe']:>+9.2f}"
              f"{row['baseline'] + ' ' + format(row['baseline_sharpe'], '+.2f'):>34}"
              f"{row['buy_and_hold_sharpe']:>+9.2f}")
    print("(per-fold columns: annualised Sharpe ratios of the fold's test pass)")
    print(f"concatenated out-of-sample: {r['start']} .. {r['end']} ({r['steps']} steps); "
          f"best_fixed = each fold's baseline chosen on its validation slice "
          f"({', '.join(rep['baseline']['per_fold'])})")
    names = list(result.curves) if show_all else _shown(result.curves)
    columns = ("total", "annual", "Sharpe", "PSR", "DSR", "max DD")
    keys = ("total_return", "annual_return", "sharpe", "psr", "dsr", "max_drawdown")
    width = max(len(name) for name in names) + 2
    print("strategy".ljust(width) + "".join(h.rjust(10) for h in columns))
    print("-" * (width + 10 * len(columns)))
    fmts = ("{:+.2%}", "{:+.2%}", "{:+.2f}", "{:.2f}", "{:.2f}", "{:.2%}")
    for name in names:
        m = rep["strategies"][name]
        print(name.ljust(width) + "".join(
            (f.format(m[k]) if math.isfinite(m[k]) else "-").rjust(10)
            for k, f in zip(keys, fmts, strict=True)))
    for line in statistics_lines(rep["statistics"], BEST_FIXED):
        print(line)
    print(f"verdict: {rep['verdict']}")

"""`python -m jaxtrade.evaluate` on a worlds run (`--market worlds`): the policy and every
baseline through one continuous pass of each of the run's test worlds (worlds no training
run ever generated), compared with the baseline chosen on the validation worlds, world by
world and over the worlds. Host-side.

The statistics, per world and then aggregated:

* per world: every strategy's `metrics.compute_all` (Sharpe, return, drawdown, costs, ...),
  and the policy's PSR and DSR (`jaxtrade.stats.strategy_stats`), deflated by the
  checkpoints its selection compared (`report.checkpoint_selection`);
* over the worlds: each strategy's median, 25th and 75th percentile; the share of worlds
  where the policy's Sharpe ratio beats each strategy's; a one-sided sign test of "the
  policy beats the chosen baseline in more than half of the worlds" (ties dropped), and a
  percentile bootstrap interval (worlds resampled) of the median Sharpe difference.

The baseline to beat is the one with the best median Sharpe over the validation worlds
(`evaluation.world_baselines`), as a user without RL would pick it there.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxtrade.errors import UsageError

LEVEL = 0.9  # of the bootstrap interval of the median Sharpe difference
N_RESAMPLES = 10_000
WORLD_STREAMS = {  # --range -> (stream, what the report calls it)
    "test": ("test", "the run's test worlds, never generated in training"),
    "validation": ("validation", "the run's validation worlds, which chose the checkpoint "
                                 "and the baseline: optimistic"),
    "train": ("train", "the run's first training pool: in-sample"),
}
SETTINGS_COLUMNS = ("n_assets", "signal_strength", "duration", "persistence", "tail_df")


@dataclasses.dataclass(frozen=True)
class WorldsAssessment:
    """Every strategy through every world, and the comparison over the worlds."""

    report: dict  # report.json
    per_world: list[dict]  # one row per world: its settings and each headline strategy's
    sharpe: np.ndarray  # float [W, S] Sharpe ratio of each strategy (STRATEGIES order)
    baseline: str  # the baseline chosen on the validation worlds


def sign_test(wins: int, losses: int) -> float:
    """One-sided p-value of `wins` or more successes in wins + losses fair coin flips."""
    n = wins + losses
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n  # exact ints, any n


def median_interval(x: np.ndarray, seed: int, level: float = LEVEL,
                    n_resamples: int = N_RESAMPLES) -> dict:
    """Percentile bootstrap interval of the median of `x` [W] (worlds resampled)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], size=(n_resamples, x.shape[0]))
    medians = np.median(x[idx], axis=1)
    tail = (1 - level) / 2
    return {"estimate": float(np.median(x)), "ci_low": float(np.quantile(medians, tail)),
            "ci_high": float(np.quantile(medians, 1 - tail)), "level": level,
            "n_resamples": n_resamples, "resampled": "worlds"}


def spread(x: np.ndarray) -> dict:
    """Median, 25th and 75th percentile of `x` over worlds (NaN where undefined dropped)."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return {"median": math.nan, "p25": math.nan, "p75": math.nan}
    p25, med, p75 = np.percentile(x, [25, 50, 75])
    return {"median": float(med), "p25": float(p25), "p75": float(p75)}


def trial_variance(selection: dict, bars_per_year: float) -> tuple[float, str]:
    """The variance of the per-bar Sharpe ratios of the candidates the checkpoint was chosen
    among, as one world shows them: within each validation world, the variance over the
    candidates of their Sharpe ratio there, averaged over the worlds. (The variance of
    their median Sharpe ratios, all a run older than per-world records has, is far
    smaller than one world's and would deflate too little; it is used only then, and
    the report says so.)"""
    per_bar = math.sqrt(bars_per_year)
    worlds = [w for w in selection.get("candidate_world_sharpes") or [] if w is not None]
    if len(worlds) > 1:
        x = np.asarray(worlds, np.float64) / per_bar  # [candidates, worlds]
        return float(np.nanmean(x.var(axis=0, ddof=1))), "candidates' Sharpe within a world"
    medians = np.asarray(selection["candidate_sharpes"], np.float64) / per_bar
    variance = float(medians.var(ddof=1)) if medians.size > 1 else 0.0
    return variance, "candidates' median Sharpe over worlds (no per-world records)"


def check_request(request) -> None:
    if request.start is not None or request.end is not None:
        raise UsageError(
            "this run trained on procedural worlds: evaluate reports its test worlds "
            "(--range validation|train for the others), or dates of your data with --data "
            "PATH --start DATE")
    if request.range == "all":
        raise UsageError("--range all is a date range; a worlds run has test, validation "
                         "and train worlds")


def assess_worlds(request) -> WorldsAssessment:
    """The whole comparison (module docstring) for `request` (`assess.AssessRequest`)."""
    import jax
    import jax.numpy as jnp

    from jaxtrade import report as comparison
    from jaxtrade import stats
    from jaxtrade.engine.assess import report_header
    from jaxtrade.envs import NAMES, PortfolioEnv
    from jaxtrade.evaluation import (
        POLICY,
        STRATEGIES,
        make_world_walks,
        pass_settings,
        walk_key,
        world_baselines,
        world_pass_params,
    )
    from jaxtrade.metrics import bar_returns
    from jaxtrade.policy import load_policy
    from jaxtrade.worlds import RunWorlds, describe

    check_request(request)
    policy = load_policy(request.run_dir, request.checkpoint, seed=request.seed)
    cfg, record, seed = policy.config, policy.record, policy.seed
    worlds = RunWorlds.from_record(record["worlds"])
    stream, what = WORLD_STREAMS[request.range or "test"]
    market, settings = worlds.pool(stream, stats=policy.stats)
    validation, _ = worlds.pool("validation", stats=policy.stats)
    bpy = float(market.bars_per_year)
    # The baseline chosen as in training: the run's own seed, whatever --seed says.
    choice = world_baselines(PortfolioEnv(validation), cfg.env, cfg.run.seed, bpy)
    baseline = choice["name"]
    env = PortfolioEnv(market)
    network = policy.network_for(env.n_assets)
    walks = jax.jit(make_world_walks(network, env, greedy=not request.sample))
    values, metrics = jax.device_get(walks(policy.params, world_pass_params(env, cfg.env),
                                           walk_key(seed), jnp.float32(bpy)))
    values = np.asarray(values, np.float64)  # [W, S, T + 1]
    sharpe = np.asarray(metrics["sharpe"], np.float64)  # [W, S]
    n_worlds = sharpe.shape[0]
    p, b = STRATEGIES.index(POLICY), STRATEGIES.index(baseline)

    selection = comparison.checkpoint_selection(request.run_dir, request.checkpoint,
                                                where="validation worlds")
    variance, source = trial_variance(selection, record["bars_per_year"])
    psr, dsr = np.full(n_worlds, np.nan), np.full(n_worlds, np.nan)
    for w in range(n_worlds):
        r = np.asarray(bar_returns(values[w, p]), np.float64)
        if r.std() > stats.CONSTANT_STD:
            s = stats.strategy_stats(r, bpy, selection["candidates"], variance)
            psr[w], dsr[w] = s.psr, s.dsr

    diff = sharpe[:, p] - sharpe[:, b]
    wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
    table = {}
    for i, name in enumerate(STRATEGIES):
        table[name] = {
            **{key: spread(np.asarray(metrics[key], np.float64)[:, i])
               for key in ("sharpe", "total_return", "annual_return", "max_drawdown",
                           "turnover_total", "costs_fraction")},
            "policy_beats_share": (float(np.mean(sharpe[:, p] > sharpe[:, i]))
                                   if i != p else None),
        }
    info = describe(settings)
    per_world = []
    for w in range(n_worlds):
        row = {"world": w, **{k: info[w][k] for k in SETTINGS_COLUMNS}}
        for name in dict.fromkeys((POLICY, baseline, "buy_and_hold")):
            i = STRATEGIES.index(name)
            row[f"sharpe_{name}"] = float(sharpe[w, i])
            row[f"return_{name}"] = float(metrics["total_return"][w, i])
        row["policy_psr"], row["policy_dsr"] = float(psr[w]), float(dsr[w])
        row["policy_won"] = bool(diff[w] > 0)
        row["policy_turnover"] = float(metrics["turnover_total"][w, p])
        row["policy_costs"] = float(metrics["costs_fraction"][w, p])
        # What the policy did there: the share of its steps in each regime.
        row |= {f"share_{name}": float(x)
                for name, x in zip(NAMES, metrics["action_freq"][w, p], strict=True)}
        per_world.append(row)
    won = wins / n_worlds
    statistics = {
        "worlds": n_worlds,
        "policy_sharpe": spread(sharpe[:, p]),
        "baseline_sharpe": spread(sharpe[:, b]),
        "sharpe_difference": median_interval(diff, seed),
        "share_won": won,
        "wins": wins, "losses": losses, "ties": n_worlds - wins - losses,
        "sign_test_p": sign_test(wins, losses),
        "policy_psr": spread(psr), "policy_dsr": spread(dsr),
        "dsr_trials": {"candidates": selection["candidates"], "trial_sharpe_variance": variance,
                       "variance_of": source},
        "share_dsr_above_0.95": float(np.mean(np.nan_to_num(dsr) > 0.95)),
    }
    report = {
        **report_header(request, policy.checkpoint, selection),
        "worlds": {"stream": stream, "what": what, "count": n_worlds, "seed": worlds.seed,
                   "steps_per_world": market.world_bars - 2},
        "actions": "sampled" if request.sample else "greedy",
        "seed": seed,
        "env": pass_settings(cfg.env),
        "baseline": {"name": baseline, "chosen_on": "validation worlds",
                     "by": "median Sharpe ratio", "validation_worlds": validation.n_worlds,
                     "validation_median_sharpe": choice["median_sharpe"]},
        "statistics": statistics,
        "verdict": verdict(statistics, baseline, stream),
        "strategies": table,
        "per_world": per_world,
    }
    return WorldsAssessment(report, per_world, sharpe, baseline)


def choose_on_validation_worlds(policy) -> dict:
    """The baseline to beat for a worlds-trained policy on other data: the best median
    Sharpe ratio over the run's validation worlds (as `report.choose_on_validation` chooses
    on a run's validation range, same keys)."""
    from jaxtrade.envs import PortfolioEnv
    from jaxtrade.evaluation import world_baselines
    from jaxtrade.worlds import RunWorlds

    worlds = RunWorlds.from_record(policy.record["worlds"])
    validation, _ = worlds.pool("validation", stats=policy.stats)
    choice = world_baselines(PortfolioEnv(validation), policy.config.env,
                             policy.config.run.seed, float(validation.bars_per_year))
    medians = choice["median_sharpe"]
    return {"name": choice["name"], "chosen_on": "validation worlds",
            "by": "median Sharpe ratio", "validation": None,
            "validation_worlds": validation.n_worlds,
            "candidates": len({round(v, 9) for v in medians.values()}),
            "validation_sharpe": medians}


def verdict(statistics: dict, baseline: str, stream: str) -> str:
    """The comparison over the worlds, in words."""
    d, won = statistics["sharpe_difference"], statistics["share_won"]
    n, p = statistics["worlds"], statistics["sign_test_p"]
    where = f"{n} {stream} worlds"
    if d["ci_low"] > 0 and p < 0.05:
        return (f"the policy beats {baseline} on the {where}: median Sharpe difference "
                f"{d['estimate']:+.2f} (interval above 0), won {won:.0%} of the worlds "
                f"(sign test p = {p:.3f})")
    if d["ci_high"] < 0:
        return (f"the policy trails {baseline} on the {where}: median Sharpe difference "
                f"{d['estimate']:+.2f} (interval below 0), won {won:.0%} of the worlds")
    return (f"no clear difference from {baseline} on the {where}: median Sharpe difference "
            f"{d['estimate']:+.2f}, {d['level']:.0%} interval [{d['ci_low']:+.2f}, "
            f"{d['ci_high']:+.2f}], won {won:.0%} of the worlds (sign test p = {p:.3f})")

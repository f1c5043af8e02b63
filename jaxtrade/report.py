"""The honest comparison behind `python -m jaxtrade.evaluate` (host-side orchestration).

Validation chooses, the reported range only reports:

* `choose_on_validation`: the baseline to beat is the one with the best Sharpe ratio on
  the run's validation range, as a user without RL would pick it;
* `checkpoint_selection`: what chose the evaluated checkpoint, and among how many
  candidates (the run's validation walks), from the run's checkpoint metadata;
* `honest_statistics`: PSR and DSR of every strategy, each deflated by the candidates its
  own selection compared, and bootstrap intervals of the Sharpe difference policy minus
  baseline and of the policy's annualised return (`jaxtrade.stats`);
* `verdict`: the comparison in words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxtrade import stats
from jaxtrade.config import EnvConfig
from jaxtrade.data.market import Market, span_bounds
from jaxtrade.evaluation import POLICY


def bar_returns(values) -> np.ndarray:
    """Per-bar simple returns [T] of an equity curve of T + 1 marks (`metrics.bar_returns`),
    in float64 for the statistics."""
    from jaxtrade.metrics import bar_returns as returns_of

    return np.asarray(returns_of(np.asarray(values)), np.float64)


def choose_on_validation(market: Market, record: Mapping, env_config: EnvConfig,
                         seed: int) -> dict | None:
    """The baseline with the best Sharpe ratio on the run's validation range (`record` is
    its market.json), with every baseline's Sharpe there; None when the run has no
    validation range. `market` is the run's own data, unsplit."""
    import jax
    import jax.numpy as jnp

    from jaxtrade.envs import PortfolioEnv
    from jaxtrade.evaluation import (
        BASELINES,
        choose_baseline,
        make_baseline_evaluation,
        pass_params,
        walk_key,
    )

    span = record.get("validation")
    if span is None:
        return None
    first, last = span_bounds(market.dates, span)
    env = PortfolioEnv(market)
    run = make_baseline_evaluation(env, last - first)
    metrics = jax.device_get(run(pass_params(env, env_config, first, last), walk_key(seed),
                                 jnp.float32(market.bars_per_year)))
    sharpes = {name: float(metrics["sharpe"][i]) for i, name in enumerate(BASELINES)}
    # Baselines that are the same position there (e.g. MOMENTUM and RISK_ON on few assets)
    # have identical curves: one candidate, however many names it has.
    distinct = len({round(v, 9) for v in sharpes.values()})
    return {"name": choose_baseline(sharpes), "chosen_on": "validation",
            "by": "Sharpe ratio", "validation": span, "candidates": distinct,
            "validation_sharpe": sharpes}


def checkpoint_selection(run_dir, requested, where: str = "validation range") -> dict:
    """What chose the evaluated checkpoint and among how many candidates (the trials that
    deflate its Sharpe ratio): "best" was chosen by val_score among every validation walk
    of the run; a checkpoint named by the user counts as one trial."""
    from jaxtrade import checkpoint as ckpt

    latest = ckpt.latest(run_dir, purpose="")
    sel = latest.meta.get("selection") or {}
    validations = int(sel.get("validations") or 0)
    if str(requested) == "best" and validations:
        sharpes = [x for x in sel.get("sharpes") or [] if x is not None]
        return {"chosen_by": f"best val_score on the {where} among {validations} candidates",
                "range": "validation", "metric": sel.get("metric"), "candidates": validations,
                "candidate_sharpes": sharpes,
                "candidate_world_sharpes": sel.get("world_sharpes") or []}
    how = ("best episode return in training (the run made no validation walks)"
           if str(requested) == "best" else f"{requested}, named by the user")
    return {"chosen_by": how, "range": None, "metric": None, "candidates": 1,
            "candidate_sharpes": [], "candidate_world_sharpes": []}


def honest_statistics(values: Mapping[str, Any], baseline: str, bars_per_year: float,
                      selection: Mapping, choice: Mapping | None, run_bars_per_year: float,
                      seed: int) -> dict:
    """The statistics of `evaluate`'s report.

    Args:
      values: strategy -> its equity curve [T + 1] over the reported range.
      baseline: the strategy the policy is compared with.
      bars_per_year: of the reported data (annualises its figures).
      selection: `checkpoint_selection`; its candidates' validation Sharpe ratios
        (annualised by the run) give the policy's trial variance.
      choice: `choose_on_validation` (None: no validation range, nothing chosen).
      run_bars_per_year: of the run's own data, which annualised every validation Sharpe.
      seed: of the bootstrap resampling.

    Constant curves (cash) have no Sharpe ratio to test and get no entry.
    """
    per_bar = math.sqrt(run_bars_per_year)

    def variance(annual_sharpes) -> float:
        x = np.asarray(list(annual_sharpes), np.float64) / per_bar
        return float(x.var(ddof=1)) if x.size > 1 else 0.0

    trials = {POLICY: (selection["candidates"], variance(selection["candidate_sharpes"]))}
    if choice:
        trials[baseline] = (choice["candidates"], variance(choice["validation_sharpe"].values()))
    returns = {name: bar_returns(v) for name, v in values.items()}
    out: dict[str, Any] = {"strategies": {}}
    for name, r in returns.items():
        if r.std() <= stats.CONSTANT_STD:
            continue
        n_trials, var = trials.get(name, (1, 0.0))
        out["strategies"][name] = stats.strategy_stats(r, bars_per_year, n_trials,
                                                       var).to_dict()
    if POLICY not in out["strategies"]:  # it held cash throughout: nothing to compare
        out["sharpe_difference"] = out["policy_annual_return"] = None
        return out
    p = returns[POLICY]
    out["sharpe_difference"] = stats.compare_sharpe(p, returns[baseline], bars_per_year,
                                                    seed=seed).to_dict()
    out["policy_annual_return"] = stats.annualised_return_interval(
        p, bars_per_year, seed=seed).to_dict()
    return out


def verdict(statistics: Mapping, baseline: str, range_name: str | None) -> str:
    """Whether the policy beat the baseline to beat with confidence, in words."""
    diff = statistics.get("sharpe_difference")
    policy = statistics["strategies"].get(POLICY)
    if diff is None or policy is None:
        return "no verdict: the policy's returns do not vary (it held cash throughout)"
    level = f"{diff['level']:.0%}"
    beat = (f"the policy beat {baseline} with {level} confidence (the interval of the Sharpe "
            f"difference is above 0)" if diff["beat_with_confidence"] else
            f"the policy did not beat {baseline} with {level} confidence (the interval of the "
            f"Sharpe difference reaches {diff['ci_low']:+.2f})")
    n = int(policy["n_trials"])
    dsr = (f"; deflated Sharpe ratio {policy['dsr']:.2f} after {n} candidates (the probability "
           f"that its true Sharpe ratio is above the best that many unskilled candidates would "
           f"show)" if n > 1 else
           f"; probabilistic Sharpe ratio {policy['psr']:.2f} (one candidate: nothing to "
           f"deflate)")
    caveat = {
        "validation": "; reported on the validation range, which chose the checkpoint and the "
                      "baseline: optimistic",
        "train": "; reported on the training range: in-sample, not evidence of skill",
    }.get(range_name or "", "")
    return beat + dsr + caveat

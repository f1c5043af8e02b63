"""Regime specialists (`python -m jaxtrade.league --regime-specialists`): per market regime
the league model with the best validation Sharpe over that regime's steps, and a policy
that routes each decision to the specialist of the regime detected from the recent bars
(host-only orchestration; the walks are `jaxtrade.evaluation`'s).

After a round (`choose_specialists`):

* the regime detector (`jaxtrade.regime_detector`) is fitted on the training range of the
  round's market (the bars before the validation range);
* every candidate, the league's archived models (the best `candidates` by overall
  validation score, or all of them), is walked on the validation bars with the walk the
  league's validation score comes from (`evaluation.make_policy_walk` of bars
  [val_start, test_start - 1], the config's env settings and `walk_key` of its seed): its
  per-step returns r_k = V_{k+1} / V_k - 1;
* each step k gets the regime of the bar its decision observes (`step_labels`, bars before
  the step's trade only), and per regime the candidate with the best annualised Sharpe
  ratio over that regime's steps becomes its specialist (`choose`; ties: the better
  overall score). A regime with fewer than `min_steps` validation steps is not chosen for:
  it falls back to the overall champion (the best candidate by overall validation score).

The round's market holds no test bars (`Market.without_test`): the test range is never
read. Choosing per regime compares every candidate once per regime: `trials` = candidates
x regimes chosen for, recorded with the choice, so a specialist's validation Sharpe is the
best of that many and overstates what it will do on new bars more than the overall
champion's does (its regime's steps are also fewer).

`SpecialistPolicy` (`jaxtrade.load_policy("league:LEAGUE_DIR")`): the last recorded
choice of the league; each call detects the regime of the given bars' last bar and asks
that regime's specialist, a `jaxtrade.policy.Policy`. A Policy keeps no memory between
calls: every decision walks the given bars from their start, which warms its GRU state,
so the specialist a switch routes to decides from a state warmed on the same bars as if
it had decided all along (nothing starts cold, and no state needs carrying between calls).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxtrade import regime_detector as rd
from jaxtrade.evaluation import EvaluationError
from jaxtrade.policy import Decision

PREFIX = "league:"  # `load_policy("league:LEAGUE_DIR")`
DEFAULT_MIN_STEPS = 20  # validation steps a regime needs to choose its own specialist


def sharpe(returns: np.ndarray, bars_per_year: float) -> float:
    """Annualised Sharpe ratio of per-step returns, as `metrics.sharpe_ratio` (mean / std
    x sqrt(bars_per_year), ddof 0; 0 when the returns are constant or empty)."""
    r = np.asarray(returns, np.float64)
    if r.size == 0:
        return 0.0
    sd = r.std()
    return 0.0 if sd == 0 else float(r.mean() / sd * np.sqrt(bars_per_year))


@dataclasses.dataclass(frozen=True)
class Choice:
    """One regime's specialist."""

    regime: str
    model: str  # the specialist's archived id
    steps: int  # validation steps of the regime
    sharpe: float | None  # the specialist's Sharpe over them (None: no step)
    fallback: bool  # fewer than min_steps steps: the overall champion
    scores: dict[str, float]  # every candidate's Sharpe over the regime's steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def choose(returns: Mapping[str, np.ndarray], labels: np.ndarray, names: Sequence[str],
           min_steps: int, bars_per_year: float, champion: str) -> dict[str, Choice]:
    """Per regime the candidate with the best Sharpe over the regime's steps (the
    per-regime argmax; ties go to the earlier candidate), or `champion` where the regime
    has fewer than `min_steps` steps.

    Args:
      returns: candidate id -> float [T] per-step validation returns, best overall first.
      labels: int [T], each step's regime (an index into `names`; -1: none).
      names: the regimes.
      min_steps: steps a regime needs to choose by its own.
      champion: the fallback, the best candidate by overall validation score.
    """
    labels = np.asarray(labels)
    out = {}
    for i, name in enumerate(names):
        on = labels == i
        n = int(on.sum())
        scores = {m: sharpe(np.asarray(r)[on], bars_per_year) for m, r in returns.items()} \
            if n else {}
        if n >= min_steps and scores:
            best = max(scores, key=lambda m: (scores[m], -list(scores).index(m)))
            out[name] = Choice(name, best, n, scores[best], False, scores)
        else:
            out[name] = Choice(name, champion, n, scores.get(champion), True, scores)
    return out


# ------------------------------------------------------------------- after a round
def validation_returns(market, cfg, models: Mapping[str, Path], seed: int
                       ) -> tuple[dict[str, np.ndarray], dict[str, str], tuple[int, int]]:
    """Every model's per-step returns on the validation bars of `market` (a training run's:
    no test bars), walked as the league validates (`evaluation.make_policy_walk` greedy,
    `pass_params` of the config's env settings, `walk_key(seed)`); one compiled walk per
    observation (with or without asset flags).

    Args:
      market: the round's market; cfg: its config; models: id -> archived run directory
        (best first); seed: the validation walks' seed (the config's).

    Returns:
      (id -> float64 [T] returns, id -> why it was skipped, (first, last) bars of the pass).

    Raises:
      UsageError: the market has no validation range.
    """
    import jax

    from jaxtrade import checkpoint as ckpt
    from jaxtrade.engine.run import reads_asset_flags
    from jaxtrade.envs import PortfolioEnv
    from jaxtrade.errors import UsageError
    from jaxtrade.evaluation import make_policy_walk, pass_params, policy_walk, walk_key
    from jaxtrade.policy import check_params_fit
    from jaxtrade.trainer import build_network

    first, stop = market.bounds("validation")
    last = stop - 1
    if last - first < 1:
        raise UsageError("--regime-specialists: the market has no validation range to "
                         "choose specialists on (--val-fraction)")
    n_steps = last - first
    walks: dict[bool, Any] = {}
    out, skipped = {}, {}
    for model_id, model_dir in models.items():
        flagged = reads_asset_flags(model_dir)
        if not flagged and market.data.asset_mask is not None:
            skipped[model_id] = "reads no flag per asset, this round's market has them"
            continue
        if flagged not in walks:
            m = market.with_all_assets() if flagged else market
            env = PortfolioEnv(m)
            network = build_network(cfg, env)
            walks[flagged] = (env, network, jax.jit(make_policy_walk(network, env, n_steps)),
                              pass_params(env, cfg.env, first, last))
        env, network, walk, env_params = walks[flagged]
        try:
            source = ckpt.select(model_dir, json.loads(
                (model_dir / "entry.json").read_text())["iteration"])
            params = ckpt.read_params(source)
            check_params_fit(source, params, network, env.obs_dim, env.num_actions)
        except (ckpt.CheckpointError, OSError, KeyError, ValueError) as e:
            skipped[model_id] = str(e)
            continue
        _, traj = walk(params, env_params, walk_key(seed))
        values = np.asarray(jax.device_get(policy_walk(traj).values[0]), np.float64)
        out[model_id] = values[1:] / values[:-1] - 1.0
    return out, skipped, (first, last)


def choose_specialists(market, cfg, entries: Sequence[Mapping], archive_models: Path,
                       kind: str, lookback: int, min_steps: int,
                       candidates: int | None) -> dict:
    """The round's regime specialists as league.jsonl records them (see the module
    docstring): the detector fitted on the training range, the candidates (the league's
    archived `entries`, best overall first, the first `candidates` of them), every
    regime's choice, the trials.

    Raises:
      UsageError: no validation range, no candidate. RegimeError: a detector that
        cannot be fitted (too few training bars for the lookback).
    """
    from jaxtrade.errors import UsageError

    ranked = sorted((e for e in entries if e.get("val_score") is not None),
                    key=lambda e: -e["val_score"])
    pool = ranked if candidates is None else ranked[:candidates]
    mask = market.data.asset_mask
    prices = np.asarray(market.data.price)
    detector = rd.fit(prices, market.val_start, kind, lookback,
                      None if mask is None else np.asarray(mask))
    returns, skipped, (first, last) = validation_returns(
        market, cfg, {e["id"]: archive_models / e["id"] for e in pool}, cfg.run.seed)
    if not returns:
        raise UsageError("--regime-specialists: no archived model of the league to compare"
                         + (f" ({'; '.join(f'{k}: {v}' for k, v in skipped.items())})"
                            if skipped else ""))
    champion = next(iter(returns))
    labels = detector.step_labels(prices, first, last - first,
                                  None if mask is None else np.asarray(mask))
    choices = choose(returns, labels, detector.names, min_steps, market.bars_per_year,
                     champion)
    compared = sum(not c.fallback for c in choices.values())
    day = lambda i: str(market.dates[i].date())  # noqa: E731
    lo, hi = detector.fitted_on
    return {
        "detector": {**detector.to_dict(), "fitted_start": day(lo), "fitted_end": day(hi - 1)},
        "archive": str(Path(archive_models).parent.resolve()),
        "validation": {"first": first, "last": last, "steps": last - first,
                       "start": day(first), "end": day(last)},
        "min_steps": min_steps,
        "candidates": list(returns),
        "skipped": skipped,
        "champion": champion,
        "overall_sharpe": {m: sharpe(r, market.bars_per_year) for m, r in returns.items()},
        "regimes": {name: c.to_dict() for name, c in choices.items()},
        "trials": len(returns) * compared,
    }


def table_lines(spec: Mapping) -> list[str]:
    """What the league prints after a round with --regime-specialists."""
    v, d = spec["validation"], spec["detector"]
    n, compared = len(spec["candidates"]), spec["trials"] // max(len(spec["candidates"]), 1)
    lines = [f"regime specialists: {d['kind']} regimes over a {d['lookback']}-bar lookback "
             f"(thresholds fitted on the training bars {d['fitted_start']} .. "
             f"{d['fitted_end']}); chosen on validation {v['start']} .. {v['end']} "
             f"({v['steps']} steps): {n} candidates x {compared} regimes = {spec['trials']} "
             f"trials",
             f"  {'regime':<9} {'steps':>5}  {'specialist':<10}  {'val Sharpe':>10}  "
             f"{'champion ' + spec['champion']:>16}"]
    for name, c in spec["regimes"].items():
        fmt = lambda x: "-" if x is None else f"{x:+.2f}"  # noqa: E731
        champ = c["scores"].get(spec["champion"])
        note = (f"  (fallback: {c['steps']} steps < {spec['min_steps']})" if c["fallback"]
                else "")
        lines.append(f"  {name:<9} {c['steps']:>5}  {c['model']:<10}  {fmt(c['sharpe']):>10}  "
                     f"{fmt(champ):>16}{note}")
    for m, why in spec["skipped"].items():
        lines.append(f"  not compared: {m}: {why}")
    return lines


# ------------------------------------------------------------------------ deployment
@dataclasses.dataclass(frozen=True)
class RoutedDecision(Decision):
    """A specialist's `Decision` (every field of it), and which market regime routed the
    bars to which specialist."""

    market_regime: str  # the regime detected from the bars given (`regime_detector`)
    model: str  # the archived id of the specialist that decided

    def __str__(self) -> str:
        return f"[{self.market_regime}: {self.model}] {super().__str__()}"


class SpecialistPolicy:
    """Routes every decision to the specialist of the market regime of the bars given
    (load with `jaxtrade.load_policy("league:LEAGUE_DIR")`); called as a `Policy` is."""

    def __init__(self, detector: rd.RegimeDetector, routes: Mapping[str, str],
                 policies: Mapping[str, Any], champion: str, source: str = ""):
        self.detector = detector
        self.routes = dict(routes)  # regime -> model id
        self.policies = dict(policies)  # model id -> Policy
        self.champion = champion  # whose symbols and loader read the bars for the detector
        self.source = source

    def regime(self, bars: pd.DataFrame, window: int | None = None) -> str:
        """The market regime of the last of `bars` (the bars a decision on them reads).

        Raises:
          DataError, EvaluationError: as `Policy`; EvaluationError: fewer bars than the
            detector's lookback + 1.
        """
        panel = self.policies[self.champion].panel(bars, window)
        try:
            return self.detector.label(panel.adj_close)
        except rd.RegimeError as e:
            raise EvaluationError(f"bars: {e}") from None

    def __call__(self, bars: pd.DataFrame, current_weights: Mapping[str, float] | None = None,
                 window: int | None = None) -> RoutedDecision:
        """The decision of the specialist of the bars' regime for the bar after the last of
        `bars` (arguments as `Policy.__call__`)."""
        regime = self.regime(bars, window)
        model = self.routes[regime]
        decision = self.policies[model](bars, current_weights, window)
        return RoutedDecision(**dataclasses.asdict(decision), market_regime=regime, model=model)

    decide = __call__

    def __repr__(self) -> str:
        routes = ", ".join(f"{k} -> {v}" for k, v in self.routes.items())
        return (f"SpecialistPolicy({self.source!r}, {self.detector.kind} regimes over "
                f"{self.detector.lookback} bars: {routes})")


def load(league_dir: str | os.PathLike, seed: int | None = None) -> SpecialistPolicy:
    """The specialists of the last round of `league_dir` that chose them.

    Raises:
      EvaluationError: no league there, or no round with --regime-specialists;
        ArchiveError, CheckpointError: as `archive.load_policy`.
    """
    from jaxtrade import archive
    from jaxtrade.errors import UsageError
    from jaxtrade.league import RECORDS_FILE, read_records

    league_dir = Path(league_dir)
    if not (league_dir / RECORDS_FILE).exists():
        raise EvaluationError(f"{league_dir}: no {RECORDS_FILE} (not a league directory)")
    try:
        records = read_records(league_dir)
    except UsageError as e:
        raise EvaluationError(str(e)) from None
    chosen = [r for r in records if r.get("specialists")]
    if not chosen:
        raise EvaluationError(f"{league_dir}: no round chose regime specialists (run a round "
                              f"with python -m jaxtrade.league --regime-specialists)")
    spec = chosen[-1]["specialists"]
    try:
        detector = rd.RegimeDetector.from_dict(spec["detector"])
    except rd.RegimeError as e:
        raise EvaluationError(f"{league_dir / RECORDS_FILE}: {e}") from None
    routes = {name: c["model"] for name, c in spec["regimes"].items()}
    store = archive.Archive(spec["archive"])
    policies = {m: archive.load_policy(m, store, seed)
                for m in dict.fromkeys([spec["champion"], *routes.values()])}
    return SpecialistPolicy(detector, routes, policies, spec["champion"],
                            f"{PREFIX}{league_dir} round {chosen[-1]['round']}")

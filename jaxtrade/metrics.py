"""Trading metrics of one strategy walk, and the composite model score (pure ``jnp``).

Every function here is a pure, jittable function of the arrays of ONE walk of T
steps, with no Python loop over time; batch several walks with ``jax.vmap``
(``compute_all`` vmaps over a leading axis as it is). Results are float32.

Inputs, for a walk of T steps over A assets:

  values          float [T + 1]   portfolio value marked at each bar; values[0] is
                                  the start value, values[t + 1] the value after step t
                                  (``info["value"]`` of `jaxtrade.envs.portfolio`)
  weights         float [T, A+1]  weights held after step t's trade, cash last
                                  (``info["weights"]``)
  actions         int   [T]       action (regime) index of step t; the env's hold action
                                  (`hold`: keep the position) continues a trade
  costs           float [T]       trading costs paid at step t, in currency (``info["cost"]``)
  turnover        float [T]       traded value / portfolio value at step t (``info["turnover"]``)
  market_returns  float [T]       simple return of the equal-weight market index over
                                  the bar of step t: mean_i p_i[t+1] / p_i[t] - 1 where
                                  t is the bar the step's trade executes at
  bars_per_year   float []        252 for daily bars, about 1,764 for US hourly bars,
                                  8,760 for 24/7 hourly bars (static or traced)

The per-bar return of step t is ``r_t = values[t + 1] / values[t] - 1``; it
includes the step's costs and the return its portfolio earns. Means and standard
deviations are over the T bars, standard deviations with ``ddof=0`` (as
``np.std``), so a walk of one step is still defined. A ratio whose denominator
is zero (no volatility, no drawdown, no losing trade) has a documented finite
value instead of inf or NaN, so that non-finite checks keep meaning divergence.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Scalar = jax.Array | float

# Profit factor when there are winning trades but no losing one (and the upper
# bound of the profit factor in general): finite, far above any realistic value.
PROFIT_FACTOR_CAP = 100.0

# Market regime labels, in the order of the `market_regimes` codes.
MARKET_REGIMES = ("bull", "bear", "high_vol", "low_vol")
BULL, BEAR, HIGH_VOL, LOW_VOL = range(4)
REGIME_WINDOW = 20  # trailing bars of the market index behind a regime label
HIGH_VOL_RATIO = 1.5  # high-vol when trailing vol > 1.5 x its median over the walk
LOW_VOL_RATIO = 0.67  # low-vol when trailing vol < 0.67 x its median over the walk

# Model score weights (reference: profitability 40%, reward 20%, value accuracy
# 20%, exploration 10%, stability -10%).
SCORE_WEIGHTS = {
    "profitability": 0.4,
    "reward": 0.2,
    "explained_variance": 0.2,
    "exploration": 0.1,
    "instability": -0.1,
}

_F32 = jnp.float32


def _safe_div(num: jax.Array, den: jax.Array, default: Scalar = 0.0) -> jax.Array:
    """num / den where den != 0, else `default`; NaN-free in both branches."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), default)


# ------------------------------------------------------------------ returns and risk
def bar_returns(values: jax.Array) -> jax.Array:
    """Simple per-bar returns ``values[1:] / values[:-1] - 1``: [T + 1] -> float32 [T]."""
    values = values.astype(_F32)
    return values[1:] / values[:-1] - 1.0


def total_return(values: jax.Array) -> jax.Array:
    """``values[-1] / values[0] - 1`` of a [T + 1] curve."""
    values = values.astype(_F32)
    return values[-1] / values[0] - 1.0


def annualised_return(values: jax.Array, bars_per_year: Scalar) -> jax.Array:
    """Geometric annualised return ``(values[-1] / values[0]) ** (bars_per_year / T) - 1``.

    A curve that ends at or below zero gives -1.
    """
    values = values.astype(_F32)
    n_bars = values.shape[0] - 1
    growth = values[-1] / values[0]
    positive = growth > 0
    log_growth = jnp.log(jnp.where(positive, growth, 1.0))
    return jnp.where(positive, jnp.expm1(log_growth * (bars_per_year / n_bars)), -1.0)


def annualised_volatility(returns: jax.Array, bars_per_year: Scalar) -> jax.Array:
    """``std(returns) * sqrt(bars_per_year)`` of per-bar returns [T] (ddof 0)."""
    return jnp.std(returns.astype(_F32)) * jnp.sqrt(bars_per_year)


def sharpe_ratio(returns: jax.Array, bars_per_year: Scalar) -> jax.Array:
    """``mean / std * sqrt(bars_per_year)`` of per-bar returns [T], risk-free 0.

    0 when the returns are exactly constant (std 0): undefined, reported as 0.
    """
    returns = returns.astype(_F32)
    return _safe_div(jnp.mean(returns), jnp.std(returns)) * jnp.sqrt(bars_per_year)


def downside_deviation(returns: jax.Array) -> jax.Array:
    """``sqrt(mean(min(r, 0) ** 2))`` over all T bars (target 0)."""
    returns = returns.astype(_F32)
    return jnp.sqrt(jnp.mean(jnp.minimum(returns, 0.0) ** 2))


def sortino_ratio(returns: jax.Array, bars_per_year: Scalar) -> jax.Array:
    """``mean / downside_deviation * sqrt(bars_per_year)``; 0 when no bar lost money."""
    returns = returns.astype(_F32)
    return _safe_div(jnp.mean(returns), downside_deviation(returns)) * jnp.sqrt(bars_per_year)


def drawdowns(values: jax.Array) -> jax.Array:
    """``1 - values / running peak`` at each mark: [T + 1] -> float32 [T + 1] in [0, 1]."""
    values = values.astype(_F32)
    return 1.0 - values / jax.lax.cummax(values, axis=0)


def max_drawdown(values: jax.Array) -> jax.Array:
    """Largest fall from a running peak of the [T + 1] curve, as a positive fraction."""
    return jnp.max(drawdowns(values))


def calmar_ratio(values: jax.Array, bars_per_year: Scalar) -> jax.Array:
    """``annualised_return / max_drawdown``; 0 when the curve never fell below a peak."""
    return _safe_div(annualised_return(values, bars_per_year), max_drawdown(values))


def value_at_risk(returns: jax.Array, level: Scalar = 0.95) -> jax.Array:
    """Historical VaR of per-bar returns [T], as a loss: ``-quantile(returns, 1 - level)``.

    The quantile interpolates linearly between order statistics (numpy's
    default, ``method="linear"``). Positive means a loss; negative when even
    the worst (1 - level) bars gained.
    """
    return -jnp.quantile(returns.astype(_F32), 1.0 - level)


def expected_shortfall(returns: jax.Array, level: Scalar = 0.95) -> jax.Array:
    """Historical expected shortfall: minus the mean of the returns at or below the VaR quantile.

    Uses the same quantile as `value_at_risk` (so ES >= VaR); the set is never
    empty because it holds at least the worst bar.
    """
    returns = returns.astype(_F32)
    tail = returns <= jnp.quantile(returns, 1.0 - level)
    return -jnp.sum(jnp.where(tail, returns, 0.0)) / jnp.sum(tail)


def market_correlation(returns: jax.Array, market_returns: jax.Array) -> jax.Array:
    """Pearson correlation of per-bar returns [T] with the market's [T]; 0 if either is constant."""
    x = returns.astype(_F32)
    y = market_returns.astype(_F32)
    x = x - jnp.mean(x)
    y = y - jnp.mean(y)
    return _safe_div(jnp.sum(x * y), jnp.sqrt(jnp.sum(x * x) * jnp.sum(y * y)))


# ------------------------------------------------------------------------- trades
class Trades(NamedTuple):
    """The trades of one walk, one slot per possible segment (at most T).

    Slot k describes segment k of the walk; slots past the last segment, and
    the leading segment of HOLDs before any regime was chosen, have
    ``is_trade = False`` and zeros elsewhere.
    """

    returns: jax.Array  # float32 [T], compounded portfolio return of each trade
    durations: jax.Array  # float32 [T], steps (bars) in each trade
    is_trade: jax.Array  # bool [T], whether slot k is a trade


def trade_segments(actions: jax.Array, hold: int) -> tuple[jax.Array, jax.Array]:
    """Effective regime and segment id of each step.

    The effective regime of step t is its action, or for HOLD the last non-HOLD
    action before it (HOLD keeps the position); -1 while no regime has been
    chosen yet (leading HOLDs keep whatever the walk started with). A segment
    is a maximal run of steps with the same effective regime.

    Args:
      actions: int [T] regime indices.
      hold: the action that keeps the position (HOLD); -1 for an env without one.

    Returns:
      regime int32 [T] (-1 for leading HOLDs), segment int32 [T] (0, 1, ...,
      nondecreasing, +1 at each change of effective regime).
    """
    actions = actions.astype(jnp.int32)
    steps = jnp.arange(actions.shape[0], dtype=jnp.int32)
    last_chosen = jax.lax.cummax(jnp.where(actions != hold, steps, -1), axis=0)
    regime = jnp.where(last_chosen >= 0, actions[jnp.maximum(last_chosen, 0)], -1)
    changed = jnp.concatenate([jnp.ones(1, bool), regime[1:] != regime[:-1]])
    return regime, jnp.cumsum(changed, dtype=jnp.int32) - 1


def trades(values: jax.Array, actions: jax.Array, hold: int) -> Trades:
    """Split a walk into trades.

    A trade is a holding period between regime changes: a maximal run of
    consecutive steps whose effective regime (`trade_segments`: HOLD continues
    the previous non-HOLD regime) is the same. So ``[4, 0, 0, 4, 5]`` is two
    trades (steps 0-3 in EQUAL_WEIGHT, then step 4 in MOMENTUM); choosing the
    same regime again, directly or after HOLDs, continues the trade (a
    rebalance, not a new position). FULL_CASH is a regime like the others, so
    a run of it is a trade (usually of return ~0 minus the cost of getting
    out). Leading HOLDs, before any regime is chosen, are no trade. The last
    trade is still open at the end of the walk and is marked to the last value.

    A trade's return is the compounded portfolio return over its steps,
    ``prod(1 + r_t) - 1`` (including the costs paid in them), its duration the
    number of its steps.

    Args:
      values: float [T + 1] portfolio values.
      actions: int [T] regime indices.
      hold: the action that keeps the position (`trade_segments`).
    """
    n_steps = actions.shape[0]
    regime, segment = trade_segments(actions, hold)
    values = jnp.maximum(values.astype(_F32), jnp.finfo(_F32).tiny)
    log_growth = jnp.log(values[1:]) - jnp.log(values[:-1])
    seg_sum = lambda x: jax.ops.segment_sum(
        x, segment, num_segments=n_steps, indices_are_sorted=True
    )
    durations = seg_sum(jnp.ones(n_steps, _F32))
    chosen = seg_sum((regime >= 0).astype(_F32))
    is_trade = chosen > 0  # every step of a segment shares its effective regime
    returns = jnp.where(is_trade, jnp.expm1(seg_sum(log_growth)), 0.0)
    return Trades(returns=returns, durations=jnp.where(is_trade, durations, 0.0), is_trade=is_trade)


def n_trades(t: Trades) -> jax.Array:
    """Number of trades, int32."""
    return jnp.sum(t.is_trade, dtype=jnp.int32)


def win_rate(t: Trades) -> jax.Array:
    """Share of trades with a positive return; 0 when there is no trade."""
    wins = jnp.sum(t.is_trade & (t.returns > 0)).astype(_F32)
    return _safe_div(wins, n_trades(t).astype(_F32))


def profit_factor(t: Trades) -> jax.Array:
    """``sum(winning returns) / |sum(losing returns)|``, capped at `PROFIT_FACTOR_CAP`.

    With no losing trade: `PROFIT_FACTOR_CAP` if some trade won, 0 if none did
    (no trade, or only trades of return exactly 0).
    """
    gains = jnp.sum(jnp.where(t.is_trade, jnp.maximum(t.returns, 0.0), 0.0))
    losses = -jnp.sum(jnp.where(t.is_trade, jnp.minimum(t.returns, 0.0), 0.0))
    no_loss = jnp.where(gains > 0, PROFIT_FACTOR_CAP, 0.0)
    return jnp.minimum(_safe_div(gains, losses, no_loss), PROFIT_FACTOR_CAP)


def avg_trade_return(t: Trades) -> jax.Array:
    """Mean return per trade; 0 when there is no trade."""
    return _safe_div(jnp.sum(t.returns), n_trades(t).astype(_F32))


def avg_trade_duration(t: Trades) -> jax.Array:
    """Mean trade duration in bars; 0 when there is no trade."""
    return _safe_div(jnp.sum(t.durations), n_trades(t).astype(_F32))


# ---------------------------------------------------------------------- positions
def concentration(weights: jax.Array) -> jax.Array:
    """Mean Herfindahl index of the stock weights renormalised to the invested part.

    Per bar, ``HHI = sum_i (w_i / sum_j w_j) ** 2`` over the A stock weights
    (cash excluded): 1 for a single stock, 1/k for k equal stocks. An all-cash
    bar (no stock weight) counts as HHI 0.

    Args:
      weights: float [T, A + 1] weights after each step's trade, cash last.

    Returns:
      float32 [], the mean over the T bars.
    """
    stocks = weights[:, :-1].astype(_F32)
    invested = jnp.sum(stocks, axis=-1)
    safe = jnp.where(invested > 0, invested, 1.0)
    hhi = jnp.where(invested > 0, jnp.sum((stocks / safe[:, None]) ** 2, axis=-1), 0.0)
    return jnp.mean(hhi)


def gross_exposure(weights: jax.Array) -> jax.Array:
    """Mean sum of the stock weights (``1 - cash``) of [T, A + 1] weights; no leverage, so <= 1."""
    return jnp.mean(jnp.sum(weights[:, :-1].astype(_F32), axis=-1))


def action_distribution(actions: jax.Array, n_actions: int) -> jax.Array:
    """Share of the T steps spent in each action: int [T] -> float32 [n_actions], sums to 1."""
    counts = jnp.bincount(actions.astype(jnp.int32), length=n_actions)
    return counts.astype(_F32) / actions.shape[0]


# ----------------------------------------------------------------- market regimes
def market_regimes(
    market_returns: jax.Array,
    window: int = REGIME_WINDOW,
    high_ratio: Scalar = HIGH_VOL_RATIO,
    low_ratio: Scalar = LOW_VOL_RATIO,
) -> jax.Array:
    """Label each bar bull / bear / high-vol / low-vol from the market index.

    For bar t, over the trailing window of bars ``max(0, t - window + 1) .. t``
    (the bar itself included; fewer bars at the start of the walk, a single
    one at t = 0): ``m_t`` the mean and ``s_t`` the standard deviation (ddof
    0) of the market returns. With ``M`` the median of ``s`` over the walk
    (numpy's median), the label is, in this order of precedence:

      HIGH_VOL (2) if ``s_t > high_ratio * M``,
      LOW_VOL (3)  if ``s_t < low_ratio * M``,
      BULL (0)     if ``m_t >= 0``,
      BEAR (1)     otherwise.

    A flat market (M = 0) is never high- or low-vol. The label describes the
    market during the bar, for reporting; it is not an input to any decision.

    Args:
      market_returns: float [T] equal-weight index returns.
      window: trailing bars (static).

    Returns:
      int32 [T] labels, indices into `MARKET_REGIMES`.
    """
    m = market_returns.astype(_F32)
    n_steps = m.shape[0]
    idx = jnp.arange(n_steps)[:, None] - jnp.arange(window)[None, :]  # [T, window]
    inside = idx >= 0
    x = m[jnp.maximum(idx, 0)]
    count = jnp.sum(inside, axis=-1)
    mean = jnp.sum(jnp.where(inside, x, 0.0), axis=-1) / count
    var = jnp.sum(jnp.where(inside, (x - mean[:, None]) ** 2, 0.0), axis=-1) / count
    vol = jnp.sqrt(var)
    median = jnp.median(vol)
    return jnp.select(
        [vol > high_ratio * median, vol < low_ratio * median, mean >= 0],
        [HIGH_VOL, LOW_VOL, BULL],
        BEAR,
    ).astype(jnp.int32)


def regime_performance(
    returns: jax.Array, labels: jax.Array, bars_per_year: Scalar
) -> tuple[jax.Array, jax.Array]:
    """Share of bars and the strategy's annualised mean return in each market regime.

    Args:
      returns: float [T] strategy per-bar returns.
      labels: int [T] `market_regimes` labels.
      bars_per_year: annualisation factor.

    Returns:
      share float32 [4] (sums to 1), annualised mean return float32 [4]
      (``mean(r over the regime's bars) * bars_per_year``, 0 for a regime with
      no bar), both in `MARKET_REGIMES` order.
    """
    returns = returns.astype(_F32)
    onehot = labels[:, None] == jnp.arange(len(MARKET_REGIMES))[None, :]  # [T, 4]
    count = jnp.sum(onehot, axis=0).astype(_F32)
    total = jnp.sum(jnp.where(onehot, returns[:, None], 0.0), axis=0)
    return count / returns.shape[0], _safe_div(total, count) * bars_per_year


# ----------------------------------------------------------------------- together
def compute_all(
    values: jax.Array,
    weights: jax.Array,
    actions: jax.Array,
    costs: jax.Array,
    turnover: jax.Array,
    market_returns: jax.Array,
    bars_per_year: Scalar,
    *,
    hold: int,
    n_actions: int,
) -> dict[str, jax.Array]:
    """Every trading metric of one walk (shapes in the module docstring).

    `hold` is the env's action that keeps the position (it continues a trade: `trades`),
    `n_actions` its number of actions (the length of action_freq). Batch walks with
    ``jax.vmap(partial(compute_all, hold=h, n_actions=n), in_axes=(0, 0, 0, 0, 0, 0, None))``
    (or ``None`` for a market shared by all walks).

    Returns:
      float32 scalars unless noted: total_return, annual_return (geometric),
      annual_volatility, sharpe, sortino, max_drawdown, calmar; n_trades
      (int32), win_rate, profit_factor, avg_trade_return, avg_trade_duration
      (bars); turnover_mean, turnover_total, costs_total (currency),
      costs_fraction (of values[0]); var_95, es_95 (per-bar, as losses);
      market_correlation; hhi_mean, gross_exposure; action_freq (float32
      [n_actions]); for each market regime L in `MARKET_REGIMES`: L_share and
      L_ann_mean (annualised mean strategy return in its bars).
    """
    returns = bar_returns(values)
    t = trades(values, actions, hold)
    share, ann_mean = regime_performance(returns, market_regimes(market_returns), bars_per_year)
    costs = costs.astype(_F32)
    turnover = turnover.astype(_F32)
    out = {
        "total_return": total_return(values),
        "annual_return": annualised_return(values, bars_per_year),
        "annual_volatility": annualised_volatility(returns, bars_per_year),
        "sharpe": sharpe_ratio(returns, bars_per_year),
        "sortino": sortino_ratio(returns, bars_per_year),
        "max_drawdown": max_drawdown(values),
        "calmar": calmar_ratio(values, bars_per_year),
        "n_trades": n_trades(t),
        "win_rate": win_rate(t),
        "profit_factor": profit_factor(t),
        "avg_trade_return": avg_trade_return(t),
        "avg_trade_duration": avg_trade_duration(t),
        "turnover_mean": jnp.mean(turnover),
        "turnover_total": jnp.sum(turnover),
        "costs_total": jnp.sum(costs),
        "costs_fraction": jnp.sum(costs) / values[0].astype(_F32),
        "var_95": value_at_risk(returns, 0.95),
        "es_95": expected_shortfall(returns, 0.95),
        "market_correlation": market_correlation(returns, market_returns),
        "hhi_mean": concentration(weights),
        "gross_exposure": gross_exposure(weights),
        "action_freq": action_distribution(actions, n_actions),
    }
    for i, name in enumerate(MARKET_REGIMES):
        out[f"{name}_share"] = share[i]
        out[f"{name}_ann_mean"] = ann_mean[i]
    return out


# -------------------------------------------------------------------- model score
def model_score(
    avg_trade_return: Scalar,
    win_rate: Scalar,
    avg_reward: Scalar,
    explained_variance: Scalar,
    entropy: Scalar,
    approx_kl: Scalar,
    clip_frac: Scalar,
    n_actions: Scalar,
    *,
    trade_return_scale: Scalar = 0.01,
    reward_scale: Scalar = 1e-3,
    kl_limit: Scalar = 0.02,
    clip_limit: Scalar = 0.2,
) -> jax.Array:
    """Composite model score in [-90, 90]: trading results and RL health in one number.

    Each component is squashed to a bounded range, weighted as in the
    reference, and scaled by 100::

      profitability = tanh(avg_trade_return * win_rate / trade_return_scale)   [-1, 1]
      reward        = tanh(avg_reward / reward_scale)                          [-1, 1]
      value         = clip(explained_variance, -1, 1)                          [-1, 1]
      exploration   = clip(entropy / log(n_actions), 0, 1)                     [0, 1]
      instability   = clip(max(approx_kl / kl_limit,
                               clip_frac / clip_limit) - 1, 0, 1)             [0, 1]
      score = 100 * (0.4 profitability + 0.2 reward + 0.2 value
                     + 0.1 exploration - 0.1 instability)

    So the score lies in [-90, 90]; the reference's reading applies: above +20
    is good (green), below 0 bad (red). The instability penalty is 0 while KL
    stays under `kl_limit` and the clip fraction under `clip_limit`, and is
    full at twice either limit. The default scales fit daily bars (1% per
    trade at a 100% win rate gives tanh(1) = 0.76; a mean per-step reward of
    1e-3, about 25% a year, gives 0.76): pass smaller ones for intraday bars.

    Args:
      avg_trade_return: mean compounded return per trade (`avg_trade_return`).
      win_rate: share of winning trades, in [0, 1].
      avg_reward: mean per-step reward.
      explained_variance: of the critic (`jaxtrade.ppo.explained_variance`).
      entropy: mean policy entropy, in nats.
      approx_kl: mean approximate KL of the PPO update.
      clip_frac: share of ratios clipped in the PPO update.
      n_actions: number of valid actions (>= 2; a mean over states where the env masks
        actions), for the maximal entropy log(n_actions).

    Returns:
      float32 [] score.
    """
    f = lambda x: jnp.asarray(x, _F32)
    profitability = jnp.tanh(f(avg_trade_return) * f(win_rate) / trade_return_scale)
    reward = jnp.tanh(f(avg_reward) / reward_scale)
    value = jnp.clip(f(explained_variance), -1.0, 1.0)
    # With one valid action there is nothing to explore (and log(1) = 0): the term is 0.
    n = f(n_actions)
    exploration = jnp.where(n > 1, jnp.clip(f(entropy) / jnp.log(jnp.maximum(n, 2.0)), 0.0,
                                            1.0), 0.0)
    excess = jnp.maximum(f(approx_kl) / kl_limit, f(clip_frac) / clip_limit) - 1.0
    instability = jnp.clip(excess, 0.0, 1.0)
    w = SCORE_WEIGHTS
    return 100.0 * (
        w["profitability"] * profitability
        + w["reward"] * reward
        + w["explained_variance"] * value
        + w["exploration"] * exploration
        + w["instability"] * instability
    )

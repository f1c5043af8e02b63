"""Trading metrics against independent numpy/pandas computations, and the model score by hand."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxtrade import metrics
from jaxtrade.envs.regimes import N_REGIMES, Regime

T, A = 64, 4  # shape of the random walks that go through compute_all
DAILY, HOURLY = 252.0, 8760.0
TOL = {"rtol": 2e-4, "atol": 1e-5}

HOLD = int(Regime.HOLD)  # the walks below are the portfolio env's: its hold action and count


def _compute_all(*walk_and_bars_per_year):
    return metrics.compute_all(*walk_and_bars_per_year, hold=HOLD, n_actions=N_REGIMES)


# One compiled program for every compute_all call below: bars_per_year is traced.
_all = jax.jit(chex.assert_max_traces(_compute_all, n=1))
_all_batched = jax.jit(jax.vmap(_compute_all, in_axes=(0, 0, 0, 0, 0, 0, None)))


class _Jitted:
    """``metrics.<fn>`` jitted once per function: compiles are most of this file's time."""

    def __getattr__(self, name):
        fn = jax.jit(getattr(metrics, name))
        setattr(self, name, fn)
        return fn


jm = _Jitted()


def f32(x):
    return jnp.asarray(x, jnp.float32)


# ------------------------------------------------------------ numpy references
def np_returns(values):
    values = np.asarray(values, np.float64)
    return values[1:] / values[:-1] - 1.0


def np_max_drawdown(values):
    values = np.asarray(values, np.float64)
    return np.max(1.0 - values / np.maximum.accumulate(values))


def np_trades(values, actions):
    """[(return, duration)] by walking the steps: HOLD extends, a new regime opens."""
    out, current = [], None
    for a, growth in zip(actions, 1.0 + np_returns(values), strict=True):
        if a != Regime.HOLD and a != current:
            current = a
            out.append([1.0, 0])
        if current is None:  # leading HOLDs: no position chosen yet
            continue
        out[-1][0] *= growth
        out[-1][1] += 1
    return [(g - 1.0, n) for g, n in out]


def np_market_labels(market_returns):
    s = pd.Series(np.asarray(market_returns, np.float64))
    mean = s.rolling(20, min_periods=1).mean().to_numpy()
    vol = s.rolling(20, min_periods=1).std(ddof=0).to_numpy()
    med = np.median(vol)
    return np.select([vol > 1.5 * med, vol < 0.67 * med, mean >= 0], [2, 3, 0], 1)


def np_all(values, weights, actions, costs, turnover, market, bpy):
    """Every compute_all key from numpy/pandas, written from the definitions."""
    r = np_returns(values)
    n = len(r)
    growth = values[-1] / values[0]
    ann = growth ** (bpy / n) - 1
    mdd = np_max_drawdown(values)
    tr = np_trades(values, actions)
    rets = np.array([x for x, _ in tr])
    gains, losses = rets[rets > 0].sum(), -rets[rets < 0].sum()
    q = np.quantile(r, 0.05)
    stocks = weights[:, :-1].astype(np.float64)
    labels = np_market_labels(market)
    out = {
        "total_return": growth - 1,
        "annual_return": ann,
        "annual_volatility": r.std() * np.sqrt(bpy),
        "sharpe": r.mean() / r.std() * np.sqrt(bpy),
        "sortino": r.mean() / np.sqrt(np.mean(np.minimum(r, 0) ** 2)) * np.sqrt(bpy),
        "max_drawdown": mdd,
        "calmar": ann / mdd,
        "n_trades": len(tr),
        "win_rate": np.mean(rets > 0),
        "profit_factor": min(gains / losses, 100.0),
        "avg_trade_return": rets.mean(),
        "avg_trade_duration": np.mean([d for _, d in tr]),
        "turnover_mean": turnover.mean(),
        "turnover_total": turnover.sum(),
        "costs_total": costs.sum(),
        "costs_fraction": costs.sum() / values[0],
        "var_95": -q,
        "es_95": -r[r <= q].mean(),
        "market_correlation": np.corrcoef(r, market)[0, 1],
        "hhi_mean": np.mean(np.sum((stocks / stocks.sum(1, keepdims=True)) ** 2, axis=1)),
        "gross_exposure": stocks.sum(1).mean(),
        "action_freq": np.bincount(actions, minlength=N_REGIMES) / n,
    }
    for k, name in enumerate(metrics.MARKET_REGIMES):
        out[f"{name}_share"] = np.mean(labels == k)
        out[f"{name}_ann_mean"] = r[labels == k].mean() * bpy if (labels == k).any() else 0.0
    return out


def random_walk(seed):
    """A random strategy walk of T steps: HOLDs, repeated regimes, costs, a shared market."""
    rng = np.random.default_rng(seed)
    market = rng.normal(0.0005, 0.01, T)
    market[T // 2 : T // 2 + 12] *= 4.0  # a high-vol stretch
    r = 0.8 * market + rng.normal(0.0, 0.004, T)
    values = 100.0 * np.concatenate([[1.0], np.cumprod(1.0 + r)])
    actions = np.where(rng.random(T) < 0.4, 0, rng.integers(1, 5, T))
    weights = rng.dirichlet(np.ones(A + 1), T)
    costs = rng.random(T) * 0.05
    turnover = rng.random(T)
    return (
        values.astype(np.float32),
        weights.astype(np.float32),
        actions.astype(np.int32),
        costs.astype(np.float32),
        turnover.astype(np.float32),
        market.astype(np.float32),
    )


@pytest.fixture(scope="module")
def walks():
    return [random_walk(seed) for seed in (0, 1, 2)]


def as_np(tree):
    return {k: np.asarray(v) for k, v in tree.items()}


# --------------------------------------------------------------- returns and risk
def test_constant_growth_curve():
    g, n = 1.001, 252
    values = f32(g ** np.arange(n + 1))
    r = jm.bar_returns(values)
    np.testing.assert_allclose(jm.total_return(values), g**n - 1, rtol=1e-4)
    # Half a year of bars: annualised = growth ** 2.
    np.testing.assert_allclose(jm.annualised_return(values, 2.0 * n), g ** (2 * n) - 1, rtol=1e-4)
    assert float(jm.annualised_volatility(r, DAILY)) < 1e-5
    assert float(jm.max_drawdown(values)) == 0.0
    assert float(jm.calmar_ratio(values, DAILY)) == 0.0  # no drawdown: 0 by convention
    assert float(jm.sortino_ratio(r, DAILY)) == 0.0  # no losing bar: 0 by convention


def test_one_known_drawdown():
    values = np.array([100, 110, 121, 99, 88, 132, 120], np.float64)
    # Peak 121, trough 88; the later fall 132 -> 120 is smaller.
    np.testing.assert_allclose(jm.max_drawdown(f32(values)), 33 / 121, rtol=1e-6)
    np.testing.assert_allclose(jm.max_drawdown(f32(values)), np_max_drawdown(values), rtol=1e-6)
    np.testing.assert_allclose(
        jm.drawdowns(f32(values)), [0, 0, 0, 22 / 121, 33 / 121, 0, 12 / 132], atol=1e-7
    )
    ann = 1.2 ** (DAILY / 6) - 1
    np.testing.assert_allclose(jm.annualised_return(f32(values), DAILY), ann, rtol=1e-4)
    np.testing.assert_allclose(jm.calmar_ratio(f32(values), DAILY), ann / (33 / 121), rtol=1e-4)


def test_sharpe_sortino_volatility_against_pandas():
    rng = np.random.default_rng(3)
    r = rng.normal(0.001, 0.02, 200).astype(np.float32)
    s = pd.Series(r.astype(np.float64))
    vol = s.std(ddof=0)
    downside = np.sqrt((s.clip(upper=0) ** 2).mean())
    np.testing.assert_allclose(
        jm.annualised_volatility(f32(r), DAILY), vol * np.sqrt(DAILY), rtol=1e-4
    )
    np.testing.assert_allclose(
        jm.sharpe_ratio(f32(r), DAILY), s.mean() / vol * np.sqrt(DAILY), rtol=1e-3
    )
    np.testing.assert_allclose(
        jm.sortino_ratio(f32(r), DAILY), s.mean() / downside * np.sqrt(DAILY), rtol=1e-3
    )
    # Hand example: r = [+2%, -2%, +2%, -2%] -> mean 0, std 2%, downside sqrt(2 * 4e-4 / 4).
    alt = f32([0.02, -0.02, 0.02, -0.02])
    np.testing.assert_allclose(jm.annualised_volatility(alt, 1.0), 0.02, rtol=1e-5)
    np.testing.assert_allclose(jm.downside_deviation(alt), math.sqrt(2e-4), rtol=1e-5)
    assert abs(float(jm.sharpe_ratio(alt, DAILY))) < 1e-4


def test_var_and_expected_shortfall():
    # 50 returns -1.0%, -0.9%, ..., +3.9%: the 5% quantile sits at order statistic 2.45.
    r = np.arange(-10, 40) / 1000.0
    q = -0.008 + 0.45 * 0.001
    np.testing.assert_allclose(jm.value_at_risk(f32(r)), -q, rtol=1e-5)
    np.testing.assert_allclose(jm.expected_shortfall(f32(r)), 0.009, rtol=1e-5)
    rng = np.random.default_rng(4)
    r = rng.standard_t(3, 301).astype(np.float32) * 0.01
    r64 = r.astype(np.float64)
    q = np.quantile(r64, 0.05)
    np.testing.assert_allclose(jm.value_at_risk(f32(r)), -q, rtol=1e-5)
    np.testing.assert_allclose(jm.expected_shortfall(f32(r)), -r64[r64 <= q].mean(), rtol=1e-5)
    np.testing.assert_allclose(jm.value_at_risk(f32(r), 0.99), -np.quantile(r64, 0.01), rtol=1e-5)


def test_market_correlation():
    rng = np.random.default_rng(5)
    m = rng.normal(0, 0.01, 100)
    r = 0.5 * m + rng.normal(0, 0.01, 100)
    np.testing.assert_allclose(
        jm.market_correlation(f32(r), f32(m)), np.corrcoef(r, m)[0, 1], rtol=1e-4
    )
    np.testing.assert_allclose(jm.market_correlation(f32(-2 * m), f32(m)), -1.0, rtol=1e-5)
    assert float(jm.market_correlation(f32(np.zeros(100)), f32(m))) == 0.0


# ------------------------------------------------------------------------- trades
def test_trades_by_hand():
    H, EW, MOM, CASH = Regime.HOLD, Regime.EQUAL_WEIGHT, Regime.MOMENTUM, Regime.FULL_CASH
    # Step:     0  1   2  3  4    5    6     7  8     9
    actions = [H, EW, H, H, MOM, MOM, CASH, H, CASH, EW]
    r = np.array([0.01, 0.05, 0.10, -0.02, 0.03, -0.05, -0.01, 0.0, 0.002, -0.03])
    values = np.concatenate([[1.0], np.cumprod(1 + r)])
    # Trades: EW steps 1-3, MOM 4-5, CASH 6-8 (HOLD and CASH again continue), EW 9.
    # Step 0 is a leading HOLD: no trade.
    expected = [1.05 * 1.10 * 0.98 - 1, 1.03 * 0.95 - 1, 0.99 * 1.0 * 1.002 - 1, -0.03]
    durations = [3, 2, 3, 1]
    assert [x for x, _ in np_trades(values, actions)] == pytest.approx(expected)

    regime, segment = jm.trade_segments(jnp.asarray(actions), HOLD)
    np.testing.assert_array_equal(regime, [-1, 4, 4, 4, 5, 5, 1, 1, 1, 4])
    np.testing.assert_array_equal(segment, [0, 1, 1, 1, 2, 2, 3, 3, 3, 4])

    t = jm.trades(f32(values), jnp.asarray(actions), HOLD)
    np.testing.assert_array_equal(t.is_trade, [False, True, True, True, True] + [False] * 5)
    np.testing.assert_allclose(t.returns[1:5], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(t.durations, [0, *durations] + [0] * 5)
    assert int(jm.n_trades(t)) == 4
    # Only the first trade won; the cash trade lost the 1% of its first step.
    assert expected[0] > 0 and max(expected[1:]) < 0
    np.testing.assert_allclose(jm.win_rate(t), 0.25)
    gains, losses = expected[0], -(expected[1] + expected[2] + expected[3])
    np.testing.assert_allclose(jm.profit_factor(t), gains / losses, rtol=1e-4)
    np.testing.assert_allclose(jm.avg_trade_duration(t), 9 / 4)
    np.testing.assert_allclose(jm.avg_trade_return(t), np.mean(expected), rtol=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_trades_against_a_loop(seed):
    rng = np.random.default_rng(seed)
    n = 40
    actions = np.where(rng.random(n) < 0.5, 0, rng.integers(1, 4, n))
    r = rng.normal(0, 0.02, n)
    values = np.concatenate([[1.0], np.cumprod(1 + r)]).astype(np.float32)
    ref = np_trades(values, actions)
    t = jm.trades(f32(values), jnp.asarray(actions), HOLD)
    mask = np.asarray(t.is_trade)
    assert mask.sum() == len(ref)
    np.testing.assert_allclose(
        np.asarray(t.returns)[mask], [x for x, _ in ref], rtol=1e-4, atol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(t.durations)[mask], [d for _, d in ref])


def test_trade_conventions_without_losses_or_trades():
    values = f32([1.0, 1.01, 1.02, 1.03])
    winners = jm.trades(values, jnp.asarray([4, 5, 4]), HOLD)
    assert int(jm.n_trades(winners)) == 3
    assert float(jm.win_rate(winners)) == 1.0
    assert float(jm.profit_factor(winners)) == metrics.PROFIT_FACTOR_CAP
    idle = jm.trades(values, jnp.asarray([0, 0, 0]), HOLD)  # never chose a regime
    assert int(jm.n_trades(idle)) == 0
    for name in ("win_rate", "profit_factor", "avg_trade_duration", "avg_trade_return"):
        assert float(getattr(jm, name)(idle)) == 0.0, name


# ---------------------------------------------------------------------- positions
def test_concentration_and_exposure():
    weights = np.array(
        [
            [0.25, 0.25, 0.25, 0.25, 0.0],  # 4 equal stocks: HHI 1/4, exposure 1
            [0.5, 0.0, 0.0, 0.0, 0.5],  # one stock: HHI 1, exposure 0.5
            [0.0, 0.0, 0.0, 0.0, 1.0],  # all cash: HHI 0 by convention, exposure 0
            [0.35, 0.35, 0.0, 0.0, 0.3],  # two equal stocks: HHI 1/2, exposure 0.7
        ]
    )
    np.testing.assert_allclose(jm.concentration(f32(weights)), (0.25 + 1 + 0 + 0.5) / 4, rtol=1e-6)
    np.testing.assert_allclose(jm.gross_exposure(f32(weights)), (1 + 0.5 + 0 + 0.7) / 4, rtol=1e-6)


def test_action_distribution():
    actions = np.array([0, 1, 1, 11, 4, 4, 4, 0])
    freq = metrics.action_distribution(jnp.asarray(actions), N_REGIMES)
    assert freq.shape == (N_REGIMES,)
    np.testing.assert_allclose(freq, np.bincount(actions, minlength=12) / 8)
    np.testing.assert_allclose(np.asarray(freq)[[0, 1, 4, 11]], [0.25, 0.25, 0.375, 0.125])
    # Another env's action count: its own number of shares.
    few = metrics.action_distribution(jnp.asarray([0, 2, 2, 3]), 4)
    np.testing.assert_allclose(few, [0.25, 0.0, 0.5, 0.25])


def test_the_hold_action_is_an_argument():
    """`hold` continues the position; an env without a hold action (-1) makes every action a
    position, and another env's hold index is honoured."""
    actions = jnp.asarray([0, 0, 4, 0, 2])
    regime, segment = jm.trade_segments(actions, -1)  # no hold: 0 is a position like any
    np.testing.assert_array_equal(regime, [0, 0, 4, 0, 2])
    np.testing.assert_array_equal(segment, [0, 0, 1, 2, 3])
    regime, segment = jm.trade_segments(actions, 2)  # action 2 holds
    np.testing.assert_array_equal(regime, [0, 0, 4, 0, 0])
    np.testing.assert_array_equal(segment, [0, 0, 1, 2, 2])
    values = f32([1.0, 1.01, 1.02, 1.03, 1.04, 1.05])
    assert int(jm.n_trades(jm.trades(values, actions, -1))) == 4
    assert int(jm.n_trades(jm.trades(values, actions, 2))) == 3
    # The portfolio's HOLD (0): the leading HOLDs are no trade, then 4 (held on) and 2.
    assert int(jm.n_trades(jm.trades(values, actions, HOLD))) == 2


# ----------------------------------------------------------------- market regimes
def test_market_regime_labels_on_a_built_path():
    bull = np.tile([0.02, 0.0], 20)  # mean +1%, vol 1%
    bear = np.tile([0.0, -0.02], 20)  # mean -1%, vol 1%
    wild = np.tile([0.04, -0.04], 20)  # mean 0, vol 4%
    calm = np.tile([0.003, -0.001], 20)  # mean +0.1%, vol 0.2%
    m = np.concatenate([bull, bear, wild, calm])
    labels = np.asarray(jm.market_regimes(f32(m)))
    np.testing.assert_array_equal(labels, np_market_labels(m.astype(np.float32)))
    # The median trailing vol is 1%: 4% is high-vol, 0.2% low-vol.
    assert labels[0] == metrics.LOW_VOL  # one bar: vol 0
    assert (labels[20:40] == metrics.BULL).all()
    assert (labels[60:80] == metrics.BEAR).all()
    assert (labels[90:120] == metrics.HIGH_VOL).all()
    assert (labels[140:160] == metrics.LOW_VOL).all()
    # A flat market is never high- or low-vol, and a zero mean is bull.
    assert (np.asarray(jm.market_regimes(f32(np.zeros(30)))) == metrics.BULL).all()


def test_regime_performance():
    labels = np.array([0, 0, 2, 1, 2, 0, 1, 0])
    r = np.array([0.01, 0.03, -0.02, 0.0, 0.04, -0.01, -0.02, 0.01])
    share, ann = jm.regime_performance(f32(r), jnp.asarray(labels), 100.0)
    np.testing.assert_allclose(share, [0.5, 0.25, 0.25, 0.0])
    np.testing.assert_allclose(
        ann, [0.01 * 100, -0.01 * 100, 0.01 * 100, 0.0], rtol=1e-5, atol=1e-6
    )


# ---------------------------------------------------------------------- compute_all
def test_compute_all_matches_numpy(walks):
    for walk in walks:
        got = as_np(_all(*walk, DAILY))
        ref = np_all(
            *[np.asarray(x, np.float64) if x.dtype != np.int32 else x for x in walk], DAILY
        )
        assert set(got) == set(ref)
        assert 0 < ref["n_trades"] < T and 0 < ref["high_vol_share"] < 1
        for key, expected in ref.items():
            np.testing.assert_allclose(got[key], expected, err_msg=key, **TOL)


def test_compute_all_vmaps_over_strategies(walks):
    batch = [np.stack(x) for x in zip(*walks, strict=True)]
    got = as_np(_all_batched(*batch, DAILY))
    for i, walk in enumerate(walks):
        one = as_np(_all(*walk, DAILY))
        for key in one:
            np.testing.assert_allclose(got[key][i], one[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_all_cash_flat_curve_is_finite(walks):
    market = walks[0][5]
    weights = np.zeros((T, A + 1), np.float32)
    weights[:, -1] = 1.0
    flat = (
        np.ones(T + 1, np.float32),
        weights,
        np.full(T, Regime.FULL_CASH, np.int32),
        np.zeros(T, np.float32),
        np.zeros(T, np.float32),
        market,
    )
    got = as_np(_all(*flat, DAILY))
    for key, value in got.items():
        assert np.isfinite(value).all(), key
    for key in (
        "total_return",
        "sharpe",
        "sortino",
        "max_drawdown",
        "calmar",
        "var_95",
        "market_correlation",
        "hhi_mean",
        "gross_exposure",
        "profit_factor",
        "win_rate",
    ):
        assert got[key] == 0.0, key
    assert got["n_trades"] == 1 and got["avg_trade_duration"] == T


def test_daily_vs_hourly_annualisation(walks):
    daily = as_np(_all(*walks[1], DAILY))
    hourly = as_np(_all(*walks[1], HOURLY))
    ratio = HOURLY / DAILY
    for key in ("annual_volatility", "sharpe", "sortino"):
        np.testing.assert_allclose(
            hourly[key], daily[key] * math.sqrt(ratio), rtol=1e-5, err_msg=key
        )
    for name in metrics.MARKET_REGIMES:
        key = f"{name}_ann_mean"
        np.testing.assert_allclose(hourly[key], daily[key] * ratio, rtol=1e-5, err_msg=key)
    # Geometric: log(1 + annual return) scales with bars per year.
    np.testing.assert_allclose(
        np.log1p(hourly["annual_return"]), np.log1p(daily["annual_return"]) * ratio, rtol=1e-4
    )
    np.testing.assert_allclose(
        hourly["calmar"] / daily["calmar"],
        hourly["annual_return"] / daily["annual_return"],
        rtol=1e-5,
    )
    scaled = {"annual_return", "annual_volatility", "sharpe", "sortino", "calmar"}
    scaled |= {f"{name}_ann_mean" for name in metrics.MARKET_REGIMES}
    for key in set(daily) - scaled:
        np.testing.assert_array_equal(hourly[key], daily[key], err_msg=key)


# -------------------------------------------------------------------- model score
def np_score(avg_trade_return, win_rate, avg_reward, ev, entropy, kl, clip_frac, n_actions=12):
    profit = np.tanh(avg_trade_return * win_rate / 0.01)
    reward = np.tanh(avg_reward / 1e-3)
    value = np.clip(ev, -1, 1)
    explore = np.clip(entropy / np.log(n_actions), 0, 1)
    unstable = np.clip(max(kl / 0.02, clip_frac / 0.2) - 1, 0, 1)
    return 100 * (0.4 * profit + 0.2 * reward + 0.2 * value + 0.1 * explore - 0.1 * unstable)


@pytest.mark.parametrize(
    "args",
    [
        (0.01, 0.6, 1e-3, 0.5, 2.0, 0.01, 0.1),  # healthy, profitable
        (-0.02, 0.3, -5e-4, -0.2, 0.3, 0.05, 0.5),  # losing, collapsed, unstable
        (0.004, 0.55, 2e-4, 0.9, math.log(12), 0.03, 0.1),  # KL 1.5x its limit
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
    ],
)
def test_model_score_formula(args):
    np.testing.assert_allclose(jm.model_score(*args, N_REGIMES), np_score(*args), rtol=1e-5,
                               atol=1e-4)
    # The entropy's ceiling is log of the action count the caller passes.
    np.testing.assert_allclose(jm.model_score(*args, 4), np_score(*args, n_actions=4),
                               rtol=1e-5, atol=1e-4)


def test_model_score_range_and_reading():
    best = jm.model_score(1.0, 1.0, 1.0, 1.0, math.log(12), 0.0, 0.0, N_REGIMES)
    worst = jm.model_score(-1.0, 1.0, -1.0, -5.0, 0.0, 1.0, 1.0, N_REGIMES)
    np.testing.assert_allclose([best, worst], [90.0, -90.0], atol=1e-3)
    # By hand: 40 tanh(0.6) + 20 tanh(1) + 20 * 0.5 + 10 * 2 / log(12) = 54.8 -> green.
    hand = 40 * math.tanh(0.6) + 20 * math.tanh(1.0) + 10 + 10 * 2.0 / math.log(12)
    good = jm.model_score(0.01, 0.6, 1e-3, 0.5, 2.0, 0.01, 0.1, N_REGIMES)
    np.testing.assert_allclose(good, hand, rtol=1e-5)
    assert good > 20
    assert jm.model_score(-0.02, 0.3, -5e-4, -0.2, 0.3, 0.05, 0.5, N_REGIMES) < 0  # red
    # The instability penalty: none under the limits, full at twice either limit.
    calm = jm.model_score(0.0, 0.0, 0.0, 0.0, 0.0, 0.02, 0.2, N_REGIMES)
    wild = jm.model_score(0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.4, N_REGIMES)
    np.testing.assert_allclose([calm, wild], [0.0, -10.0], atol=1e-4)
    scores = jax.jit(jax.vmap(metrics.model_score))(
        *[f32([x, x]) for x in (0.01, 0.6, 1e-3, 0.5, 2.0, 0.01, 0.1, N_REGIMES)]
    )
    np.testing.assert_allclose(scores, [hand, hand], rtol=1e-5)

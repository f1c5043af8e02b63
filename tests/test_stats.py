"""PSR/DSR against the DSR paper's worked example and independent computations; the
stationary bootstrap's blocks, pairing and coverage on simulated series."""

import itertools
import json
import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import special
from scipy import stats as sps

from jaxtrade import stats as S

NORMAL = NormalDist()


# ------------------------------------------------------------ published worked examples
# Bailey & López de Prado (2014), "The Deflated Sharpe Ratio", numerical example (pp. 9-10):
# a strategist backtests N = 100 independent configurations of a treasury-auction idea;
# the best has an annualised SR of 2.5 over 5 years of daily returns, T = 1250, with
# V[{SR_n}] = 1/2 (annualised), skewness -3 and kurtosis 10, 250 observations a year.
# The paper prints SR0 ~= 0.1132 (non-annualised) and DSR ~= 0.9004 < 0.95; DSR would be
# 0.9505 after N = 46 trials, and, with Normal returns (skewness 0, kurtosis 3), 0.9505
# after N = 88 trials.
PAPER_SR = 2.5 / math.sqrt(250)  # per-bar Sharpe of the selected strategy
PAPER_T = 1250
PAPER_V = 0.5 / 250  # per-bar variance of the trials' Sharpe ratios


def test_expected_max_sharpe_matches_dsr_paper():
    assert S.expected_max_sharpe(100, PAPER_V) == pytest.approx(0.1132, abs=5e-5)


@pytest.mark.parametrize(
    ("n_trials", "skewness", "kurtosis", "printed_dsr"),
    [(100, -3.0, 10.0, 0.9004), (46, -3.0, 10.0, 0.9505), (88, 0.0, 3.0, 0.9505)],
)
def test_deflated_sharpe_matches_dsr_paper(n_trials, skewness, kurtosis, printed_dsr):
    dsr = S.deflated_sharpe_ratio(PAPER_SR, PAPER_T, n_trials, PAPER_V, skewness, kurtosis)
    assert dsr == pytest.approx(printed_dsr, abs=5e-5)


def test_dsr_paper_conclusion_flips_with_one_trial_less_or_more():
    # The paper's thresholds are where DSR crosses 0.95: N = 46 passes, N = 47 does not.
    assert S.deflated_sharpe_ratio(PAPER_SR, PAPER_T, 46, PAPER_V, -3.0, 10.0) > 0.95
    assert S.deflated_sharpe_ratio(PAPER_SR, PAPER_T, 47, PAPER_V, -3.0, 10.0) < 0.95


# ------------------------------------------------------------ PSR / DSR, independent routes
def _exact_expected_max(n: int) -> float:
    """E[max of n iid N(0, 1)] by quadrature: int_0^inf (1 - Phi^n) - int_-inf^0 Phi^n."""
    x = np.linspace(0.0, 12.0, 240_001)
    upper = np.trapezoid(1.0 - special.ndtr(x) ** n, x)
    lower = np.trapezoid(special.ndtr(-x) ** n, x)
    return float(upper - lower)


@pytest.mark.parametrize(("n", "rtol"), [(10, 0.03), (100, 0.015), (1000, 0.005)])
def test_expected_max_sharpe_approximates_exact_maximum(n, rtol):
    # Eq. 1 is an approximation for N >> 1: within 2.3% at N = 10, 0.4% at N = 1000.
    exact = _exact_expected_max(n)
    assert S.expected_max_sharpe(n, 1.0) == pytest.approx(exact, rel=rtol)
    # sqrt(V) scaling: V = 4 doubles the expected maximum.
    assert S.expected_max_sharpe(n, 4.0) == pytest.approx(2.0 * S.expected_max_sharpe(n, 1.0))


def test_expected_max_sharpe_grows_with_trials_and_handles_n1_and_v0():
    values = [S.expected_max_sharpe(n, 1.0) for n in (1, 1.5, 2, 10, 100, 1000)]
    assert values[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(values))
    assert S.expected_max_sharpe(100, 0.0) == 0.0
    # Below N ~ 1.3 the approximation turns negative; the expected maximum of zero-mean
    # trials is >= 0, so it is floored there.
    assert S.expected_max_sharpe(1.01, 1.0) == 0.0


def test_dsr_with_one_trial_or_no_variance_is_psr_of_zero():
    psr0 = S.probabilistic_sharpe_ratio(0.05, 500, -0.5, 5.0)
    assert S.deflated_sharpe_ratio(0.05, 500, 1, 0.01, -0.5, 5.0) == psr0
    assert S.deflated_sharpe_ratio(0.05, 500, 100, 0.0, -0.5, 5.0) == psr0
    assert S.deflated_sharpe_ratio(0.05, 500, 100, 0.01, -0.5, 5.0) < psr0


def test_psr_by_hand():
    # SR 0.1 over 120 bars, normal returns: Phi(0.1 sqrt(119) / sqrt(1 + 0.1^2 / 2)).
    psr = S.probabilistic_sharpe_ratio(0.1, 120)
    assert psr == pytest.approx(NORMAL.cdf(0.1 * math.sqrt(119) / math.sqrt(1.005)), rel=1e-12)
    assert psr == pytest.approx(0.8617, abs=1e-4)
    assert S.probabilistic_sharpe_ratio(0.1, 120, benchmark=0.1) == 0.5
    # Negative skew and fat tails widen the Sharpe ratio's spread: lower PSR.
    assert S.probabilistic_sharpe_ratio(0.1, 120, -1.0, 8.0) < psr


def _skewed_returns(rng, sharpe, n_series, n_obs, shape):
    """Returns with mean `sharpe`, std 1, skewness -2/sqrt(shape), kurtosis 3 + 6/shape:
    a reflected, standardised Gamma(shape)."""
    g = rng.gamma(shape, 1.0, size=(n_series, n_obs))
    return sharpe - (g - shape) / math.sqrt(shape)


def test_psr_spread_matches_monte_carlo_for_skewed_fat_tailed_returns():
    # PSR's denominator is the asymptotic std of the estimated Sharpe ratio:
    # sqrt((1 - g3 SR + (g4 - 1) / 4 SR^2) / (T - 1)). Check it against the spread of
    # 4,000 simulated estimates from exponential-like returns (skew -2, kurtosis 9).
    rng = np.random.default_rng(7)
    sr, n_obs, shape = 0.15, 500, 1.0
    skew, kurt = -2.0 / math.sqrt(shape), 3.0 + 6.0 / shape
    x = _skewed_returns(rng, sr, 4000, n_obs, shape)
    estimates = x.mean(axis=1) / x.std(axis=1)
    formula = math.sqrt((1 - skew * sr + (kurt - 1) / 4 * sr**2) / (n_obs - 1))
    normal_formula = math.sqrt((1 + sr**2 / 2) / (n_obs - 1))
    assert estimates.std() == pytest.approx(formula, rel=0.04)
    assert estimates.std() > 1.1 * normal_formula  # the higher moments matter here


def _psr_of(returns, benchmark):
    m = S.moments(returns)
    return S.probabilistic_sharpe_ratio(m.sharpe, len(returns), m.skewness, m.kurtosis, benchmark)


def test_psr_is_calibrated_when_the_true_sharpe_equals_the_benchmark():
    # With the true SR equal to SR*, PSR(SR*) is about uniform: P[PSR > 0.95] ~= 5%.
    rng = np.random.default_rng(11)
    sr = 0.1
    x = _skewed_returns(rng, sr, 4000, 400, 2.0)
    psr = np.array([_psr_of(row, sr) for row in x])
    assert np.mean(psr > 0.95) == pytest.approx(0.05, abs=0.015)
    assert np.mean(psr < 0.05) == pytest.approx(0.05, abs=0.015)


def test_moments_match_scipy_population_estimators():
    rng = np.random.default_rng(3)
    r = rng.standard_t(5, size=300) * 0.01 + 0.0005
    m = S.moments(r)
    assert m.sharpe == pytest.approx(r.mean() / r.std(ddof=0), rel=1e-12)
    assert m.skewness == pytest.approx(sps.skew(r, bias=True), rel=1e-10)
    assert m.kurtosis == pytest.approx(sps.kurtosis(r, fisher=False, bias=True), rel=1e-10)
    assert S.sharpe_ratio(r) == m.sharpe


def test_strategy_stats_fields_and_json():
    rng = np.random.default_rng(5)
    r = rng.normal(0.001, 0.01, 750)
    st = S.strategy_stats(r, 252.0, n_trials=20, trial_sharpe_variance=4e-4)
    m = S.moments(r)
    assert st.n_obs == 750
    assert st.sharpe == m.sharpe
    assert st.sharpe_annualised == pytest.approx(m.sharpe * math.sqrt(252.0))
    assert st.psr == _psr_of(r, 0.0)
    assert st.sharpe_threshold == S.expected_max_sharpe(20, 4e-4)
    assert st.dsr == _psr_of(r, st.sharpe_threshold)
    assert st.dsr < st.psr
    assert json.loads(json.dumps(st.to_dict())) == st.to_dict()
    one = S.strategy_stats(r, 252.0)
    assert (one.n_trials, one.sharpe_threshold, one.dsr) == (1.0, 0.0, one.psr)


# ------------------------------------------------------------ edge cases
@pytest.mark.parametrize(
    ("returns", "match"),
    [
        ([0.01, 0.02], "at least 3"),
        ([], "at least 3"),
        ([0.001] * 50, "constant"),
        ([0.01, np.nan, 0.02, 0.0], "non-finite"),
        (np.zeros((10, 2)), "1-D"),
    ],
)
def test_bad_returns_are_clear_errors(returns, match):
    with pytest.raises(ValueError, match=match):
        S.strategy_stats(returns, 252.0)


def test_bad_arguments_are_clear_errors():
    r = np.random.default_rng(0).normal(0.0, 0.01, 100)
    with pytest.raises(ValueError, match="n_trials"):
        S.expected_max_sharpe(0, 1.0)
    with pytest.raises(ValueError, match="trial_sharpe_variance"):
        S.deflated_sharpe_ratio(0.1, 100, 10, -1.0)
    with pytest.raises(ValueError, match="n_obs"):
        S.probabilistic_sharpe_ratio(0.1, 2)
    with pytest.raises(ValueError, match="not moments"):
        S.probabilistic_sharpe_ratio(1.0, 100, skewness=5.0, kurtosis=3.0)
    with pytest.raises(ValueError, match="aligned"):
        S.compare_sharpe(r, r[:-1], 252.0)
    with pytest.raises(ValueError, match="level"):
        S.compare_sharpe(r, r * 2, 252.0, level=1.0)
    with pytest.raises(ValueError, match="mean_block"):
        S.stationary_bootstrap_indices(100, 0.5, 10)


def test_annualised_return_by_hand_and_after_a_wipe_out():
    r = np.array([0.01, -0.02, 0.03, 0.0])
    assert S.annualised_return(r, 252.0) == pytest.approx(np.prod(1 + r) ** (252 / 4) - 1)
    assert S.annualised_return(np.array([0.1, 0.2, -1.0]), 252.0) == -1.0
    with pytest.raises(ValueError, match="below -1"):
        S.annualised_return(np.array([0.1, 0.2, -1.5]), 252.0)


# ------------------------------------------------------------ stationary bootstrap
def _block_starts(idx):
    """bool [B, T]: True where a row does not continue its block (idx[t-1] + 1 mod T)."""
    n_obs = idx.shape[1]
    starts = np.ones(idx.shape, dtype=bool)
    starts[:, 1:] = idx[:, 1:] != (idx[:, :-1] + 1) % n_obs
    return starts


def test_bootstrap_indices_are_deterministic_and_in_range():
    a = S.stationary_bootstrap_indices(300, 8.0, 600, seed=4)
    assert a.shape == (600, 300) and np.issubdtype(a.dtype, np.integer)
    assert a.min() >= 0 and a.max() < 300
    np.testing.assert_array_equal(a, S.stationary_bootstrap_indices(300, 8.0, 600, seed=4))
    assert not np.array_equal(a, S.stationary_bootstrap_indices(300, 8.0, 600, seed=5))


@pytest.mark.parametrize("mean_block", [1.0, 4.0, 25.0])
def test_bootstrap_block_lengths_average_mean_block(mean_block):
    # A new block starts at each bar after the first with probability 1 / b, so the
    # mean of the geometric block lengths is b: estimate p from the starts.
    n_obs, n = 1000, 300
    starts = _block_starts(S.stationary_bootstrap_indices(n_obs, mean_block, n, seed=1))
    p_hat = (starts.sum() - n) / (n * (n_obs - 1))
    # A block also "continues" by chance when its new start is idx + 1 (prob 1 / T).
    p_true = (1.0 / mean_block) * (1.0 - 1.0 / n_obs)
    assert 1.0 / p_hat == pytest.approx(1.0 / p_true, rel=0.03)


def test_bootstrap_blocks_wrap_around_the_end():
    # Blocks of mean 20 bars over 20 bars: runs go through bar 19 and on at bar 0.
    idx = S.stationary_bootstrap_indices(20, 20.0, 300, seed=2)
    prev, nxt = idx[:, :-1], idx[:, 1:]
    wraps = np.sum((prev == 19) & (nxt == 0))
    assert wraps / np.sum(prev == 19) > 0.9  # continuation prob 0.95 (+ restarts at 0)
    assert np.mean(_block_starts(idx)[:, 1:]) == pytest.approx(0.05, abs=0.015)


def test_identical_series_give_a_zero_interval_because_resampling_is_paired():
    # The same indices for both series: every resample's difference is exactly 0.
    r = np.random.default_rng(8).normal(0.0005, 0.01, 400)
    c = S.compare_sharpe(r, r.copy(), 252.0, n_resamples=300)
    assert (c.sharpe_diff, c.ci_low, c.ci_high, c.beat_with_confidence) == (0.0, 0.0, 0.0, False)


def test_paired_interval_detects_an_edge_that_unpaired_resampling_misses():
    # The policy is the baseline plus a small, mostly independent edge: paired resampling
    # sees the difference; resampling the two series at independent indices does not.
    rng = np.random.default_rng(9)
    baseline = rng.normal(0.0002, 0.01, 1000)
    policy = baseline + rng.normal(0.0004, 0.002, 1000)
    c = S.compare_sharpe(policy, baseline, 252.0, n_resamples=1000, seed=3)
    assert c.beat_with_confidence and 0.0 < c.ci_low < c.sharpe_diff < c.ci_high
    idx_p = S.stationary_bootstrap_indices(1000, c.mean_block, 1000, seed=3)
    idx_b = S.stationary_bootstrap_indices(1000, c.mean_block, 1000, seed=4)
    xp, xb = policy[idx_p], baseline[idx_b]
    unpaired = (xp.mean(1) / xp.std(1) - xb.mean(1) / xb.std(1)) * math.sqrt(252)
    low, high = np.quantile(unpaired, [0.05, 0.95])
    assert low < 0.0 < high
    assert high - low > 4 * (c.ci_high - c.ci_low)
    assert json.loads(json.dumps(c.to_dict())) == c.to_dict()


def test_same_strategies_do_not_beat_each_other():
    rng = np.random.default_rng(12)
    a, b = rng.normal(0.0003, 0.01, (2, 500))
    c = S.compare_sharpe(a, b, 252.0, n_resamples=500)
    assert c.ci_low < 0.0 < c.ci_high and not c.beat_with_confidence
    assert c.level == 0.9 and c.n_resamples == 500


def test_sharpe_difference_interval_covers_at_about_the_nominal_rate():
    # iid normal policy and baseline with true per-bar Sharpe 0.1 and 0.05; default
    # (automatic) block length; 90% intervals.
    rng = np.random.default_rng(21)
    reps, hits = 120, 0
    for rep in range(reps):
        p = rng.normal(0.1, 1.0, 200)
        q = rng.normal(0.05, 1.0, 200)
        c = S.compare_sharpe(p, q, 1.0, n_resamples=250, seed=rep)
        hits += c.ci_low <= 0.05 <= c.ci_high
    assert hits / reps == pytest.approx(0.9, abs=0.07)


def test_annualised_return_interval_covers_at_about_the_nominal_rate():
    # iid normal log-returns N(m, s^2): the true annualised return is exp(252 m) - 1.
    rng = np.random.default_rng(22)
    m, s, reps, hits = 0.0004, 0.01, 120, 0
    truth = math.expm1(252 * m)
    for rep in range(reps):
        r = np.expm1(rng.normal(m, s, 200))
        c = S.annualised_return_interval(r, 252.0, mean_block=5.0, n_resamples=250, seed=rep)
        hits += c.ci_low <= truth <= c.ci_high
        assert c.ci_low < c.estimate < c.ci_high
    assert hits / reps == pytest.approx(0.9, abs=0.07)


def _ar1(rng, phi, n):
    e = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - phi**2)  # stationary start
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    return x


@pytest.mark.parametrize("phi", [0.7, 0.8])
def test_automatic_block_length_follows_the_dependence(phi):
    # Politis-White for an AR(1) with coefficient phi: b = (2 phi / (1 - phi^2))^(2/3) T^(1/3)
    # (G / g(0) = 2 phi / (1 - phi^2)): 33.5 and 46.2 bars at T = 5000, where the T^(1/3)
    # rule would say 17.1. One estimate is noisy (sd ~14%, mean ~0.97 of the asymptotic
    # value over 80 series): average 8.
    rng = np.random.default_rng(0)
    n = 5000
    theory = (2 * phi / (1 - phi**2)) ** (2 / 3) * n ** (1 / 3)
    series = [_ar1(rng, phi, n) for _ in range(8)]
    ratios = [S.optimal_block_length(x) / theory for x in series]
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.15)
    # Several series: the longest dependence wins.
    iid = rng.standard_normal(n)
    assert S.optimal_block_length(iid, series[0]) == S.optimal_block_length(series[0])


def test_automatic_block_length_without_dependence_or_data():
    rng = np.random.default_rng(1)
    # iid data needs no blocks: the estimate (~0.3 here) is floored at 1 bar.
    assert S.optimal_block_length(rng.standard_normal(5000)) == 1.0
    # Too short for the estimator: the T^(1/3) rule.
    assert S.optimal_block_length(rng.standard_normal(10)) == pytest.approx(10 ** (1 / 3))


def test_a_constant_baseline_is_cash_with_sharpe_zero():
    # Cash has no excess return and no risk: Sharpe 0 in the sample and in every resample,
    # so the difference and its interval are the policy's own Sharpe ratio and interval.
    r = np.random.default_rng(3).normal(0.001, 0.01, 400)
    cash = S.compare_sharpe(r, np.zeros(400), 252.0, mean_block=5.0, seed=1)
    assert cash.sharpe_diff == pytest.approx(S.sharpe_ratio(r) * math.sqrt(252.0))
    idx = S.stationary_bootstrap_indices(400, 5.0, cash.n_resamples, seed=1)
    draws = r[idx].mean(1) / r[idx].std(1) * math.sqrt(252.0)
    low, high = np.quantile(draws, [0.05, 0.95])
    assert (cash.ci_low, cash.ci_high) == pytest.approx((low, high))
    assert cash.beat_with_confidence == (low > 0)

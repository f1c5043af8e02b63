"""The honest comparison of `python -m jaxtrade.evaluate` (`jaxtrade.report`): exact range
bounds, trial counts and variances, cash, and the verdict in words."""

import math

import numpy as np
import pandas as pd
import pytest

from jaxtrade import report, stats
from jaxtrade.data.market import span_bounds


def test_a_range_that_ends_at_midnight_of_an_intraday_day_ends_there():
    """Hourly bars: a validation range whose last bar is 00:00 must not reach the test bars
    later that day (a user's --end at midnight means the whole day; a recorded range not)."""
    dates = pd.date_range("2024-01-01 20:00", periods=12, freq="h")  # 20:00 .. 07:00
    span = {"start": "2024-01-01 21:00:00", "end": "2024-01-02", "bars": 4,
            "first": dates[1].isoformat(), "last": dates[4].isoformat()}
    assert dates[4] == pd.Timestamp("2024-01-02 00:00")
    assert span_bounds(dates, span) == (1, 4)


def curve(returns):
    return np.concatenate([[1.0], np.cumprod(1.0 + np.asarray(returns))])


def test_each_strategy_is_deflated_by_its_own_candidates():
    rng = np.random.default_rng(0)
    values = {"policy": curve(rng.normal(5e-4, 0.01, 300)),
              "MOMENTUM/5": curve(rng.normal(3e-4, 0.01, 300)),
              "EQUAL_WEIGHT/1": curve(rng.normal(2e-4, 0.01, 300)),
              "cash": np.ones(301)}
    # Validation Sharpes are annualised by the run's own bars per year (252 here), while
    # the reported data may have another (e.g. hourly user data).
    candidates = [0.5, -0.2, 1.1, 0.3]
    selection = {"candidates": 4, "candidate_sharpes": candidates}
    choice = {"name": "MOMENTUM/5", "candidates": 3,
              "validation_sharpe": {"MOMENTUM/5": 0.9, "EQUAL_WEIGHT/1": 0.4, "cash": 0.0}}
    out = report.honest_statistics(values, "MOMENTUM/5", 1764.0, selection, choice, 252.0,
                                   seed=1)
    assert set(out["strategies"]) == {"policy", "MOMENTUM/5", "EQUAL_WEIGHT/1"}  # no cash
    policy = out["strategies"]["policy"]
    r = report.bar_returns(values["policy"])
    m = stats.moments(r)
    var = np.var(np.asarray(candidates) / math.sqrt(252.0), ddof=1)
    assert policy["n_trials"] == 4 and policy["trial_sharpe_variance"] == pytest.approx(var)
    assert policy["dsr"] == pytest.approx(stats.deflated_sharpe_ratio(
        m.sharpe, len(r), 4, var, m.skewness, m.kurtosis))
    assert policy["sharpe_annualised"] == pytest.approx(m.sharpe * math.sqrt(1764.0))
    base = out["strategies"]["MOMENTUM/5"]
    assert base["n_trials"] == 3 and base["trial_sharpe_variance"] == pytest.approx(
        np.var(np.array([0.9, 0.4, 0.0]) / math.sqrt(252.0), ddof=1))
    assert out["strategies"]["EQUAL_WEIGHT/1"]["n_trials"] == 1  # compared with nothing
    diff = out["sharpe_difference"]
    assert diff["sharpe_diff"] == pytest.approx(policy["sharpe_annualised"]
                                                - base["sharpe_annualised"])
    text = report.verdict(out, "MOMENTUM/5", "test")
    assert text.startswith("the policy ") and "after 4 candidates" in text
    assert ("did not beat MOMENTUM/5 with 90% confidence" in text) != \
        diff["beat_with_confidence"]


def test_a_policy_that_held_cash_gets_no_verdict_and_other_errors_surface():
    values = {"policy": np.ones(101),
              "buy_and_hold": curve(np.random.default_rng(1).normal(1e-3, 0.01, 100))}
    out = report.honest_statistics(values, "buy_and_hold", 252.0,
                                   {"candidates": 1, "candidate_sharpes": []}, None, 252.0, 0)
    assert out["sharpe_difference"] is None and "policy" not in out["strategies"]
    assert report.verdict(out, "buy_and_hold", "test").startswith("no verdict: the policy's "
                                                                  "returns do not vary")
    with pytest.raises(ValueError, match="T >= 3|at least 3|n_obs"):
        report.honest_statistics({"policy": np.array([1.0, 1.1, 1.0])}, "policy", 252.0,
                                 {"candidates": 1, "candidate_sharpes": []}, None, 252.0, 0)

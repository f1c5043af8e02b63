"""`jaxtrade.load_policy`: decisions on a DataFrame of recent bars, consistent with evaluation."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import jaxtrade
from jaxtrade.data import SyntheticConfig, synthetic_panel
from jaxtrade.envs import NAMES, Regime
from jaxtrade.envs.regimes import TABLE
from jaxtrade.evaluation import EvaluationError
from tests.conftest import long_frame

SYMBOLS = ["SYN00", "SYN01", "SYN02", "SYN03"]


@pytest.fixture(scope="module")
def policy(trained_run):
    return jaxtrade.load_policy(trained_run[0])


def first_bars(frame, n):
    dates = sorted(frame["date"].unique())
    return frame[frame["date"] <= dates[n - 1]], dates


def check_regime_table(decision):
    """The target weights are the chosen regime's row of the regime table."""
    w = decision.weights
    assert list(w) == [*SYMBOLS, "CASH"]
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-6) and min(w.values()) >= 0
    if decision.regime_index == Regime.HOLD:
        assert w == pytest.approx(decision.held, abs=1e-6)
        return
    cash, _, top = TABLE[decision.regime_index]
    k = max(-(-int(top) * len(SYMBOLS) // 100), 1)
    assert w["CASH"] == pytest.approx(cash, abs=1e-6)
    stocks = [v for s, v in w.items() if s != "CASH" and v > 0]
    assert len(stocks) == (k if cash < 1 else 0)
    assert stocks == pytest.approx([(1 - cash) / k] * len(stocks), abs=1e-6)


def test_decision_is_a_distribution_over_regimes_with_table_weights(policy, user_csv):
    bars, dates = first_bars(user_csv[1], 60)
    d = policy(bars)
    assert d.as_of == dates[59]
    assert list(d.probabilities) == list(NAMES)
    assert sum(d.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert d.regime == max(d.probabilities, key=d.probabilities.get) == NAMES[d.regime_index]
    check_regime_table(d)
    # The policy's own holdings after walking the history: a valid portfolio.
    assert list(d.held) == [*SYMBOLS, "CASH"]
    assert sum(d.held.values()) == pytest.approx(1.0, abs=1e-5)
    # Row order does not matter (the loader sorts); extra columns are ignored.
    shuffled = bars.sample(frac=1.0, random_state=0).assign(note="x")
    assert policy(shuffled) == d
    assert d.regime in str(d)


@pytest.mark.parametrize("n_bars", [21, 60])
def test_decision_equals_the_evaluation_walk_on_the_same_bars(n_bars, policy, user_csv,
                                                             csv_evaluation):
    """The decision after the first n bars is the action `python -m jaxtrade.evaluate` took on
    the next bar when walking the whole file (21 bars: the feature window + 1, no warm-up)."""
    bars, dates = first_bars(user_csv[1], n_bars)
    decisions = pd.read_csv(csv_evaluation[0] / "decisions.csv")
    evaluated = decisions.set_index("date").loc[f"{dates[n_bars]:%Y-%m-%d}"]
    d = policy(bars)
    assert d.regime == evaluated["regime"]
    # The holdings it starts from are those of the evaluation after the previous bar.
    if n_bars > 21:
        before = decisions.set_index("date").loc[f"{dates[n_bars - 1]:%Y-%m-%d}"]
        np.testing.assert_allclose([d.held[s] for s in [*SYMBOLS, "CASH"]],
                                   [before[f"w_{s}"] for s in [*SYMBOLS, "CASH"]], atol=1e-6)


def test_current_weights_replace_the_policys_own(policy, user_csv):
    bars, _ = first_bars(user_csv[1], 60)
    d = policy(bars, current_weights={"SYN01": 0.25, "CASH": 0.75})
    assert d.held == {"SYN00": 0.0, "SYN01": 0.25, "SYN02": 0.0, "SYN03": 0.0, "CASH": 0.75}
    check_regime_table(d)
    with pytest.raises(EvaluationError, match="sum to 1"):
        policy(bars, current_weights={"SYN01": 0.5})
    with pytest.raises(EvaluationError, match="unknown key"):
        policy(bars, current_weights={"AAPL": 1.0})


def test_too_few_bars_or_another_asset_count_is_one_line(policy, user_csv):
    bars, _ = first_bars(user_csv[1], 20)
    with pytest.raises(EvaluationError, match="20 aligned bars is too few.*at least 21"):
        policy(bars)
    three = long_frame(synthetic_panel(SyntheticConfig(n_assets=3, n_bars=40, seed=2)))
    with pytest.raises(EvaluationError, match="trained on 4 assets .* but the data has 3"):
        policy(three)


def test_load_policy_is_exported_lazily():
    code = ("import sys, jaxtrade; assert 'jax' not in sys.modules; "
            "assert callable(jaxtrade.load_policy); assert 'jax' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_window_uses_the_last_bars_of_a_whole_file_whatever_its_date_header(policy, user_csv):
    """`policy(file as read, window=60)` is the decision on the file's last 60 bars given
    directly, with the date column under another accepted name (the README's example)."""
    frame = pd.read_csv(user_csv[0]).rename(columns={"date": "Timestamp"})
    dates = sorted(frame["Timestamp"].unique())
    assert len(dates) > 60  # else the window would cut nothing
    last = frame[frame["Timestamp"] >= dates[-60]]
    d = policy(frame, window=60)
    assert d == policy(last)
    assert d.as_of == pd.Timestamp(dates[-1])
    for window in (20, 0, 60.0, True):
        with pytest.raises(EvaluationError, match=rf"^window={window!r}: expected a whole "
                                                  r"number of bars >= 21 \(the 20-bar"):
            policy(frame, window=window)
    with pytest.raises(EvaluationError, match=rf"^bars: {len(dates)} aligned bars is fewer "
                                              rf"than window=500; "):
        policy(frame, window=500)

"""The embedded synthetic market: deterministic, regime-switching, correlated, fat-tailed."""

import numpy as np
import pytest

from jaxtrade.data.synthetic import REGIME_NAMES, SyntheticConfig, generate


@pytest.fixture(scope="module")
def market():
    return generate(SyntheticConfig(n_bars=4000, seed=3))


def test_same_seed_same_market_and_other_seed_differs():
    a = generate(SyntheticConfig(n_bars=300, seed=11)).panel
    b = generate(SyntheticConfig(n_bars=300, seed=11)).panel
    c = generate(SyntheticConfig(n_bars=300, seed=12)).panel
    for name in ("open", "high", "low", "close", "volume", "adj_close"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.allclose(a.close, c.close)
    assert a.dates.equals(b.dates) and a.symbols == b.symbols


def test_panel_is_valid_ohlcv(market):
    p = market.panel
    assert p.close.shape == (4000, 12) and len(p.symbols) == 12
    assert p.dates.is_monotonic_increasing and p.dates.is_unique
    for name in ("open", "high", "low", "close", "adj_close"):
        assert (getattr(p, name) > 0).all() and np.isfinite(getattr(p, name)).all()
    assert (p.high >= np.maximum(p.open, p.close)).all()
    assert (p.low <= np.minimum(p.open, p.close)).all()
    assert (p.volume >= 0).all()


def test_regimes_switch_and_shape_the_market(market):
    regime = market.regime
    assert set(np.unique(regime)) == set(range(len(REGIME_NAMES)))
    switches = np.count_nonzero(np.diff(regime))
    assert 10 < switches < 100  # mean duration 120 bars over 4000 bars: ~33 switches
    index = np.diff(np.log(market.panel.close), axis=0).mean(axis=1)
    r = regime[1:]
    mean = {name: index[r == i].mean() for i, name in enumerate(REGIME_NAMES)}
    vol = {name: index[r == i].std() for i, name in enumerate(REGIME_NAMES)}
    assert mean["bull"] > 0 > mean["bear"]
    assert vol["high_vol"] > vol["bull"] > vol["low_vol"]


def test_assets_are_correlated_with_fat_tails(market):
    r = np.diff(np.log(market.panel.close), axis=0)
    corr = np.corrcoef(r.T)
    off_diag = corr[~np.eye(12, dtype=bool)]
    assert 0.2 < off_diag.mean() < 0.9
    z = (r - r.mean(0)) / r.std(0)
    kurtosis = (z**4).mean(0)
    assert (kurtosis > 3.5).all()  # a Gaussian has 3


def test_signal_is_persistent_and_priced():
    """Assets with a high latent signal earn more next bar; with strength 0 they do not."""

    def next_bar_ic(strength):
        m = generate(SyntheticConfig(n_bars=3000, seed=5, signal_strength=strength))
        r = np.diff(np.log(m.panel.close), axis=0)
        s = m.signal[1:]
        s = s - s.mean(1, keepdims=True)
        x = r - r.mean(1, keepdims=True)
        return float((s * x).sum() / np.sqrt((s**2).sum() * (x**2).sum()))

    sig = generate(SyntheticConfig(n_bars=3000, seed=5)).signal
    lag1 = np.mean([np.corrcoef(sig[:-1, i], sig[1:, i])[0, 1] for i in range(12)])
    assert lag1 > 0.95
    assert next_bar_ic(1.0) > 0.05
    assert abs(next_bar_ic(0.0)) < 0.02


def test_hourly_frequency_and_config_checks():
    p = generate(SyntheticConfig(n_bars=50, freq="h")).panel
    assert (np.diff(p.dates.values) == np.timedelta64(1, "h")).all()
    with pytest.raises(ValueError, match="tail_df"):
        SyntheticConfig(tail_df=2.0)

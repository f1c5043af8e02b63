"""Panel -> MarketData: trimming, the date split, bar counts, device arrays."""

import numpy as np
import pandas as pd
import pytest

from jaxtrade.data import (
    WINDOW,
    DataError,
    SyntheticConfig,
    build_market,
    load_market,
    synthetic_panel,
)
from jaxtrade.data.market import estimate_bars_per_year


def test_market_arrays_and_default_split(small_panel, small_market):
    m = small_market
    assert m.n_bars == small_panel.n_bars - WINDOW == 380
    assert m.data.features.shape == (380, 5, 9) and m.data.features.dtype == np.float32
    assert m.data.scores.shape == (380, 5, 4) and m.data.price.shape == (380, 5)
    assert m.train_end == 380 - 95  # 25% held out
    np.testing.assert_allclose(m.data.price, small_panel.adj_close[WINDOW:], rtol=1e-6)
    assert m.dates[0] == small_panel.dates[WINDOW]
    # Statistics come from the training rows only (means off 0 only by the +-10 clipping).
    train = np.asarray(m.data.features[: m.train_end]).reshape(-1, 9)
    np.testing.assert_allclose(train.mean(0), 0, atol=2e-3)
    held_out = np.asarray(m.data.features[m.train_end :]).reshape(-1, 9)
    assert np.abs(held_out.mean(0)).max() > 1e-2
    assert "held out 95 bars" in m.describe()


def test_split_date(small_panel):
    when = small_panel.dates[WINDOW + 300]
    m = build_market(small_panel, episode_length=32, split_date=str(when.date()))
    assert m.train_end == 300 and m.dates[m.train_end] == when
    with pytest.raises(DataError, match="is not a date"):
        build_market(small_panel, episode_length=32, split_date="someday")


def test_too_few_bars_is_one_clear_error(small_panel):
    with pytest.raises(DataError, match=r"400 aligned bars is too few: the 20-bar feature window "
                                        r"plus one episode of 512 steps needs at least 534"):
        build_market(small_panel, episode_length=512)
    with pytest.raises(DataError, match=r"training range has 190 complete bars .* needs 258"):
        build_market(small_panel, episode_length=256, eval_fraction=0.5)
    with pytest.raises(DataError, match=r"eval_fraction must be in \[0, 1\)"):
        build_market(small_panel, episode_length=32, eval_fraction=1.0)


def test_reused_stats_and_no_holdout(small_panel, small_market):
    m = build_market(small_panel, episode_length=32, eval_fraction=0.0, stats=small_market.stats)
    assert m.train_end == m.n_bars and m.n_eval_bars == 0
    np.testing.assert_array_equal(m.data.features, small_market.data.features)


def test_bars_per_year_follows_the_bar_frequency():
    daily = pd.bdate_range("2020-01-01", "2022-12-31")
    hourly = pd.date_range("2020-01-01", periods=24 * 365 * 2, freq="h")
    assert 255 < estimate_bars_per_year(daily) < 265
    assert 8700 < estimate_bars_per_year(hourly) < 8800


def test_load_market_default_and_subset():
    cfg = SyntheticConfig(n_assets=4, n_bars=600, seed=2)
    m = load_market(synthetic=cfg, symbols=["SYN03", "SYN01"], episode_length=64)
    assert m.symbols == ("SYN03", "SYN01")
    full = synthetic_panel(cfg)
    np.testing.assert_allclose(m.data.price[:, 0], full.adj_close[WINDOW:, 3], rtol=1e-6)
    with pytest.raises(DataError, match="unknown symbol.*NOPE.*available: SYN00"):
        load_market(synthetic=cfg, symbols=["NOPE"], episode_length=64)


def test_load_market_from_csv(tmp_path):
    panel = synthetic_panel(SyntheticConfig(n_assets=3, n_bars=120, seed=4))
    rows = []
    for j, sym in enumerate(panel.symbols):
        rows.append(pd.DataFrame({
            "Date": panel.dates.strftime("%Y-%m-%d"), "Symbol": sym,
            "Open": panel.open[:, j], "High": panel.high[:, j], "Low": panel.low[:, j],
            "Close": panel.close[:, j], "Volume": panel.volume[:, j],
        }))
    path = tmp_path / "prices.csv"
    pd.concat(rows).sample(frac=1.0, random_state=0).to_csv(path, index=False)
    m = load_market(path, episode_length=16)
    direct = build_market(panel, episode_length=16)
    assert m.symbols == panel.symbols
    np.testing.assert_allclose(m.data.features, direct.data.features, atol=1e-4)
    with pytest.raises(DataError, match="too few"):
        load_market(path, episode_length=200)

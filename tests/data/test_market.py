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


def test_market_arrays_and_three_ranges(small_panel, small_market):
    m = small_market
    assert m.n_bars == small_panel.n_bars - WINDOW == 380
    assert m.data.features.shape == (380, 5, 9) and m.data.features.dtype == np.float32
    assert m.data.scores.shape == (380, 5, 4) and m.data.price.shape == (380, 5)
    # conftest: 20% validation (76 bars), then 10% test (38 bars), last.
    assert (m.val_start, m.test_start) == (380 - 38 - 76, 380 - 38)
    assert m.bounds("train") == (0, 266) and m.bounds("validation") == (266, 342)
    assert m.bounds("test") == (342, 380)
    np.testing.assert_allclose(m.data.price, small_panel.adj_close[WINDOW:], rtol=1e-6)
    assert m.dates[0] == small_panel.dates[WINDOW]
    # Statistics come from the training rows only (means off 0 only by the +-10 clipping).
    train = np.asarray(m.data.features[: m.val_start]).reshape(-1, 9)
    np.testing.assert_allclose(train.mean(0), 0, atol=2e-3)
    later = np.asarray(m.data.features[m.val_start :]).reshape(-1, 9)
    assert np.abs(later.mean(0)).max() > 1e-2
    day = lambda i: f"{m.dates[i]:%Y-%m-%d}"
    assert m.describe() == (
        f"5 assets x 380 bars; train 266 bars ({day(0)} .. {day(265)}), validation 76 bars "
        f"({day(266)} .. {day(341)}), test 38 bars ({day(342)} .. {day(379)}); "
        f"{m.bars_per_year:.0f} bars/year")


def test_default_split_is_60_20_20(small_panel):
    m = build_market(small_panel, episode_length=32)
    assert (m.val_start, m.test_start, m.n_bars) == (228, 304, 380)


def test_without_test_holds_no_test_bar_and_names_the_range(small_market):
    cut = small_market.without_test()
    assert cut.n_bars == cut.test_start == 342 and cut.data.price.shape == (342, 5)
    np.testing.assert_array_equal(cut.data.features, small_market.data.features[:342])
    assert cut.bounds("test") == (342, 342)
    first, last = small_market.dates[342], small_market.dates[379]
    assert cut.span("test") == small_market.span("test") == {
        "start": f"{first:%Y-%m-%d}", "end": f"{last:%Y-%m-%d}", "bars": 38,
        "first": first.isoformat(), "last": last.isoformat()}
    # The arrays a training run holds are host arrays until it places them itself.
    assert isinstance(cut.data.price, np.ndarray)
    assert cut.describe() == small_market.describe()
    assert cut.without_test() is cut


def test_split_dates(small_panel):
    val, test = small_panel.dates[WINDOW + 250], small_panel.dates[WINDOW + 300]
    m = build_market(small_panel, episode_length=32,
                     split_dates=(str(val.date()), str(test.date())))
    assert (m.val_start, m.test_start) == (250, 300) and m.dates[m.test_start] == test
    with pytest.raises(DataError, match="'someday' is not a date"):
        build_market(small_panel, episode_length=32, split_dates=("someday", str(test.date())))
    with pytest.raises(DataError, match="out of order"):
        build_market(small_panel, episode_length=32,
                     split_dates=(str(test.date()), str(val.date())))


def test_too_few_bars_is_one_clear_error(small_panel):
    with pytest.raises(DataError, match=r"400 aligned bars is too few: the 20-bar feature window "
                                        r"plus one episode of 512 steps needs at least 534"):
        build_market(small_panel, episode_length=512)
    with pytest.raises(DataError, match=r"training range has 152 complete bars .* needs 258"):
        build_market(small_panel, episode_length=256, val_fraction=0.3, test_fraction=0.3)
    with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"):
        build_market(small_panel, episode_length=32, val_fraction=1.0)
    with pytest.raises(DataError, match="leaves no training bars"):
        build_market(small_panel, episode_length=32, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DataError, match="the test range has fewer than 2 bars"):
        build_market(small_panel, episode_length=32, test_fraction=0.003)  # 1 bar


def test_reused_stats_and_no_ranges_held_back(small_panel, small_market):
    m = build_market(small_panel, episode_length=32, val_fraction=0.0, test_fraction=0.0,
                     stats=small_market.stats)
    assert m.val_start == m.test_start == m.n_bars
    assert m.span("validation") is None and m.span("test") is None
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

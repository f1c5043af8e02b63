"""Tests for jaxtrade/data/funding.py: the funding panel, its generator, the opportunity
table and its loader (each bad input), splits and the example file."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxtrade.data import funding
from jaxtrade.data.funding import (
    COLUMNS,
    INTERVAL_COLUMNS,
    FundingPanel,
    FundingSynthConfig,
    annualised,
    fund_apr,
    load_funding,
    main,
    opportunities,
    settlement_mask,
    split_hours,
    synthetic_funding,
    write_table,
)
from jaxtrade.data.panel import DataError

DATA = Path(__file__).resolve().parents[2] / "data"
SMALL = FundingSynthConfig(n_symbols=6, n_days=4, seed=3, late_listing_prob=0.5)


@pytest.fixture(scope="module")
def default_panel():
    return synthetic_funding(FundingSynthConfig())


@pytest.fixture(scope="module")
def small_panel():
    return synthetic_funding(SMALL)


def _arrays(panel):
    return {name: getattr(panel, name) for name in ("price", "rate", "volume", "listed")}


# --- the generator -------------------------------------------------------------------


def test_same_seed_same_panel_and_other_seed_differs():
    a, b = synthetic_funding(SMALL), synthetic_funding(SMALL)
    c = synthetic_funding(FundingSynthConfig(n_symbols=6, n_days=4, seed=4))
    for name, arr in _arrays(a).items():
        np.testing.assert_array_equal(arr, getattr(b, name))
    assert a.times.equals(b.times) and a.source == b.source
    both = a.listed & c.listed
    assert not np.allclose(a.rate[both], c.rate[both])


def test_shapes_dtypes_and_listing_masks(default_panel):
    p = default_panel
    assert (p.n_hours, p.n_symbols, p.n_exchanges) == (24 * 120, 24, 5)
    assert p.exchanges == ("binance", "bybit", "gate", "hyperliquid", "okx")
    assert p.interval_hours.dtype == np.int64 and list(p.interval_hours) == [8, 8, 8, 1, 8]
    assert p.times[0] == pd.Timestamp("2024-01-01") and p.times.tz is None
    assert (np.diff(p.times.values) == np.timedelta64(1, "h")).all()
    for name in ("price", "rate", "volume"):
        arr = getattr(p, name)
        assert arr.shape == (p.n_hours, p.n_symbols, p.n_exchanges) and arr.dtype == np.float64
        np.testing.assert_array_equal(np.isfinite(arr), p.listed)
    assert p.listed.dtype == np.bool_
    assert (p.price[p.listed] > 0).all() and (p.volume[p.listed] > 0).all()
    assert (p.listed.sum(axis=2) >= 2).all()  # every symbol on >= 2 exchanges, every hour


def test_late_listings_start_mid_sample_and_never_end():
    p = synthetic_funding(FundingSynthConfig(n_symbols=12, n_days=10, late_listing_prob=1.0))
    starts = p.listed.argmax(axis=0)  # [S, E] first listed hour
    ever = p.listed.any(axis=0)
    assert (starts[ever] > 0).any()
    # Once listed, listed to the end.
    assert (p.listed.sum(axis=0) == np.where(ever, p.n_hours - starts, 0)).all()
    assert (p.listed.sum(axis=2) >= 2).all()


def test_generator_is_fast_and_config_is_checked():
    import time

    start = time.perf_counter()
    synthetic_funding(FundingSynthConfig())
    assert time.perf_counter() - start < 2.0  # well under a second on one core
    with pytest.raises(ValueError, match="interval_hours"):
        FundingSynthConfig(interval_hours=(8, 8, 8, 5, 8))
    with pytest.raises(ValueError, match="exchanges"):
        FundingSynthConfig(exchanges=("a",), interval_hours=(8,))


def _longest_run(mask: np.ndarray) -> int:
    """Longest run of True along axis 0 of [T, ...], over the other axes."""
    best = np.zeros(mask.shape[1:], dtype=int)
    run = np.zeros(mask.shape[1:], dtype=int)
    for row in mask:
        run = np.where(row, run + 1, 0)
        best = np.maximum(best, run)
    return int(best.max())


def test_rates_mean_revert_around_the_level_with_negative_stretches_and_spikes(default_panel):
    p, level = default_panel, FundingSynthConfig().rate_level
    eight = p.interval_hours == 8
    r8 = p.rate[:, :, eight]
    values = r8[np.isfinite(r8)]
    # Around a small positive level, with negative regimes (~17% of the time) pulling it down.
    assert 0.5 * level < np.median(values) < 1.5 * level
    assert 0 < values.mean() < level
    assert 0.05 < (values < 0).mean() < 0.4
    assert _longest_run(r8 < 0) >= 48  # a sign-flip regime, not noise around 0
    # Mean reversion: persistent hour to hour, forgotten after 10 days; no drift in spread.
    lag1, lag240 = [], []
    for s in range(p.n_symbols):
        for e in np.flatnonzero(eight):
            v = p.rate[:, s, e]
            if np.isfinite(v).sum() < 1000:
                continue
            v = v[np.isfinite(v)] - np.nanmean(v)
            lag1.append(np.corrcoef(v[:-1], v[1:])[0, 1])
            lag240.append(np.corrcoef(v[:-240], v[240:])[0, 1])
    assert np.mean(lag1) > 0.9 and abs(np.mean(lag240)) < 0.15
    half = p.n_hours // 2
    sd_first, sd_second = np.nanstd(r8[:half]), np.nanstd(r8[half:])
    assert 0.5 < sd_first / sd_second < 2.0
    # Spikes: rare jumps far above the level, so hourly changes are very fat-tailed.
    assert np.abs(values).max() > 20 * level
    assert 0 < (np.abs(values) > 10 * level).mean() < 0.02
    d = np.diff(r8, axis=0)
    d = d[np.isfinite(d)]
    assert ((d - d.mean()) ** 4).mean() / d.var() ** 2 > 50  # a Gaussian has 3
    # A 1 h venue's rates are per hour: about an eighth of an 8 h venue's.
    r1 = p.rate[:, :, p.interval_hours == 1]
    ratio = np.nanmedian(np.abs(r1)) / np.nanmedian(np.abs(r8))
    assert 0.08 < ratio < 0.2
    assert np.nanmax(np.abs(p.rate)) <= FundingSynthConfig().max_abs_rate


def test_prices_share_the_symbol_with_a_small_basis(default_panel):
    p = default_panel
    basis = p.price / np.nanmean(p.price, axis=2, keepdims=True) - 1.0
    assert np.nanmedian(np.abs(basis)) < 10e-4  # a few basis points
    assert np.nanmax(np.abs(basis)) < 0.01


# --- conventions ---------------------------------------------------------------------


def test_fund_apr_hand_example_8h_long_1h_short():
    # Long on an 8 h venue at 0.01 % per 8 h: pays 0.0001 * 1095 = 10.95 % a year.
    # Short on a 1 h venue at 0.005 % per hour: receives 0.00005 * 8760 = 43.8 % a year.
    assert annualised(0.0001, 8) == pytest.approx(0.1095)
    assert annualised(0.00005, 1) == pytest.approx(0.438)
    assert fund_apr(0.0001, 0.00005, 8, 1) == pytest.approx(32.85)
    assert fund_apr(0.00005, 0.0001, 1, 8) == pytest.approx(-32.85)
    # Equal per-hour funding earns nothing.
    assert fund_apr(0.0008, 0.0001, 8, 1) == pytest.approx(0.0)
    np.testing.assert_allclose(
        fund_apr(np.array([0.0001, -0.0002]), 0.0003, 8, np.array([8, 4])),
        [100 * 0.0002 * 1095, 100 * (0.0003 * 2190 + 0.0002 * 1095)],
    )


def test_settlement_hours_convention(small_panel):
    p = small_panel
    settles = p.settles
    assert settles.shape == (p.n_hours, p.n_exchanges)
    eight = list(p.exchanges).index("binance")
    one = list(p.exchanges).index("hyperliquid")
    assert list(np.flatnonzero(settles[:24, eight])) == [0, 8, 16]
    assert settles[:, one].all()
    assert settles[:, eight].sum() == 3 * p.n_hours // 24
    # A slice keeps the clock: hours 3.. settle first at 08:00, its index 5.
    assert list(np.flatnonzero(p.slice(3, 27).settles[:, eight])) == [5, 13, 21]
    times = pd.date_range("2024-03-01 22:00", periods=6, freq="h")
    np.testing.assert_array_equal(
        settlement_mask(times, [4, 12]),
        [[False, False], [False, False], [True, True], [False, False], [False, False],
         [False, False]],
    )


def test_slice_and_panel_checks(small_panel):
    p = small_panel
    part = p.slice(10, 20)
    assert part.n_hours == 10 and part.times[0] == p.times[10]
    np.testing.assert_array_equal(part.rate, p.rate[10:20], strict=True)
    with pytest.raises(ValueError, match="not finite exactly where listed"):
        FundingPanel(**{**vars(p), "listed": ~p.listed})
    with pytest.raises(ValueError, match="dividing 24"):
        FundingPanel(**{**vars(p), "interval_hours": np.array([8, 8, 8, 5, 8])})


# --- opportunities and the round trip ------------------------------------------------


def test_opportunities_table(small_panel):
    p = small_panel
    table = opportunities(p)
    assert tuple(table.columns) == COLUMNS + INTERVAL_COLUMNS
    assert (table["fund_apr"] > 0).all()
    assert (table["long_exchange"] != table["short_exchange"]).all()
    np.testing.assert_allclose(
        table["fund_apr"],
        fund_apr(
            table["long_funding_rate"],
            table["short_funding_rate"],
            table["long_interval_hours"],
            table["short_interval_hours"],
        ),
    )
    row = table.iloc[len(table) // 2]
    t = p.times.get_loc(row["entry_time"])
    s = p.symbols.index(row["symbol"])
    lo, sh = p.exchanges.index(row["long_exchange"]), p.exchanges.index(row["short_exchange"])
    assert row["entry_long_price"] == p.price[t, s, lo]
    assert row["short_funding_rate"] == p.rate[t, s, sh]
    assert row["volume_24h"] == min(p.volume[t, s, lo], p.volume[t, s, sh])
    assert row["short_interval_hours"] == p.interval_hours[sh]
    # Both directions of every listed pair without a threshold; none above a huge one.
    pairs = (p.listed.sum(axis=2) * (p.listed.sum(axis=2) - 1)).sum()
    assert len(opportunities(p, min_apr=-np.inf)) == pairs
    assert opportunities(p, min_apr=1e9).empty


def _assert_same_legs(loaded: FundingPanel, panel: FundingPanel):
    """`loaded` holds `panel`'s listings exactly and its prices and rates to an ulp (matched
    by name)."""
    assert loaded.times.equals(panel.times)
    s = [panel.symbols.index(name) for name in loaded.symbols]
    e = [panel.exchanges.index(name) for name in loaded.exchanges]
    assert sorted(loaded.exchanges) == list(loaded.exchanges)
    np.testing.assert_array_equal(loaded.interval_hours, panel.interval_hours[e])
    np.testing.assert_array_equal(loaded.listed, panel.listed[:, s][:, :, e])
    for name in ("price", "rate"):  # to an ulp: numpy's exp rounds by the CPU's vector units
        np.testing.assert_allclose(getattr(loaded, name), getattr(panel, name)[:, s][:, :, e],
                                   rtol=1e-14, atol=0)
    # Volume: the largest volume_24h of a leg's rows: exact but for the busiest leg.
    want = panel.volume[:, s][:, :, e]
    listed = loaded.listed
    assert (loaded.volume[listed] <= want[listed] * (1 + 1e-14)).all()
    assert np.mean(np.isclose(loaded.volume[listed], want[listed], rtol=1e-14, atol=0)) > 0.5


@pytest.mark.parametrize("suffix, min_apr", [(".csv", -np.inf), (".parquet", -np.inf),
                                             (".csv", 0.0)])
def test_round_trip_reproduces_listed_prices_and_rates(tmp_path, small_panel, suffix, min_apr):
    path = tmp_path / f"table{suffix}"
    write_table(opportunities(small_panel, min_apr=min_apr), path)
    loaded = load_funding(path)
    _assert_same_legs(loaded, small_panel)
    assert str(path) in loaded.source


def test_hours_without_rows_are_not_listed(tmp_path, small_panel):
    table = opportunities(small_panel, min_apr=-np.inf)
    gap = small_panel.times[5:8]
    write_table(table[~table["entry_time"].isin(gap)], tmp_path / "gap.csv")
    loaded = load_funding(tmp_path / "gap.csv")
    assert loaded.times.equals(small_panel.times)  # every hour from first to last
    assert not loaded.listed[5:8].any() and np.isnan(loaded.price[5:8]).all()
    assert loaded.listed[8].any()


def test_cli_writes_a_table_that_loads(tmp_path, capsys):
    out = tmp_path / "synth.parquet"
    assert main(["--out", str(out), "--seed", "5", "--days", "2", "--symbols", "3"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and str(out) in line and "3 symbols" in line
    loaded = load_funding(out)
    _assert_same_legs(loaded, synthetic_funding(FundingSynthConfig(n_symbols=3, n_days=2,
                                                                   seed=5)))


def test_example_file_loads():
    path = DATA / "funding_example.csv"
    assert path.stat().st_size < 1_000_000
    loaded = load_funding(path)
    assert (loaded.n_hours, loaded.n_symbols, loaded.n_exchanges) == (72, 6, 5)
    # It is the generator's output (see data/README.md), every leg recovered.
    _assert_same_legs(loaded, synthetic_funding(FundingSynthConfig(n_symbols=6, n_days=3)))


# --- loader errors -------------------------------------------------------------------

_PAIRS = (("binance", "bybit"), ("hyperliquid", "bybit"), ("binance", "hyperliquid"))
_INTERVAL = {"binance": 8, "bybit": 8, "hyperliquid": 1}
_RATE = {"binance": 0.0001, "bybit": 0.0003, "hyperliquid": 0.00002}
_PRICE = {"binance": 100.0, "bybit": 100.1, "hyperliquid": 99.9}


def _apr(long_ex, short_ex, long_rate=None, short_rate=None):
    return repr(
        float(
            fund_apr(
                _RATE[long_ex] if long_rate is None else long_rate,
                _RATE[short_ex] if short_rate is None else short_rate,
                _INTERVAL[long_ex],
                _INTERVAL[short_ex],
            )
        )
    )


def _good_table() -> pd.DataFrame:
    """Six rows, lines 2-7 of the CSV: hours 00:00 and 01:00 x three pairs of BTC."""
    rows = []
    for hour in ("2024-01-01 00:00:00", "2024-01-01 01:00:00"):
        for long_ex, short_ex in _PAIRS:
            rows.append(
                {
                    "entry_time": hour,
                    "symbol": "BTC",
                    "long_exchange": long_ex,
                    "short_exchange": short_ex,
                    "entry_long_price": repr(_PRICE[long_ex]),
                    "entry_short_price": repr(_PRICE[short_ex]),
                    "long_funding_rate": repr(_RATE[long_ex]),
                    "short_funding_rate": repr(_RATE[short_ex]),
                    "fund_apr": _apr(long_ex, short_ex),
                    "volume_24h": "1000000",
                    "long_interval_hours": str(_INTERVAL[long_ex]),
                    "short_interval_hours": str(_INTERVAL[short_ex]),
                }
            )
    return pd.DataFrame(rows, dtype=str)


def test_good_table_loads(tmp_path):
    _good_table().to_csv(tmp_path / "good.csv", index=False)
    p = load_funding(tmp_path / "good.csv")
    assert p.symbols == ("BTC",) and p.exchanges == ("binance", "bybit", "hyperliquid")
    assert list(p.interval_hours) == [8, 8, 1] and p.n_hours == 2 and p.listed.all()
    np.testing.assert_array_equal(p.rate[0, 0], [0.0001, 0.0003, 0.00002])


def test_intervals_default_to_8_hours(tmp_path):
    table = _good_table()
    table = table[table["long_exchange"] == "binance"].drop(columns=list(INTERVAL_COLUMNS))
    table.loc[table["short_exchange"] == "hyperliquid", "fund_apr"] = repr(
        float(fund_apr(_RATE["binance"], _RATE["hyperliquid"], 8, 8))
    )
    table.to_csv(tmp_path / "eight.csv", index=False)
    assert list(load_funding(tmp_path / "eight.csv").interval_hours) == [8, 8, 8]


def _set(row, **cells):
    def mutate(table):
        for column, value in cells.items():
            table.loc[row, column] = value
        return table

    return mutate


def _conflicting_rate(table):
    # Line 4 gives binance at 00:00 another rate than line 2 (its fund_apr kept consistent).
    table.loc[2, "long_funding_rate"] = "0.00011"
    table.loc[2, "fund_apr"] = _apr("binance", "hyperliquid", long_rate=0.00011)
    return table


def _two_intervals(table):
    # Line 3's short leg says bybit settles hourly; line 2 said 8 h.
    table.loc[1, "short_interval_hours"] = "1"
    table.loc[1, "fund_apr"] = repr(float(fund_apr(_RATE["hyperliquid"], _RATE["bybit"], 1, 1)))
    return table


# (mutation of the good table, lines the message names, the column it names, pattern)
BAD_TABLES = {
    "missing column": (lambda t: t.drop(columns="fund_apr"), [1], "fund_apr", "missing column"),
    "unparseable time": (_set(2, entry_time="yesterday"), [4], "entry_time", "not a time"),
    "time now": (_set(2, entry_time="now"), [4], "entry_time", "not a time"),
    "bad date": (_set(3, entry_time="2024-02-30 01:00"), [5], "entry_time", "not a time"),
    "empty time": (_set(4, entry_time=""), [6], "entry_time", "is empty"),
    "mixed offsets": (
        _set(1, entry_time="2024-01-01 00:00:00+00:00"),
        [3],
        "entry_time",
        "has a UTC offset but .* line 2's .* has none",
    ),
    "not on the hour": (_set(3, entry_time="2024-01-01 01:30:00"), [5], "entry_time",
                        "not on the hour"),
    "empty symbol": (_set(1, symbol=" "), [3], "symbol", "is empty"),
    "non-numeric price": (_set(0, entry_long_price="abc"), [2], "entry_long_price",
                          "'abc' is not a number"),
    "non-finite price": (_set(5, entry_short_price="inf"), [7], "entry_short_price",
                         "inf is not finite"),
    "zero price": (_set(4, entry_long_price="0"), [6], "entry_long_price", r"0\.0 is not > 0"),
    "negative price": (_set(4, entry_short_price="-3"), [6], "entry_short_price", "not > 0"),
    "empty price": (_set(0, entry_short_price=""), [2], "entry_short_price", "is empty"),
    "nan rate": (_set(3, long_funding_rate="nan"), [5], "long_funding_rate", "not finite"),
    "empty rate": (_set(3, short_funding_rate=""), [5], "short_funding_rate", "is empty"),
    "absurd rate": (_set(2, short_funding_rate="0.3"), [4], "short_funding_rate",
                    r"> 0\.05 per settlement, beyond exchanges' funding caps"),
    "absurd negative rate": (_set(2, long_funding_rate="-0.06"), [4], "long_funding_rate",
                             "funding caps"),
    "sign-flipped fund_apr": (
        lambda t: _set(1, fund_apr=repr(-float(t.loc[1, "fund_apr"])))(t),
        [3],
        "fund_apr",
        r"does not match the row's rates, .*tolerance 0\.05 \+ 1%",
    ),
    "rates in percent": (
        _set(0, long_funding_rate="0.01", short_funding_rate="0.03"),
        [2],
        "fund_apr",
        "rates are fractions per settlement",
    ),
    "non-numeric fund_apr": (_set(5, fund_apr="high"), [7], "fund_apr", "not a number"),
    "negative volume": (_set(5, volume_24h="-1"), [7], "volume_24h", "is negative"),
    "same exchange": (
        _set(0, short_exchange="binance", fund_apr="0.0"),
        [2],
        "short_exchange",
        "both 'binance'",
    ),
    "duplicate row": (
        lambda t: pd.concat([t, t.iloc[[4]]], ignore_index=True),
        [6, 8],
        "entry_time, symbol, long_exchange, short_exchange",
        "duplicate row for BTC long hyperliquid short bybit at 2024-01-01 01:00:00",
    ),
    "conflicting price": (
        _set(2, entry_long_price="100.5"),
        [2, 4],
        "entry_long_price",
        "BTC on binance at 2024-01-01 has price 100.0 on one and 100.5 on the other",
    ),
    "conflicting rate": (_conflicting_rate, [2, 4], "long_funding_rate", "funding rate"),
    "interval not dividing 24": (_set(0, long_interval_hours="5"), [2], "long_interval_hours",
                                 "not a whole number of hours dividing 24"),
    "fractional interval": (_set(0, short_interval_hours="8.5"), [2], "short_interval_hours",
                            "dividing 24"),
    "zero interval": (_set(0, short_interval_hours="0"), [2], "short_interval_hours",
                      "dividing 24"),
    "two intervals for one exchange": (
        _two_intervals,
        [2, 3],
        "short_interval_hours",
        "exchange 'bybit' has funding interval 8 h on one and 1 h on the other",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_each_bad_table_is_one_line_naming_file_line_and_column(tmp_path, case):
    mutate, lines, column, pattern = BAD_TABLES[case]
    path = tmp_path / "opportunities.csv"
    mutate(_good_table()).to_csv(path, index=False)
    with pytest.raises(DataError, match=pattern) as info:
        load_funding(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    for line in lines:
        assert f" {line}" in message.split(": ")[0] + " "
    assert f"line{'s' if case == 'duplicate row' else ''} {lines[0]}" in message
    assert column in message


def test_a_mistyped_year_is_refused_before_allocating(tmp_path, monkeypatch):
    monkeypatch.setattr(funding, "MAX_CELLS", 1000)  # the real cap is 2e8 cells
    path = tmp_path / "typo.csv"
    _set(5, entry_time="2025-01-01 01:00:00")(_good_table()).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"typo\.csv line 2, column entry_time and line 7, "
                                        r"column entry_time: the table spans 8786 hours"):
        load_funding(path)


def test_bad_parquet_names_the_row(tmp_path):
    table = _good_table()
    numeric = [c for c in table.columns if c not in ("entry_time", "symbol", "long_exchange",
                                                      "short_exchange")]
    table[numeric] = table[numeric].astype(float)
    table["entry_time"] = pd.to_datetime(table["entry_time"])
    table.loc[3, "entry_short_price"] = np.nan
    table.to_parquet(tmp_path / "t.parquet", index=False)
    with pytest.raises(DataError, match=r"t\.parquet row 4, column entry_short_price: nan "):
        load_funding(tmp_path / "t.parquet")


def test_a_dataframe_loads_as_its_csv_and_its_errors_name_the_row(tmp_path):
    table = _good_table()
    table.to_csv(tmp_path / "good.csv", index=False)
    from_file = load_funding(tmp_path / "good.csv")
    # Typed columns (numbers, timestamps) and a shuffled index read the same as the file.
    typed = pd.read_csv(tmp_path / "good.csv", parse_dates=["entry_time"])
    for frame in (table, typed.set_axis(np.arange(6)[::-1] + 10)):
        loaded = load_funding(frame)
        for name in ("price", "rate", "volume", "listed", "interval_hours"):
            np.testing.assert_array_equal(getattr(loaded, name), getattr(from_file, name))
        assert loaded.times.equals(from_file.times) and loaded.symbols == from_file.symbols
        assert loaded.source.startswith("DataFrame: 1 symbols x 3 exchanges x 2 hours")
    typed.loc[3, "entry_short_price"] = -1.0
    with pytest.raises(DataError, match=r"^DataFrame row 4, column entry_short_price: -1\.0 is "
                                        r"not > 0$"):
        load_funding(typed)
    with pytest.raises(DataError, match=r"^DataFrame: missing column\(s\) fund_apr; "):
        load_funding(table.drop(columns="fund_apr"))


def test_tz_aware_times_are_converted_to_utc(tmp_path):
    table = _good_table()
    table["entry_time"] = ["2024-01-01 02:00:00+02:00"] * 3 + ["2024-01-01T01:00Z"] * 3
    table.to_csv(tmp_path / "aware.csv", index=False)
    p = load_funding(tmp_path / "aware.csv")
    assert list(p.times) == [pd.Timestamp("2024-01-01 00:00"), pd.Timestamp("2024-01-01 01:00")]


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.csv: no such file"):
        load_funding(tmp_path / "nowhere.csv")
    (tmp_path / "table.txt").write_text("x\n")
    with pytest.raises(DataError, match=r"table\.txt: unsupported file type"):
        load_funding(tmp_path / "table.txt")
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(DataError, match=r"blank\.csv: the file is empty"):
        load_funding(tmp_path / "blank.csv")
    header_only = tmp_path / "header.csv"
    header_only.write_text(",".join(COLUMNS) + "\n\n")
    with pytest.raises(DataError, match=r"header\.csv: no data rows below the header line"):
        load_funding(header_only)


def test_blank_lines_keep_line_numbers(tmp_path):
    text = _good_table().to_csv(index=False).splitlines()
    text.insert(2, "")  # a blank line 3: the row after it is line 4
    text[4] = text[4].replace("100.0,", "abc,", 1)  # line 5: binance long at 00:00
    (tmp_path / "blank_line.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"line 5, column entry_long_price: 'abc'"):
        load_funding(tmp_path / "blank_line.csv")


# --- splits --------------------------------------------------------------------------


def test_split_hours():
    assert split_hours(100) == (60, 80)
    assert split_hours(2880, 0.1, 0.1) == (2304, 2592)
    assert split_hours(3) == (1, 2)  # each part one hour
    assert split_hours(10, 0.0, 0.3) == (7, 7)  # no validation part
    assert split_hours(10, 0.3, 0.0) == (7, 10)
    for n in range(3, 60):
        val, test = split_hours(n, 0.15, 0.25)
        assert 0 < val < test < n


@pytest.mark.parametrize(
    "args, pattern",
    [
        ((2,), "2 hours cannot be split into non-empty train, validation and test"),
        ((0,), "n_hours must be an integer >= 1"),
        ((10.0,), "n_hours must be an integer"),
        ((100, -0.1, 0.2), r"val_fraction must be in \[0, 1\)"),
        ((100, 0.2, 1.0), r"test_fraction must be in \[0, 1\)"),
        ((100, 0.5, 0.5), "leaves no hours to train on"),
    ],
)
def test_split_hours_errors(args, pattern):
    with pytest.raises(DataError, match=pattern):
        split_hours(*args)

"""Tests for jaxtrade/data/loader.py: every accepted layout, alignment, and each bad input."""

import re
import textwrap

import numpy as np
import pandas as pd
import pytest

from jaxtrade.data.loader import load_frame, load_panel
from jaxtrade.data.panel import FIELDS, DataError

DATES = pd.bdate_range("2024-01-02", periods=10)  # 2024-01-02 .. 2024-01-15


def _long_frame(symbols=("AAPL", "MSFT"), n=10):
    """Long-format bars; symbol k closes at 100 * (k + 1) + t on day t."""
    frames = []
    for k, symbol in enumerate(symbols):
        close = 100.0 * (k + 1) + np.arange(n)
        frames.append(
            pd.DataFrame(
                {
                    "date": DATES[:n].strftime("%Y-%m-%d"),
                    "symbol": symbol,
                    "open": close - 0.5,
                    "high": close + 1.0,
                    "low": close - 1.0,
                    "close": close,
                    "adj close": close * 0.5,
                    "volume": 1000.0 * (k + 1) + np.arange(n),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _write(path, text):
    """Write dedented CSV text; the first line written is line 1 of the file."""
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def _raises(pattern, fn, *args, **kwargs):
    """Call fn, expect a one-line DataError matching `pattern`; returns the message."""
    with pytest.raises(DataError, match=pattern) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


def _assert_expected_long(panel, n=10):
    """The panel holds `_long_frame()` exactly."""
    t = np.arange(n, dtype=np.float64)[:, None]
    close = 100.0 * np.array([1.0, 2.0]) + t
    assert panel.symbols == ("AAPL", "MSFT")
    assert list(panel.dates) == list(DATES[:n])
    for name in FIELDS:
        arr = getattr(panel, name)
        assert arr.shape == (n, 2) and arr.dtype == np.float64
    np.testing.assert_array_equal(panel.close, close)
    np.testing.assert_array_equal(panel.open, close - 0.5)
    np.testing.assert_array_equal(panel.high, close + 1.0)
    np.testing.assert_array_equal(panel.low, close - 1.0)
    np.testing.assert_array_equal(panel.adj_close, close * 0.5)
    np.testing.assert_array_equal(panel.volume, 1000.0 * np.array([1.0, 2.0]) + t)


# --- accepted layouts ----------------------------------------------------------------


def test_long_csv_round_trip(tmp_path):
    path = tmp_path / "prices.csv"
    _long_frame().to_csv(path, index=False)
    panel = load_panel(path)
    _assert_expected_long(panel)
    assert panel.dates.tz is None and panel.dates.is_monotonic_increasing
    assert panel.source == str(path)
    assert panel.report == (f"loaded 2 symbols x 10 bars (2024-01-02 .. 2024-01-15) from {path}",)


def test_data_frame_in_memory():
    frame = _long_frame()
    _assert_expected_long(load_frame(frame))
    # Parsed dates, date and symbol as the index, and the options work as for files.
    parsed = frame.assign(date=pd.to_datetime(frame["date"])).set_index(["date", "symbol"])
    _assert_expected_long(load_frame(parsed))
    panel = load_frame(frame, symbols="MSFT", start="2024-01-03", end="2024-01-05")
    assert panel.symbols == ("MSFT",) and list(panel.dates) == list(DATES[1:4])
    assert panel.source == "DataFrame"


def test_data_frame_errors_name_the_row():
    frame = _long_frame()
    frame["close"] = frame["close"].astype(object)
    frame.loc[12, "close"] = "n/a"
    _raises(r"^DataFrame row 12 \(MSFT, 2024-01-04\): close 'n/a' is not a number$",
            load_frame, frame)
    _raises(r"^bars: missing column\(s\) volume", load_frame,
            _long_frame().drop(columns="volume"), source="bars")
    _raises("expected a pandas DataFrame, got list", load_frame, [1, 2])


@pytest.mark.parametrize("name", ["prices.parquet", "prices.pq"])
def test_parquet(tmp_path, name):
    path = tmp_path / name
    _long_frame().to_parquet(path, index=False)
    _assert_expected_long(load_panel(path))


def test_parquet_with_datetime_index_and_tz(tmp_path):
    frame = _long_frame()
    frame["date"] = pd.to_datetime(frame["date"]).dt.tz_localize("UTC")
    path = tmp_path / "prices.parquet"
    frame.set_index(["date", "symbol"]).to_parquet(path)
    _assert_expected_long(load_panel(path))


def test_gzipped_csv(tmp_path):
    path = tmp_path / "prices.csv.gz"
    _long_frame().to_csv(path, index=False)
    _assert_expected_long(load_panel(path))


def _yfinance_file(path, frame, adj=True):
    """One symbol's bars as `Date,Open,High,Low,Close[,Adj Close],Volume`."""
    out = frame.drop(columns="symbol").rename(columns=str.title)
    if not adj:
        out = out.drop(columns="Adj Close")
    out.to_csv(path, index=False)


def test_directory_of_yfinance_files_uses_adj_close(tmp_path):
    frame = _long_frame()
    for symbol, rows in frame.groupby("symbol"):
        _yfinance_file(tmp_path / f"{symbol}.csv", rows)
    (tmp_path / "README.txt").write_text("not data")
    (tmp_path / "sub").mkdir()
    panel = load_panel(tmp_path)
    _assert_expected_long(panel)
    assert panel.report == (
        f"loaded 2 symbols x 10 bars (2024-01-02 .. 2024-01-15) from {tmp_path}",
    )


def test_directory_without_adj_close_uses_close(tmp_path):
    frame = _long_frame()
    for symbol, rows in frame.groupby("symbol"):
        _yfinance_file(tmp_path / f"{symbol}.csv", rows, adj=symbol == "MSFT")
    panel = load_panel(tmp_path)
    np.testing.assert_array_equal(panel.adj_close[:, 0], panel.close[:, 0])
    np.testing.assert_array_equal(panel.adj_close[:, 1], panel.close[:, 1] * 0.5)
    assert "no adj close for AAPL; their adj_close = close" in panel.report

    (tmp_path / "MSFT.csv").unlink()
    panel = load_panel(tmp_path)
    np.testing.assert_array_equal(panel.adj_close, panel.close)
    assert panel.report[-1] == "no adj close in the data; adj_close = close"


def test_yfinance_multi_row_header(tmp_path):
    _write(
        tmp_path / "AAPL.csv",
        """
        Price,Adj Close,Close,High,Low,Open,Volume
        Ticker,AAPL,AAPL,AAPL,AAPL,AAPL,AAPL
        Date,,,,,,
        2024-01-02,1.5,2.0,2.5,1.0,1.2,100
        2024-01-03,1.6,2.1,2.6,1.1,1.3,200
        2024-01-04,1.7,2.2,2.7,1.2,1.4,300
        """,
    )
    panel = load_panel(tmp_path)
    assert panel.symbols == ("AAPL",)
    assert list(panel.dates) == list(pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04"]))
    np.testing.assert_array_equal(panel.adj_close[:, 0], [1.5, 1.6, 1.7])
    np.testing.assert_array_equal(panel.close[:, 0], [2.0, 2.1, 2.2])
    np.testing.assert_array_equal(panel.open[:, 0], [1.2, 1.3, 1.4])
    np.testing.assert_array_equal(panel.volume[:, 0], [100, 200, 300])


def test_yfinance_multi_row_header_counts_header_lines(tmp_path):
    _write(
        tmp_path / "AAPL.csv",
        """
        Price,Adj Close,Close,High,Low,Open,Volume
        Ticker,AAPL,AAPL,AAPL,AAPL,AAPL,AAPL
        Date,,,,,,
        2024-01-02,1.5,2.0,2.5,1.0,1.2,100
        2024-01-03,1.6,abc,2.6,1.1,1.3,200
        """,
    )
    _raises(
        r"AAPL\.csv line 5 \(AAPL, 2024-01-03\): close 'abc' is not a number", load_panel, tmp_path
    )


def test_month_day_year_dates(tmp_path):
    path = _write(
        tmp_path / "prices.csv",
        """
        date,symbol,open,high,low,close,volume
        1/2/2024,AAPL,1,2,1,1.5,10
        01/03/2024,AAPL,1,2,1,1.6,10
        12/31/2024,AAPL,1,2,1,1.7,10
        """,
    )
    panel = load_panel(path)
    assert list(panel.dates) == list(pd.to_datetime(["2024-01-02", "2024-01-03", "2024-12-31"]))
    np.testing.assert_array_equal(panel.close[:, 0], [1.5, 1.6, 1.7])


def test_hourly_tz_aware_bars_become_naive_utc_and_fill_like_daily(tmp_path):
    # Two sessions of 7 hourly bars, New York time (UTC-5 in January).
    local = pd.DatetimeIndex(
        [
            *pd.date_range("2024-01-02 09:30", periods=7, freq="h"),
            *pd.date_range("2024-01-03 09:30", periods=7, freq="h"),
        ]
    ).tz_localize("America/New_York")
    for k, symbol in enumerate(["AAPL", "MSFT"]):
        close = 10.0 * (k + 1) + np.arange(14)
        frame = pd.DataFrame(
            {
                "Datetime": [stamp.isoformat(sep=" ") for stamp in local],
                "Open": close,
                "High": close + 1,
                "Low": close - 1,
                "Close": close,
                "Volume": 5.0,
            }
        )
        if symbol == "MSFT":
            frame = frame.drop(index=[3, 4])  # 12:30 and 13:30 on day one missing
        frame.to_csv(tmp_path / f"{symbol}.csv", index=False)
    assert "2024-01-02 09:30:00-05:00" in (tmp_path / "AAPL.csv").read_text()

    panel = load_panel(tmp_path, max_fill=2)
    expected = local.tz_convert("UTC").tz_localize(None)
    assert panel.dates.tz is None
    assert list(panel.dates) == list(expected)
    assert panel.dates[0] == pd.Timestamp("2024-01-02 14:30")
    assert set(np.diff(panel.dates[:7]).astype("timedelta64[m]").astype(int)) == {60}
    # MSFT's 12:30 and 13:30 bars are filled from the 11:30 close (22.0), volume 0.
    np.testing.assert_array_equal(panel.close[2:6, 1], [22.0, 22.0, 22.0, 25.0])
    np.testing.assert_array_equal(panel.open[3:5, 1], [22.0, 22.0])
    np.testing.assert_array_equal(panel.volume[2:6, 1], [5.0, 0.0, 0.0, 5.0])
    assert "filled 2 bars (MSFT 2)" in panel.report
    _raises(
        r"MSFT is missing 2 consecutive bars from 2024-01-02 17:30:00 to 2024-01-02 18:30:00 "
        r"\(no row.*max_fill=1 \(CLI --max-fill\)",
        load_panel,
        tmp_path,
        max_fill=1,
    )


def test_midnight_end_includes_the_whole_day_of_intraday_bars(tmp_path):
    path = _write(
        tmp_path / "prices.csv",
        """
        timestamp,symbol,open,high,low,close,volume
        2024-01-02 10:00,AAPL,1,1,1,1,1
        2024-01-02 11:00,AAPL,2,2,2,2,1
        2024-01-03 10:00,AAPL,3,3,3,3,1
        """,
    )
    panel = load_panel(path, end="2024-01-02")
    np.testing.assert_array_equal(panel.close[:, 0], [1.0, 2.0])
    assert load_panel(path, end="2024-01-02 10:30").n_bars == 1


def test_separate_date_and_time_columns_are_combined(tmp_path):
    path = _write(
        tmp_path / "prices.csv",
        """
        Date,Time,Symbol,Open,High,Low,Close,Volume
        2024-01-02,10:00,AAPL,1,1,1,1,1
        2024-01-02,11:00,AAPL,2,2,2,2,1
        """,
    )
    assert list(load_panel(path).dates) == list(
        pd.to_datetime(["2024-01-02 10:00", "2024-01-02 11:00"])
    )


def test_headers_case_insensitive_aliases_and_extra_columns(tmp_path):
    path = _write(
        tmp_path / "prices.csv",
        """
         TimeStamp , TICKER ,Notes,OPEN,High ,low,Close,ADJ_CLOSE,Volume,Dividends
        2024-01-02,AAPL,hello,1,2,0.5,1.5,1.25,10,0
        2024-01-03,AAPL,world,2,3,1.5,2.5,2.25,20,0
        """,
    )
    panel = load_panel(path)
    assert panel.symbols == ("AAPL",)
    np.testing.assert_array_equal(panel.adj_close[:, 0], [1.25, 2.25])
    np.testing.assert_array_equal(panel.low[:, 0], [0.5, 1.5])
    np.testing.assert_array_equal(panel.volume[:, 0], [10, 20])


def test_unsorted_input_gives_sorted_output(tmp_path):
    frame = _long_frame()
    path = tmp_path / "prices.csv"
    frame.sample(frac=1.0, random_state=0).to_csv(path, index=False)
    _assert_expected_long(load_panel(path))


def test_symbols_option_orders_and_subsets(tmp_path):
    path = tmp_path / "prices.csv"
    _long_frame(symbols=("AAPL", "MSFT", "SPY")).to_csv(path, index=False)
    panel = load_panel(path, symbols=["SPY", "AAPL"])
    assert panel.symbols == ("SPY", "AAPL")
    np.testing.assert_array_equal(panel.close[0], [300.0, 100.0])
    assert load_panel(path, symbols="MSFT").symbols == ("MSFT",)


def test_start_end_are_inclusive(tmp_path):
    path = tmp_path / "prices.csv"
    _long_frame().to_csv(path, index=False)
    panel = load_panel(path, start="2024-01-04", end=pd.Timestamp("2024-01-09"))
    assert list(panel.dates) == list(
        pd.to_datetime(["2024-01-04", "2024-01-05", "2024-01-08", "2024-01-09"])
    )
    np.testing.assert_array_equal(panel.close[:, 0], [102.0, 103.0, 104.0, 105.0])
    assert "dropped 12 rows outside start=2024-01-04, end=2024-01-09" in panel.report


def test_forward_fill_within_limit(tmp_path):
    path = _write(
        tmp_path / "prices.csv",
        """
        date,symbol,open,high,low,close,adj close,volume
        2024-01-02,AAPL,10,11,9,10.5,10.0,100
        2024-01-02,MSFT,20,21,19,20.5,20.0,200
        2024-01-03,AAPL,11,12,10,11.5,11.0,100
        2024-01-03,MSFT,21,22,20,21.5,21.0,200
        2024-01-04,MSFT,22,23,21,22.5,22.0,200
        2024-01-05,AAPL,12,13,,,12.0,100
        2024-01-05,MSFT,23,24,22,23.5,23.0,200
        2024-01-08,AAPL,13,14,12,13.5,13.0,100
        2024-01-08,MSFT,24,25,23,24.5,24.0,200
        2024-01-09,AAPL,14,15,13,14.5,14.0,100
        """,
    )
    panel = load_panel(path, max_fill=2)
    # AAPL: 01-04 has no row and 01-05 has empty low/close: both filled from 01-03.
    np.testing.assert_array_equal(panel.close[:, 0], [10.5, 11.5, 11.5, 11.5, 13.5])
    np.testing.assert_array_equal(panel.open[:, 0], [10, 11, 11.5, 11.5, 13])
    np.testing.assert_array_equal(panel.high[:, 0], [11, 12, 11.5, 11.5, 14])
    np.testing.assert_array_equal(panel.low[:, 0], [9, 10, 11.5, 11.5, 12])
    np.testing.assert_array_equal(panel.adj_close[:, 0], [10.0, 11.0, 11.0, 11.0, 13.0])
    np.testing.assert_array_equal(panel.volume[:, 0], [100, 100, 0, 0, 100])
    np.testing.assert_array_equal(panel.close[:, 1], [20.5, 21.5, 22.5, 23.5, 24.5])
    assert panel.report == (
        f"loaded 2 symbols x 5 bars (2024-01-02 .. 2024-01-08) from {path}",
        "dropped 1 rows outside the common date span 2024-01-02 .. 2024-01-08",
        "filled 2 bars (AAPL 2)",
    )
    _raises(r"AAPL is missing 2 consecutive bars", load_panel, path, max_fill=1)


def test_gap_at_span_start_fills_from_the_bar_before_the_span(tmp_path):
    path = _write(
        tmp_path / "prices.csv",
        """
        date,symbol,open,high,low,close,volume
        2024-01-02,AAPL,1,1,1,1.0,5
        2024-01-04,AAPL,3,3,3,3.0,5
        2024-01-03,MSFT,2,2,2,2.0,5
        2024-01-04,MSFT,3,3,3,3.0,5
        """,
    )
    panel = load_panel(path)
    assert list(panel.dates) == list(pd.to_datetime(["2024-01-03", "2024-01-04"]))
    np.testing.assert_array_equal(panel.close, [[1.0, 2.0], [3.0, 3.0]])
    np.testing.assert_array_equal(panel.volume, [[0.0, 5.0], [5.0, 5.0]])


def test_empty_volume_cell_is_zero_volume(tmp_path):
    path = _write(
        tmp_path / "prices.csv",
        """
        date,symbol,open,high,low,close,volume
        2024-01-02,AAPL,1,1,1,1.0,5
        2024-01-03,AAPL,2,2,2,2.0,
        """,
    )
    panel = load_panel(path)
    np.testing.assert_array_equal(panel.close[:, 0], [1.0, 2.0])
    np.testing.assert_array_equal(panel.volume[:, 0], [5.0, 0.0])
    assert "set volume 0 on 1 bars with an empty volume cell (AAPL 1)" in panel.report


def test_blank_lines_and_a_symbol_with_blank_adj_close(tmp_path):
    path = _write(
        tmp_path / "prices.csv",
        """
        date,symbol,open,high,low,close,adj close,volume
        2024-01-02,AAPL,1,1,1,1.0,0.5,5

        2024-01-02,^SPX,9,9,9,9.0,,0
        2024-01-03,AAPL,2,2,2,2.0,1.5,5
        2024-01-03,^SPX,8,8,8,8.0,,0
        2024-01-04,AAPL,3,3,3,x,2.5,5
        """,
    )
    # ^SPX has the column but no values: its adj_close is its close, not a gap.
    panel = load_panel(path, end="2024-01-03")
    np.testing.assert_array_equal(panel.adj_close, [[0.5, 9.0], [1.5, 8.0]])
    assert "no adj close for ^SPX; their adj_close = close" in panel.report
    # The blank line 3 still counts: the bad close is on line 7.
    _raises(r"prices\.csv line 7 \(AAPL, 2024-01-04\): close 'x' is not a number", load_panel, path)


# --- bad inputs: one DataError each, naming file, line/date, symbol, column ----------

_HEADER = "date,symbol,open,high,low,close,volume\n"


def _bad_csv(tmp_path, *rows):
    """A long CSV whose data rows start on line 2."""
    path = tmp_path / "prices.csv"
    path.write_text(_HEADER + "".join(row + "\n" for row in rows))
    return path


def test_missing_columns(tmp_path):
    path = _write(tmp_path / "prices.csv", "Date,Symbol,Open,Close\n2024-01-02,AAPL,1,1\n")
    _raises(
        re.escape(f"{path}: missing column(s) high, low, volume; found: Date, Symbol, Open, Close"),
        load_panel,
        path,
    )


def test_missing_symbol_column_in_a_frame_hints_at_adding_one():
    # A file without one holds one symbol named after it; a frame has no name to use.
    frame = pd.DataFrame({"Date": ["2024-01-02"], "Open": [1], "High": [1], "Low": [1],
                          "Close": [1], "Volume": [1]})
    _raises(r"missing column\(s\) symbol; .*add its name as a symbol column", load_frame, frame)


def test_non_numeric_value(tmp_path):
    path = _bad_csv(
        tmp_path,
        "2024-01-02,AAPL,1,2,1,1.5,10",
        "2024-01-03,AAPL,1,2,1,abc,10",
        "2024-01-04,AAPL,1,2,1,1.5,1e",
    )
    _raises(
        re.escape(
            f"{path} line 3 (AAPL, 2024-01-03): close 'abc' is not a number (and 1 more such value)"
        ),
        load_panel,
        path,
    )


def test_non_positive_price(tmp_path):
    path = _bad_csv(tmp_path, "2024-01-02,AAPL,1,2,1,1.5,10", "2024-01-03,AAPL,1,2,0,1.5,10")
    _raises(re.escape(f"{path} line 3 (AAPL, 2024-01-03): low 0 is not > 0"), load_panel, path)


def test_non_positive_adj_close(tmp_path):
    path = _write(
        tmp_path / "prices.csv",
        "date,symbol,open,high,low,close,adj close,volume\n2024-01-02,AAPL,1,2,1,1.5,-2,10\n",
    )
    _raises(
        re.escape(f"{path} line 2 (AAPL, 2024-01-02): adj_close -2 is not > 0"), load_panel, path
    )


def test_negative_volume(tmp_path):
    path = _bad_csv(tmp_path, "2024-01-02,MSFT,1,2,1,1.5,-10")
    _raises(
        re.escape(f"{path} line 2 (MSFT, 2024-01-02): volume -10 is negative"), load_panel, path
    )


def test_unparseable_date(tmp_path):
    path = _bad_csv(tmp_path, "2024-01-02,AAPL,1,2,1,1.5,10", "2024-13-45,AAPL,1,2,1,1.5,10")
    _raises(
        re.escape(f"{path} line 3 (AAPL): date '2024-13-45' is not a date; expected"),
        load_panel,
        path,
    )


def test_duplicate_rows(tmp_path):
    path = _bad_csv(
        tmp_path,
        "2024-01-02,AAPL,1,2,1,1.5,10",
        "2024-01-03,AAPL,1,2,1,1.5,10",
        "2024-01-02,MSFT,1,2,1,1.5,10",
        "2024-01-03,AAPL,1,2,1,1.6,10",
    )
    _raises(
        re.escape(f"{path} lines 3 and 5: duplicate bar for AAPL on 2024-01-03"), load_panel, path
    )


def test_gap_longer_than_max_fill(tmp_path):
    path = _bad_csv(
        tmp_path,
        *[f"2024-01-{d:02d},MSFT,1,2,1,1.5,10" for d in range(2, 9)],
        "2024-01-02,AAPL,1,2,1,1.5,10",
        "2024-01-03,AAPL,1,2,1,,10",
        "2024-01-08,AAPL,1,2,1,1.5,10",
    )
    _raises(
        re.escape(
            f"{path}: AAPL is missing 5 consecutive bars from 2024-01-03 to 2024-01-07 (no row, so "
            "every column, on 4 of those dates; empty close on line 10), more than max_fill=4 "
            "(CLI --max-fill) allows"
        ),
        load_panel,
        path,
        max_fill=4,
    )
    assert load_panel(path, max_fill=5).close[1:6, 0].tolist() == [1.5] * 5


def test_missing_value_on_first_aligned_bar(tmp_path):
    path = _bad_csv(
        tmp_path,
        "2024-01-02,MSFT,1,2,1,1.5,10",
        "2024-01-03,MSFT,1,2,1,1.5,10",
        "2024-01-03,AAPL,1,,1,,10",
        "2024-01-04,AAPL,1,2,1,1.5,10",
        "2024-01-04,MSFT,1,2,1,1.5,10",
    )
    _raises(
        re.escape(
            f"{path} line 4 (AAPL, 2024-01-03): AAPL's first aligned bar has empty high, close "
            "and there is no earlier bar to forward-fill from"
        ),
        load_panel,
        path,
    )


def test_symbol_without_overlap(tmp_path):
    path = _bad_csv(
        tmp_path,
        *[f"2024-01-0{d},{s},1,2,1,1.5,10" for d in (2, 3, 4) for s in ("AAPL", "MSFT")],
        "2023-06-01,OLD,1,2,1,1.5,10",
        "2023-06-02,OLD,1,2,1,1.5,10",
    )
    _raises(
        re.escape(
            f"{path}: OLD has dates 2023-06-01 .. 2023-06-02, which do not overlap the other "
            "symbols' common span 2024-01-02 .. 2024-01-04"
        ),
        load_panel,
        path,
    )
    assert load_panel(path, symbols=["AAPL", "MSFT"]).n_bars == 3


def test_no_rows_after_date_filter(tmp_path):
    path = tmp_path / "prices.csv"
    _long_frame().to_csv(path, index=False)
    _raises(
        re.escape(
            f"{path}: no rows left after the start/end filter (start=2030-01-01); "
            "the data covers 2024-01-02 .. 2024-01-15"
        ),
        load_panel,
        path,
        start="2030-01-01",
    )


def test_symbol_with_no_rows_after_date_filter(tmp_path):
    path = _bad_csv(tmp_path, "2024-01-02,AAPL,1,2,1,1.5,10", "2024-02-02,MSFT,1,2,1,1.5,10")
    _raises(
        re.escape(
            f"{path}: MSFT has no rows left after the start/end filter (end=2024-01-31); "
            "its data covers 2024-02-02 .. 2024-02-02"
        ),
        load_panel,
        path,
        end="2024-01-31",
    )


def test_unknown_symbol(tmp_path):
    path = tmp_path / "prices.csv"
    _long_frame().to_csv(path, index=False)
    _raises(
        re.escape(f"{path}: no data for symbol(s) TSLA; available: AAPL, MSFT"),
        load_panel,
        path,
        symbols=["AAPL", "TSLA"],
    )


def test_unreadable_sources(tmp_path):
    _raises(
        re.escape(f"{tmp_path / 'nope.csv'}: no such file or directory"),
        load_panel,
        tmp_path / "nope.csv",
    )
    junk = tmp_path / "prices.parquet"
    junk.write_text("not parquet")
    _raises(re.escape(f"cannot read {junk}: "), load_panel, junk)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _raises(re.escape(f"cannot read {empty}: "), load_panel, empty)
    other = tmp_path / "prices.xlsx"
    other.write_text("x")
    _raises(re.escape(f"{other}: unsupported file type"), load_panel, other)
    header_only = _write(tmp_path / "header.csv", _HEADER)
    _raises(re.escape(f"{header_only}: no data rows"), load_panel, header_only)
    no_symbol = _write(tmp_path / "nosym.csv", _HEADER + "2024-01-02, ,1,2,1,1.5,10\n")
    _raises(re.escape(f"{no_symbol} line 2: symbol is empty"), load_panel, no_symbol)


def test_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("no data here")
    _raises(re.escape(f"{tmp_path}: no .csv files in the directory"), load_panel, tmp_path)


def test_bad_options(tmp_path):
    path = tmp_path / "prices.csv"
    _long_frame().to_csv(path, index=False)
    _raises(
        r"max_fill \(CLI --max-fill\) must be an integer >= 0, got -1",
        load_panel,
        path,
        max_fill=-1,
    )
    _raises(r"start='soon' is not a date", load_panel, path, start="soon")
    _raises(
        r"start=2024-02-01 is after end=2024-01-01",
        load_panel,
        path,
        start="2024-02-01",
        end="2024-01-01",
    )


# --- real files as users have them -----------------------------------------------------


def test_directory_files_each_use_their_own_date_format(tmp_path):
    """One ISO file among MM/DD/YYYY ones: each file's format is detected on its own."""
    _write(tmp_path / "GOOG.csv", """
        Date,Open,High,Low,Close,Volume
        1999-01-04,1,2,1,1.5,10
        1999-01-05,1,2,1,1.6,10
        1999-01-12,1,2,1,1.7,10
        """)
    for symbol in ("AAPL", "MSFT"):
        _write(tmp_path / f"{symbol}.csv", """
            Date,Open,High,Low,Close,Volume
            1/4/1999,1,2,1,2.5,10
            1/5/1999,1,2,1,2.6,10
            1/12/1999,1,2,1,2.7,10
            """)
    panel = load_panel(tmp_path)
    assert panel.symbols == ("AAPL", "GOOG", "MSFT")
    assert list(panel.dates) == list(pd.to_datetime(["1999-01-04", "1999-01-05", "1999-01-12"]))
    np.testing.assert_array_equal(panel.close, [[2.5, 1.5, 2.5], [2.6, 1.6, 2.6],
                                                [2.7, 1.7, 2.7]])


def test_unparseable_date_names_file_editor_line_and_formats_tried(tmp_path):
    tried = "YYYY-MM-DD[ HH:MM[:SS]][+HH:MM], MM/DD/YYYY, MM/DD/YYYY HH:MM, MM/DD/YYYY HH:MM:SS"
    _write(tmp_path / "AAPL.csv", "Date,Open,High,Low,Close,Volume\n1999-01-04,1,2,1,1.5,10\n")
    # Line 3 is blank, so the bad date is on line 4 of the file as an editor shows it.
    msft = _write(tmp_path / "MSFT.csv", """
        Date,Open,High,Low,Close,Volume
        1/4/1999,1,2,1,1.5,10

        1999-01-05,1,2,1,1.5,10
        1/6/1999,1,2,1,1.5,10
        """)
    _raises(
        re.escape(
            f"{msft} line 4 (MSFT): date '1999-01-05' is not a date; expected MM/DD/YYYY like "
            f"the other dates in MSFT.csv (formats tried: {tried})"
        ),
        load_panel,
        tmp_path,
    )
    msft.unlink()
    bad = _write(tmp_path / "BAD.csv", "Date,Open,High,Low,Close,Volume\n04.01.1999,1,2,1,1.5,10\n")
    _raises(
        re.escape(
            f"{bad} line 2 (BAD): date '04.01.1999' is not a date; none of the formats tried "
            f"fits the dates in BAD.csv: {tried}"
        ),
        load_panel,
        tmp_path,
    )


@pytest.mark.parametrize("name", ["EURUSD.csv", "EURUSD.csv.gz", "EURUSD.parquet"])
@pytest.mark.parametrize("adj", [False, True])
def test_single_series_file_is_one_symbol_named_after_the_file(tmp_path, name, adj):
    """Date,Open,High,Low,Close,Volume[,Adj Close] with no symbol column, given as the path."""
    rows = _long_frame(symbols=("X",), n=5)
    path = tmp_path / name
    frame = rows.drop(columns="symbol").rename(columns=str.title)
    if not adj:
        frame = frame.drop(columns="Adj Close")
    if name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    panel = load_panel(path, symbols="EURUSD")
    assert panel.symbols == ("EURUSD",)
    assert list(panel.dates) == list(DATES[:5])
    close = rows["close"].to_numpy()[:, None]
    np.testing.assert_array_equal(panel.close, close)
    np.testing.assert_array_equal(panel.open, close - 0.5)
    np.testing.assert_array_equal(panel.volume, rows["volume"].to_numpy()[:, None])
    np.testing.assert_array_equal(panel.adj_close, close * 0.5 if adj else close)
    assert panel.report[0] == f"loaded 1 symbols x 5 bars (2024-01-02 .. 2024-01-08) from {path}"


def test_single_series_file_with_blank_lines_and_errors_by_editor_line(tmp_path):
    path = _write(tmp_path / "BTC-USD.csv", """
        Date,Open,High,Low,Close,Volume
        2024-01-02,1,2,1,1.5,10

        2024-01-03,1,2,1,abc,10
        """)
    _raises(
        re.escape(f"{path} line 4 (BTC-USD, 2024-01-03): close 'abc' is not a number"),
        load_panel,
        path,
    )
    # A long file whose symbol header is not recognised reads as one series: say so.
    path = _write(tmp_path / "prices.csv", """
        date,asset,open,high,low,close,volume
        2024-01-02,A,1,2,1,1.5,10
        2024-01-02,B,1,2,1,1.5,10
        """)
    _raises(
        re.escape(
            f"{path} lines 2 and 3: duplicate bar for prices on 2024-01-02; the file has no "
            "symbol column (symbol or ticker), so all its rows are one symbol, prices, named "
            "after the file"
        ),
        load_panel,
        path,
    )


def test_long_file_keeps_its_symbol_column(tmp_path):
    """A file named like a symbol but with a symbol column is long format, as before."""
    path = tmp_path / "AAPL.csv"
    _long_frame().to_csv(path, index=False)
    _assert_expected_long(load_panel(path))

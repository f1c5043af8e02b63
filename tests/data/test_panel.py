"""Tests for jaxtrade/data/panel.py: how dates are read and written for people, and the
Panel's shape check and slicing. The loader and the markets build panels (tested in
test_loader.py and test_market.py); here each piece is tested on its own."""

import dataclasses
import datetime as dt
import re

import numpy as np
import pandas as pd
import pytest

from jaxtrade.data.panel import FIELDS, DataError, Panel, format_date, parse_date

DATES = pd.date_range("2024-01-02", periods=5, freq="D")
SYMBOLS = ("AAA", "BBB")


def make_panel(n_bars=5, n_assets=2, **replace):
    """A panel whose field k holds 100 * k + t + a / 10 at bar t, asset a."""
    t = np.arange(n_bars)[:, None] + np.arange(n_assets)[None, :] / 10
    fields = {name: 100.0 * k + t for k, name in enumerate(FIELDS, start=1)}
    return Panel(**{"dates": DATES[:n_bars], "symbols": SYMBOLS[:n_assets], **fields,
                    "source": "test", "report": ("filled 1 bar",), **replace})


# --------------------------------------------------------------------------- format_date


@pytest.mark.parametrize("stamp, text", [
    (pd.Timestamp("2024-01-02"), "2024-01-02"),  # midnight: the date alone
    (pd.Timestamp("2024-01-02 15:30"), "2024-01-02 15:30:00"),
    (pd.Timestamp("2024-01-02 00:00:00.5"), "2024-01-02 00:00:00.500000"),  # not midnight
    (pd.Timestamp("2024-01-02", tz="UTC"), "2024-01-02"),
    (pd.Timestamp("2024-01-02 15:30", tz="UTC"), "2024-01-02 15:30:00+00:00"),
    # Past year 9999 (strftime refuses it): 4,096 worlds of 580 bars numbered as
    # business days from 2000 end there.
    (pd.date_range("2000-01-03", periods=4096 * 580, freq="B")[-1], "11106-02-23"),
])
def test_format_date_drops_midnight_and_keeps_any_time_of_day(stamp, text):
    assert format_date(stamp) == text


@pytest.mark.parametrize("stamp", [
    pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-02 09:30"),
    pd.Timestamp("2024-01-02 23:59:59.25"), pd.Timestamp("1999-12-31"),
])
def test_parse_date_reads_what_format_date_writes(stamp):
    assert parse_date(format_date(stamp)) == stamp


# ---------------------------------------------------------------------------- parse_date


@pytest.mark.parametrize("text, stamp", [
    ("2024-01-02", "2024-01-02"),
    ("2024-01-02T15:30", "2024-01-02 15:30"),
    ("2024-01-02 00:00:00.5", "2024-01-02 00:00:00.5"),
    ("20240102", "2024-01-02"),
    ("1/2/2024 10:00", "2024-01-02 10:00"),  # month first, as pandas reads slashes
    (" 2024-01-02 ", "2024-01-02"),
    (dt.date(2024, 1, 2), "2024-01-02"),  # TOML date literals arrive as dates
    (dt.datetime(2024, 1, 2, 9, 30), "2024-01-02 09:30"),
    (np.datetime64("2024-01-02"), "2024-01-02"),
    (pd.Timestamp("2024-01-02 09:30"), "2024-01-02 09:30"),
])
def test_parse_date_accepts_dates_as_users_give_them(text, stamp):
    got = parse_date(text)
    assert isinstance(got, pd.Timestamp) and got.tz is None
    assert got == pd.Timestamp(stamp)


@pytest.mark.parametrize("text", [
    "2024-01-02 09:30-05:00",
    "2024-01-02T14:30:00Z",
    pd.Timestamp("2024-01-02 09:30", tz="America/New_York"),
    pd.Timestamp("2024-01-02 15:30", tz="Europe/Berlin"),
])
def test_parse_date_converts_a_time_zone_to_naive_utc(text):
    """The loader stores bars as naive UTC: 09:30 in New York (winter, UTC-5) is 14:30."""
    got = parse_date(text)
    assert got.tz is None and got == pd.Timestamp("2024-01-02 14:30")


def test_parse_date_keeps_a_summer_offset():
    assert parse_date("2024-07-01 09:30-04:00") == pd.Timestamp("2024-07-01 13:30")
    assert parse_date(pd.Timestamp("2024-07-01 09:30", tz="America/New_York")) == (
        pd.Timestamp("2024-07-01 13:30"))


@pytest.mark.parametrize("text", [
    "not a date", "yesterday", "", "NaT", None, float("nan"), np.datetime64("NaT"),
    "2024-13-01", "2024-02-30", "2023-02-29", "2024-01-02 25:00", [2024, 1, 2], {},
    b"2024-01-02",
])
def test_parse_date_is_none_for_what_is_not_a_date(text):
    assert parse_date(text) is None


def test_parse_date_reads_a_leap_day_and_far_dates():
    assert parse_date("2024-02-29") == pd.Timestamp("2024-02-29")
    # Beyond the nanosecond range (1677..2262): pandas keeps them at a coarser unit.
    assert parse_date("3000-01-01").year == 3000
    assert parse_date("1600-01-01").year == 1600


# --------------------------------------------------------------------------------- Panel


def test_data_error_is_a_value_error():
    """Callers (the CLIs) catch ValueError for one-line data errors."""
    assert issubclass(DataError, ValueError)
    with pytest.raises(ValueError, match="^bad bars$"):
        raise DataError("bad bars")


def test_panel_sizes_and_fields():
    panel = make_panel()
    assert (panel.n_bars, panel.n_assets) == (5, 2)
    assert panel.symbols == SYMBOLS and panel.dates.equals(DATES)
    assert panel.close[3, 1] == pytest.approx(400.0 + 3.1)
    assert FIELDS == ("open", "high", "low", "close", "volume", "adj_close")
    with pytest.raises(dataclasses.FrozenInstanceError):
        panel.source = "elsewhere"


@pytest.mark.parametrize("name", FIELDS)
@pytest.mark.parametrize("shape", [(5, 3), (4, 2), (5,), (2, 5)])
def test_panel_refuses_a_field_of_another_shape(name, shape):
    with pytest.raises(ValueError, match=rf"^Panel\.{name} has shape {re.escape(str(shape))}, "
                                         rf"expected \(5, 2\)$"):
        make_panel(**{name: np.ones(shape)})


def test_panel_shape_follows_dates_and_symbols():
    """The expected shape is (len(dates), len(symbols)): a symbol too many is refused too."""
    with pytest.raises(ValueError, match=r"^Panel\.open has shape \(5, 2\), expected \(5, 3\)$"):
        make_panel(symbols=("AAA", "BBB", "CCC"))
    with pytest.raises(ValueError, match=r"expected \(4, 2\)$"):
        make_panel(dates=DATES[:4])
    empty = make_panel(n_bars=0)
    assert (empty.n_bars, empty.n_assets) == (0, 2)


def test_slice_keeps_rows_start_to_stop_of_every_field():
    panel = make_panel()
    part = panel.slice(1, 4)
    assert part.n_bars == 3 and part.dates.equals(DATES[1:4])
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(part, name), getattr(panel, name)[1:4])
    # What does not vary over bars is kept; the original is untouched.
    assert (part.symbols, part.source, part.report) == (panel.symbols, "test", ("filled 1 bar",))
    assert panel.n_bars == 5


@pytest.mark.parametrize("start, stop, dates", [
    (0, 5, DATES),
    (3, 5, DATES[3:]),
    (2, 2, DATES[:0]),  # empty
    (3, 1, DATES[:0]),  # stop before start: empty, as Python slices
    (4, 99, DATES[4:]),  # stop past the end is clipped
    (-2, 5, DATES[3:]),  # counted from the end (the policy's last `window` bars)
])
def test_slice_follows_python_slicing(start, stop, dates):
    part = make_panel().slice(start, stop)
    assert part.dates.equals(dates)
    assert part.close.shape == (len(dates), 2)

"""The aligned price panel every data source produces (host-side, numpy)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

FIELDS = ("open", "high", "low", "close", "volume", "adj_close")


def format_date(stamp: pd.Timestamp) -> str:
    """A timestamp for messages: the date alone at midnight, else with its time of day."""
    # Not strftime: it refuses years past 9999, which a large pool of worlds reaches (its
    # bars are numbered as business days from 2000).
    day = f"{stamp.year:04d}-{stamp.month:02d}-{stamp.day:02d}"
    return day if stamp == stamp.normalize() else str(stamp)


def parse_date(text) -> pd.Timestamp | None:
    """`text` (a date or timestamp, as a user types it) as a naive Timestamp in UTC, as the
    loader stores bars (a time zone is converted, then dropped), or None when it is not
    one."""
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        return None
    if pd.isna(stamp):
        return None
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tz is not None else stamp


class DataError(ValueError):
    """Bad market data or data options; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class Panel:
    """Bars aligned on one date index for every symbol (host-side, numpy).

    Attributes:
      dates: sorted, unique, tz-naive timestamps of the bars, length T.
      symbols: asset names, length A, in column order.
      open, high, low, close: raw prices, float64 [T, A], all finite and > 0.
      volume: traded volume, float64 [T, A], finite and >= 0 (0 on filled bars).
      adj_close: the price series returns are computed from, float64 [T, A]:
        the vendor's adjusted close when the source had one, else `close`.
      source: where the bars came from (a path or "synthetic(...)"), for messages.
      report: human-readable lines on what alignment dropped or filled.
    """

    dates: pd.DatetimeIndex
    symbols: tuple[str, ...]
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    adj_close: np.ndarray
    source: str = ""
    report: tuple[str, ...] = ()

    def __post_init__(self):
        shape = (len(self.dates), len(self.symbols))
        for name in FIELDS:
            arr = getattr(self, name)
            if arr.shape != shape:
                raise ValueError(f"Panel.{name} has shape {arr.shape}, expected {shape}")

    @property
    def n_bars(self) -> int:
        return len(self.dates)

    @property
    def n_assets(self) -> int:
        return len(self.symbols)

    def slice(self, start: int, stop: int) -> Panel:
        """Rows [start, stop) of the panel."""
        return dataclasses.replace(
            self,
            dates=self.dates[start:stop],
            **{name: getattr(self, name)[start:stop] for name in FIELDS},
        )

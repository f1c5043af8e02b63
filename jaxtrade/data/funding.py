"""Funding-rate arbitrage data: hourly perpetual-swap prices, funding rates and volumes of
S symbols on E exchanges, as a `FundingPanel` (host-only: numpy and pandas, no JAX).

Sources:
  * `synthetic_funding(FundingSynthConfig(...))`: a seeded generator, nothing downloaded;
  * `load_funding(path)`: the predecessor system's hourly opportunity table (CSV or
    Parquet, or the same table as a pandas DataFrame), one row per (hour, symbol, long
    exchange, short exchange);
  * `opportunities(panel)` writes that table from a panel (`load_funding` reads it back).

Conventions (the funding env reads the panel with these):
  * A funding rate is a fraction per settlement of the exchange's own interval
    (0.0001 = 0.01 % per 8 h on an 8 h venue, per hour on a 1 h venue). At a settlement a
    position of notional N (quote currency) pays N * rate when long and receives it when
    short: with a positive rate longs pay shorts.
  * Settlement hours: exchange e settles at hour h when `times[h].hour % interval_hours[e]
    == 0`: 00:00, 08:00 and 16:00 UTC on an 8 h venue, every hour on a 1 h venue
    (`settlement_mask`). Intervals divide 24, so every day has the same settlements.
  * `rate[h]` is the rate in force at hour h (the rate the exchange shows then, for its
    next settlement strictly after h). It moves hourly; what settles at a settlement hour
    t is the last rate in force before it, `rate[t - 1]`: the payment at t is
    N * rate[t - 1, s, e] (as the funding env settles).
  * A hedged pair (long on exchange l, short on exchange h, equal notional) receives the
    short leg's rate at the short exchange's settlements and pays the long leg's at the
    long exchange's; `fund_apr` is the net in percent per year:
    100 * (rate_short * 8760 / interval_short - rate_long * 8760 / interval_long).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from jaxtrade.data.panel import DataError, format_date

HOURS_PER_YEAR = 8760.0
# The opportunity table: the predecessor's ten columns, then the loader's two extensions.
COLUMNS = (
    "entry_time",
    "symbol",
    "long_exchange",
    "short_exchange",
    "entry_long_price",
    "entry_short_price",
    "long_funding_rate",
    "short_funding_rate",
    "fund_apr",
    "volume_24h",
)
INTERVAL_COLUMNS = ("long_interval_hours", "short_interval_hours")
_TEXT_COLUMNS = ("entry_time", "symbol", "long_exchange", "short_exchange")
DEFAULT_INTERVAL = 8  # hours, when a table has no interval columns (most venues)
# Exchanges cap funding at a few percent per settlement; a larger magnitude is a unit
# error (percent or basis points written where a fraction belongs).
MAX_ABS_RATE = 0.05
# fund_apr (percent per year) must match the rates within ABS + REL * |recomputed|: loose
# enough for a fund_apr rounded to 2 decimals or rates given to 5 significant digits,
# tight enough to catch a sign flip, a missing * 100, rates in percent or a wrong interval.
APR_ABS_TOL = 0.05
APR_REL_TOL = 0.01
MAX_CELLS = 200_000_000  # hours x symbols x exchanges a loaded panel may have (1.6 GB a field)
_ISO_HELP = "expected ISO 8601 like 2024-01-01 08:00[:00], optionally with +00:00 or Z"


# --- the panel -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FundingPanel:
    """Hourly funding-rate data of S symbols on E exchanges (host-side numpy).

    See the module docstring for the settlement and payment conventions.

    Attributes:
      times: [T] hourly, tz-naive UTC, sorted, unique, consecutive hours.
      symbols: [S] symbol names, in axis-1 order.
      exchanges: [E] exchange names, in axis-2 order.
      price: float64 [T, S, E] mark price at the hour, quote currency; NaN where not listed.
      rate: float64 [T, S, E] funding rate per settlement (fraction: 0.0001 = 0.01 %), the
        rate in force at the hour (it settles at the exchange's next settlement hour after
        it: rate[t - 1] is what settles at hour t); NaN where not listed.
      volume: float64 [T, S, E] 24 h volume in quote currency; NaN where not listed.
      listed: bool [T, S, E], True where price, rate and volume are finite.
      interval_hours: int64 [E] each exchange's funding interval in hours (divides 24).
      source: one line for logs (a path or "synthetic_funding(...)").
    """

    times: pd.DatetimeIndex
    symbols: tuple[str, ...]
    exchanges: tuple[str, ...]
    price: np.ndarray
    rate: np.ndarray
    volume: np.ndarray
    listed: np.ndarray
    interval_hours: np.ndarray
    source: str = ""

    def __post_init__(self):
        shape = (len(self.times), len(self.symbols), len(self.exchanges))
        for name in ("price", "rate", "volume", "listed"):
            arr = getattr(self, name)
            if arr.shape != shape:
                raise ValueError(f"FundingPanel.{name} has shape {arr.shape}, expected {shape}")
        if self.listed.dtype != np.bool_:
            raise ValueError(f"FundingPanel.listed has dtype {self.listed.dtype}, expected bool")
        for name in ("price", "rate", "volume"):
            if not np.array_equal(np.isfinite(getattr(self, name)), self.listed):
                raise ValueError(f"FundingPanel.{name} is not finite exactly where listed")
        if self.interval_hours.shape != (shape[2],):
            raise ValueError(
                f"FundingPanel.interval_hours has shape {self.interval_hours.shape}, "
                f"expected ({shape[2]},)"
            )
        _check_intervals(self.interval_hours)
        steps = np.diff(self.times.values)
        if self.times.tz is not None or (steps != np.timedelta64(1, "h")).any():
            raise ValueError("FundingPanel.times must be consecutive tz-naive hours")

    @property
    def n_hours(self) -> int:
        return len(self.times)

    @property
    def n_symbols(self) -> int:
        return len(self.symbols)

    @property
    def n_exchanges(self) -> int:
        return len(self.exchanges)

    @property
    def settles(self) -> np.ndarray:
        """bool [T, E]: exchange e settles funding at hour t (`settlement_mask`)."""
        return settlement_mask(self.times, self.interval_hours)

    def slice(self, lo: int, hi: int) -> FundingPanel:
        """Hours [lo, hi) of the panel (settlement hours stay those of the clock)."""
        return dataclasses.replace(
            self,
            times=self.times[lo:hi],
            **{name: getattr(self, name)[lo:hi] for name in ("price", "rate", "volume", "listed")},
        )


def _check_intervals(interval_hours: np.ndarray) -> None:
    bad = [int(h) for h in np.asarray(interval_hours).ravel() if h < 1 or 24 % h]
    if bad:
        raise ValueError(f"funding intervals must be whole hours dividing 24, got {bad}")


def settlement_mask(times: pd.DatetimeIndex, interval_hours) -> np.ndarray:
    """bool [T, E]: True where exchange e settles at hour t (hour of day % interval == 0).

    Args:
      times: [T] tz-naive UTC hours.
      interval_hours: int [E] funding intervals in hours (each divides 24).
    """
    hour = np.asarray(times.hour, dtype=np.int64)
    return hour[:, None] % np.asarray(interval_hours, dtype=np.int64)[None, :] == 0


def annualised(rate, interval_hours):
    """A funding rate per settlement of `interval_hours` as a rate per year (fraction).

    rate * 8760 / interval_hours; broadcasts like numpy, and works on numpy and JAX arrays
    alike (the env computes it inside its step).
    """
    return rate * HOURS_PER_YEAR / interval_hours


def fund_apr(long_rate, short_rate, long_interval, short_interval):
    """The reference's fund_apr: what a hedged pair earns, in percent per year.

    100 * (annualised(short_rate, short_interval) - annualised(long_rate, long_interval)):
    the short leg receives its rate, the long leg pays its own. Broadcasts like numpy.
    """
    return 100.0 * (annualised(short_rate, short_interval) - annualised(long_rate, long_interval))


# --- synthetic data ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FundingSynthConfig:
    """Settings of `synthetic_funding`; rates and levels are per 8 h unless said otherwise."""

    n_symbols: int = 24  # perpetuals SYN00, SYN01, ...; each listed on >= 2 exchanges
    n_days: int = 120  # length: 24 * n_days hours
    seed: int = 0  # same seed, same data
    start: str = "2024-01-01"  # first hour, UTC (midnight: 8 h venues settle at 0, 8, 16)
    exchanges: tuple[str, ...] = ("binance", "bybit", "gate", "hyperliquid", "okx")
    interval_hours: tuple[int, ...] = (8, 8, 8, 1, 8)  # each exchange's funding interval
    late_listing_prob: float = 0.1  # chance a listing beyond a symbol's first two starts late
    annual_vol: tuple[float, float] = (0.4, 1.2)  # range of per-symbol annual price volatility
    basis_bps: float = 5.0  # stationary sd of an exchange's price basis to the symbol, bp
    basis_half_life: float = 4.0  # hours for a basis deviation to halve
    rate_level: float = 1e-4  # mean funding in a positive regime (0.01 % per 8 h)
    negative_level: float = 1e-4  # mean funding in a negative regime is -negative_level
    positive_hours: float = 240.0  # mean length of a symbol's positive regime, hours
    negative_hours: float = 48.0  # mean length of a negative regime (a sign flip), hours
    offset_sd: float = 3e-5  # sd of a (symbol, exchange)'s constant offset to the level
    rate_sd: float = 5e-5  # stationary sd of the mean-reverting noise
    rate_half_life: float = 24.0  # hours for a rate deviation to halve
    spike_rate: float = 1.0 / 720  # spikes per (symbol, exchange) per hour (~1 a month)
    spike_size: float = 1e-3  # mean absolute jump of a spike (exponential)
    spike_half_life: float = 8.0  # hours for a spike to halve
    max_abs_rate: float = 0.02  # rates are clipped to +-this (the loader refuses > 0.05)
    volume_level: float = 2e7  # median 24 h volume of a listing, quote currency
    volume_dispersion: float = 1.5  # sd of log volume level across (symbol, exchange)
    volume_noise: float = 0.2  # stationary sd of log volume around its level
    volume_half_life: float = 24.0  # hours for a log volume deviation to halve

    def __post_init__(self):
        checks = {
            "n_symbols": self.n_symbols >= 1,
            "n_days": self.n_days >= 1,
            "exchanges": len(self.exchanges) >= 2 and len(set(self.exchanges)) == len(
                self.exchanges
            ),
            "interval_hours": len(self.interval_hours) == len(self.exchanges)
            and all(h >= 1 and 24 % h == 0 for h in self.interval_hours),
            "late_listing_prob": 0 <= self.late_listing_prob <= 1,
            "annual_vol": 0 <= self.annual_vol[0] <= self.annual_vol[1],
            "basis_half_life": self.basis_half_life > 0,
            "rate_half_life": self.rate_half_life > 0,
            "spike_half_life": self.spike_half_life > 0,
            "volume_half_life": self.volume_half_life > 0,
            "positive_hours": self.positive_hours >= 1,
            "negative_hours": self.negative_hours >= 1,
            "spike_rate": 0 <= self.spike_rate <= 1,
            "max_abs_rate": 0 < self.max_abs_rate <= MAX_ABS_RATE,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            raise ValueError(f"invalid synthetic funding setting: {values}")


def _phi(half_life: float) -> float:
    """Hourly AR(1) coefficient of a process whose deviations halve in `half_life` hours."""
    return 0.5 ** (1.0 / half_life)


def synthetic_funding(cfg: FundingSynthConfig = FundingSynthConfig()) -> FundingPanel:
    """A seeded synthetic `FundingPanel` (host-only; the same cfg gives the same panel).

    The model, per hour t, symbol s, exchange e:
      * Listings: symbol s is on a random subset of k ~ U{2..E} exchanges. Its first two
        are listed throughout; each further one, with probability `late_listing_prob`,
        starts at a random hour in the first half (NaN before). So every symbol has >= 2
        listings at every hour and every leg appears in `opportunities(panel)`.
      * Price: a base GBM per symbol (annual volatility uniform in `annual_vol`, start
        log-uniform in [0.1, 50000]) times (1 + basis[t, s, e]), the basis an OU process
        with sd `basis_bps` bp and half-life `basis_half_life` h.
      * Funding, per 8 h: regime level + offset + OU noise + spikes, clipped to
        +-`max_abs_rate`. The regime is a per-symbol two-state Markov chain: +`rate_level`
        (mean `positive_hours` h) or -`negative_level` (mean `negative_hours` h; the sign
        flips). The offset is constant per (s, e) with sd `offset_sd`, so some venues pay
        persistently more. The noise is an OU process with sd `rate_sd` and half-life
        `rate_half_life` h. Spikes arrive with probability `spike_rate` per hour,
        exponential size `spike_size`, sign the regime's with probability 0.75, and decay
        with half-life `spike_half_life` h. A venue with interval i h gets i / 8 of it
        (a 1 h venue's rates are about an eighth of an 8 h venue's).
      * Volume: lognormal, level per (s, e) around `volume_level` (log sd
        `volume_dispersion`), times an OU log noise (sd `volume_noise`, half-life
        `volume_half_life` h).
    """
    rng = np.random.default_rng(cfg.seed)
    n_t, n_s, n_e = 24 * cfg.n_days, cfg.n_symbols, len(cfg.exchanges)
    shape = (n_t, n_s, n_e)

    listed = np.zeros(shape, dtype=bool)
    for s in range(n_s):
        order = rng.permutation(n_e)[: rng.integers(2, n_e + 1)]
        for rank, e in enumerate(order):
            late = rank >= 2 and rng.random() < cfg.late_listing_prob
            listed[rng.integers(1, max(2, n_t // 2)) if late else 0 :, s, e] = True

    sigma = rng.uniform(*cfg.annual_vol, n_s) / np.sqrt(HOURS_PER_YEAR)
    log_base = rng.uniform(np.log(0.1), np.log(50_000.0), n_s)
    steps = sigma * rng.standard_normal((n_t, n_s)) - 0.5 * sigma**2
    steps[0] = 0.0
    base = np.exp(log_base + np.cumsum(steps, axis=0))

    # Regimes: +1 positive funding, -1 negative.
    leave = rng.random((n_t, n_s))
    regime = np.empty((n_t, n_s))
    p_neg = cfg.negative_hours / (cfg.positive_hours + cfg.negative_hours)
    regime[0] = np.where(rng.random(n_s) < p_neg, -1.0, 1.0)
    for t in range(1, n_t):  # host-side, once per panel
        p_leave = np.where(regime[t - 1] > 0, 1 / cfg.positive_hours, 1 / cfg.negative_hours)
        regime[t] = np.where(leave[t] < p_leave, -regime[t - 1], regime[t - 1])
    level = np.where(regime > 0, cfg.rate_level, -cfg.negative_level)[:, :, None]
    offset = cfg.offset_sd * rng.standard_normal((n_s, n_e))

    jump_sign = np.where(rng.random(shape) < 0.75, 1.0, -1.0) * np.sign(regime)[:, :, None]
    jumps = (rng.random(shape) < cfg.spike_rate) * rng.exponential(cfg.spike_size, shape)
    jumps *= jump_sign

    processes = {  # name: (AR(1) coefficient, stationary sd, innovations [T, S, E])
        "basis": (_phi(cfg.basis_half_life), 1e-4 * cfg.basis_bps, rng.standard_normal(shape)),
        "noise": (_phi(cfg.rate_half_life), cfg.rate_sd, rng.standard_normal(shape)),
        "volume": (_phi(cfg.volume_half_life), cfg.volume_noise, rng.standard_normal(shape)),
    }
    paths = {}
    for name, (phi, sd, z) in processes.items():
        z[0] *= sd
        z[1:] *= sd * np.sqrt(1.0 - phi**2)
        paths[name] = z
    spike = jumps
    for t in range(1, n_t):  # host-side, once per panel
        for name, (phi, _, _) in processes.items():
            paths[name][t] += phi * paths[name][t - 1]
        spike[t] += _phi(cfg.spike_half_life) * spike[t - 1]

    scale = np.asarray(cfg.interval_hours, dtype=np.float64) / 8.0
    rate_8h = np.clip(level + offset + paths["noise"] + spike, -cfg.max_abs_rate, cfg.max_abs_rate)
    rate = rate_8h * scale
    price = base[:, :, None] * (1.0 + paths["basis"])
    volume_level = np.log(cfg.volume_level) + cfg.volume_dispersion * rng.standard_normal(
        (n_s, n_e)
    )
    volume = np.exp(volume_level + paths["volume"])

    times = pd.date_range(cfg.start, periods=n_t, freq="h")
    return FundingPanel(
        times=times,
        symbols=tuple(f"SYN{i:02d}" for i in range(n_s)),
        exchanges=tuple(cfg.exchanges),
        price=np.where(listed, price, np.nan),
        rate=np.where(listed, rate, np.nan),
        volume=np.where(listed, volume, np.nan),
        listed=listed,
        interval_hours=np.asarray(cfg.interval_hours, dtype=np.int64),
        source=(
            f"synthetic_funding(seed={cfg.seed}, n_symbols={n_s}, n_days={cfg.n_days}, "
            f"exchanges={','.join(cfg.exchanges)})"
        ),
    )


# --- the opportunity table -----------------------------------------------------------


def opportunities(panel: FundingPanel, min_apr: float = 0.0) -> pd.DataFrame:
    """The reference's opportunity table of `panel` (host-only).

    One row per (hour, symbol, long exchange, short exchange) with both legs listed and
    fund_apr > min_apr, ordered by hour, symbol, long and short exchange (panel order).
    With min_apr=0 every listed leg of a symbol on >= 2 exchanges still appears (of two
    legs with different annualised rates one direction is positive); min_apr=-inf gives
    both directions of every pair.

    Columns: entry_time (datetime64, UTC), symbol, long_exchange, short_exchange,
    entry_long_price, entry_short_price (quote currency), long_funding_rate,
    short_funding_rate (fraction per settlement of the leg's exchange), fund_apr (percent
    per year, `fund_apr`), volume_24h (quote currency, the smaller of the two legs'), and
    the loader's extension to the reference's ten: long_interval_hours,
    short_interval_hours (int).
    """
    listed = panel.listed
    annual = annualised(panel.rate, panel.interval_hours)  # [T, S, E], NaN where not listed
    apr = 100.0 * (annual[:, :, None, :] - annual[:, :, :, None])  # [T, S, long, short]
    both = listed[:, :, :, None] & listed[:, :, None, :]
    both &= ~np.eye(panel.n_exchanges, dtype=bool)
    with np.errstate(invalid="ignore"):
        keep = both & (apr > min_apr)
    t, s, lo, sh = np.nonzero(keep)
    intervals = panel.interval_hours
    return pd.DataFrame(
        {
            "entry_time": panel.times[t],
            "symbol": np.asarray(panel.symbols, dtype=object)[s],
            "long_exchange": np.asarray(panel.exchanges, dtype=object)[lo],
            "short_exchange": np.asarray(panel.exchanges, dtype=object)[sh],
            "entry_long_price": panel.price[t, s, lo],
            "entry_short_price": panel.price[t, s, sh],
            "long_funding_rate": panel.rate[t, s, lo],
            "short_funding_rate": panel.rate[t, s, sh],
            "fund_apr": apr[t, s, lo, sh],
            "volume_24h": np.minimum(panel.volume[t, s, lo], panel.volume[t, s, sh]),
            "long_interval_hours": intervals[lo].astype(np.int64),
            "short_interval_hours": intervals[sh].astype(np.int64),
        }
    )


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write an opportunity table as CSV or Parquet, by `path`'s suffix (host-only).

    CSV floats are written in full precision, so `load_funding` reads them back exactly.
    """
    path = Path(path)
    kind = _kind(path)
    if kind == "csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path, index=False)


# --- loading -------------------------------------------------------------------------


def load_funding(path: str | Path | pd.DataFrame) -> FundingPanel:
    """Read an hourly opportunity table (CSV or Parquet, by suffix; or a DataFrame of the
    same columns) into a `FundingPanel`.

    Columns (header names are matched ignoring case and surrounding spaces; others are
    ignored): the reference's ten, entry_time, symbol, long_exchange, short_exchange,
    entry_long_price, entry_short_price, long_funding_rate, short_funding_rate, fund_apr,
    volume_24h (see `opportunities` for units), and optionally long_interval_hours and
    short_interval_hours (8 where absent; each exchange must have one interval).

    Each row gives two legs at entry_time: (symbol, long_exchange) with the long price and
    rate, (symbol, short_exchange) with the short ones. entry_time is ISO 8601, on the
    hour; times without an offset are UTC, times with one are converted to UTC (a table
    does not mix the two). The panel's times are every hour from the first row's to the last's;
    symbols and exchanges are sorted. A leg with no row at an hour is not listed then
    (NaN). A leg's volume is the largest volume_24h of its rows: volume_24h is the smaller
    of a pair's volumes, so this is exact for every leg but the busiest of its symbol at
    that hour, which gets the runner-up's volume (a lower bound).

    Raises:
      DataError: one line naming the file, the line (CSV: the header is line 1; Parquet:
        data row N, from 1) and the column of the first problem found: unreadable file,
        missing column, bad or mixed-offset time, time not on the hour, non-numeric,
        non-finite or non-positive price, non-finite rate or |rate| > 0.05 per settlement
        (beyond exchanges' caps: a unit error), fund_apr off the rates by more than
        0.05 + 1 % of it (percent per year), long exchange = short exchange, duplicate
        rows, one leg given two prices or rates, an interval not dividing 24 or two
        intervals for one exchange, no data rows. A DataFrame's problems name its row
        (from 1, in frame order): "DataFrame row N, column C".
    """
    if isinstance(path, pd.DataFrame):
        frame, unit, first_line = path.reset_index(drop=True), "row", 1
        path = "DataFrame"
    else:
        path = Path(path)
        frame, unit, first_line = _read(path)
    rows = _Rows(frame, path, unit, first_line)

    symbol = rows.text("symbol")
    long_ex, short_ex = rows.text("long_exchange"), rows.text("short_exchange")
    times = rows.times("entry_time")
    long_price = rows.number("entry_long_price", positive=True)
    short_price = rows.number("entry_short_price", positive=True)
    long_rate = rows.number("long_funding_rate", max_abs=MAX_ABS_RATE)
    short_rate = rows.number("short_funding_rate", max_abs=MAX_ABS_RATE)
    apr = rows.number("fund_apr")
    volume = rows.number("volume_24h", nonnegative=True)
    long_int, short_int = (rows.interval(column) for column in INTERVAL_COLUMNS)

    same = np.flatnonzero(long_ex == short_ex)
    if len(same):
        raise DataError(
            f"{rows.at(same[0], 'short_exchange')}: long_exchange and short_exchange are both "
            f"{long_ex[same[0]]!r}; a pair is two exchanges"
        )
    expected = fund_apr(long_rate, short_rate, long_int, short_int)
    off = np.abs(apr - expected) > APR_ABS_TOL + APR_REL_TOL * np.abs(expected)
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise DataError(
            f"{rows.at(i, 'fund_apr')}: {apr[i]:.6g} does not match the row's rates, "
            f"100 * (short_rate * 8760 / {short_int[i]} h - long_rate * 8760 / {long_int[i]} h)"
            f" = {expected[i]:.6g} % per year (tolerance {APR_ABS_TOL} + {APR_REL_TOL:.0%} "
            "of it); rates are fractions per settlement (0.0001 = 0.01 %)"
            + _more(off)
        )
    _check_duplicates(rows, times, symbol, long_ex, short_ex)

    legs = pd.DataFrame(
        {
            "time": np.concatenate([times, times]),
            "symbol": np.concatenate([symbol, symbol]),
            "exchange": np.concatenate([long_ex, short_ex]),
            "price": np.concatenate([long_price, short_price]),
            "rate": np.concatenate([long_rate, short_rate]),
            "volume": np.concatenate([volume, volume]),
            "interval": np.concatenate([long_int, short_int]),
            "row": np.concatenate([np.arange(rows.n)] * 2),
            "side": np.repeat([0, 1], rows.n),  # 0: the long leg's columns, 1: the short's
        }
    ).sort_values(["row", "side"], kind="stable", ignore_index=True)  # file order
    _check_intervals_per_exchange(rows, legs)
    axes = _axes(rows, legs)
    hours, symbols, exchanges = axes
    legs["t"] = (legs["time"] - hours[0]) // pd.Timedelta(hours=1)
    legs["s"] = pd.Index(symbols).get_indexer(legs["symbol"])
    legs["e"] = pd.Index(exchanges).get_indexer(legs["exchange"])
    legs["key"] = (legs["t"] * len(symbols) + legs["s"]) * len(exchanges) + legs["e"]
    _check_legs_agree(rows, legs)
    return _build(legs, axes, path, rows.n)


_LEG_COLUMNS = {  # what a leg's value is called in the file: [long leg's, short leg's]
    "exchange": ("long_exchange", "short_exchange"),
    "price": ("entry_long_price", "entry_short_price"),
    "rate": ("long_funding_rate", "short_funding_rate"),
    "interval": INTERVAL_COLUMNS,
    "time": ("entry_time", "entry_time"),
}


def _kind(path: Path) -> str:
    """"csv" or "parquet" by `path`'s suffix, else a DataError."""
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise DataError(f"{path}: unsupported file type; expected .csv, .csv.gz, .parquet or .pq")


def _read(path: Path) -> tuple[pd.DataFrame, str, int]:
    """The file's cells, what a row number counts ("line", "row") and the first row's."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected a .csv or .parquet file")
    kind = _kind(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty; expected a header line and data rows")
    try:
        if kind == "csv":
            # Names and times as text; numbers parsed by pandas, a column with a cell that is
            # not a number stays text for the checks to point at. Nothing is read as NaN, so
            # an empty cell keeps its column text too. skip_blank_lines=False keeps row i on
            # line i + 2 (blank rows are dropped later).
            header = pd.read_csv(path, nrows=0, index_col=False).columns
            text = {c: str for c in header if str(c).strip().lower() in _TEXT_COLUMNS}
            frame = pd.read_csv(
                path,
                dtype=text,
                keep_default_na=False,
                skip_blank_lines=False,
                index_col=False,
                low_memory=False,
            )
        else:
            frame = pd.read_parquet(path)
            if not isinstance(frame.index, pd.RangeIndex):
                frame = frame.reset_index()
    except (OSError, ValueError, pa.ArrowException) as err:
        detail = str(err).strip().splitlines()
        raise DataError(
            f"cannot read {path}: {detail[0] if detail else type(err).__name__}"
        ) from err
    return (frame, "line", 2) if kind == "csv" else (frame, "row", 1)


class _Rows:
    """A table's cells by canonical column, with where-from for messages."""

    def __init__(self, frame: pd.DataFrame, path: Path | str, unit: str, first_line: int):
        self.path, self.unit = path, unit
        by_key: dict[str, str] = {}
        for column in frame.columns:
            key = str(column).strip().lower()
            if key in by_key and key in (*COLUMNS, *INTERVAL_COLUMNS):
                raise DataError(
                    f"{self._header()}: columns {by_key[key]!r} and {column!r} are the same "
                    "column"
                )
            by_key.setdefault(key, column)
        missing = [name for name in COLUMNS if name not in by_key]
        if missing:
            raise DataError(
                f"{self._header()}: missing column(s) {', '.join(missing)}; found: "
                f"{', '.join(map(str, frame.columns))} (need {', '.join(COLUMNS)}; "
                f"{' and '.join(INTERVAL_COLUMNS)} optional)"
            )
        present = [name for name in (*COLUMNS, *INTERVAL_COLUMNS) if name in by_key]
        cells = frame[[by_key[name] for name in present]].set_axis(present, axis=1)
        self.lines = np.arange(len(cells)) + first_line
        blank = np.logical_and.reduce([_empty(cells[name]) for name in present])
        self.cells = cells[~blank].reset_index(drop=True)
        self.lines = self.lines[~blank]
        self.n = len(self.cells)
        if not self.n:
            raise DataError(f"{path}: no data rows" + (" below the header line" * (unit == "line")))

    def _header(self) -> str:
        return f"{self.path} line 1 (header)" if self.unit == "line" else str(self.path)

    def at(self, i: int, column: str) -> str:
        """Where row i's cell of `column` is, for messages: `file line N, column C`."""
        return f"{self.path} {self.unit} {self.lines[i]}, column {column}"

    def _first(self, bad: np.ndarray, column: str, problem) -> None:
        """Raise for the first True of `bad` [n]; `problem(i)` says what is wrong."""
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{self.at(i, column)}: {problem(i)}{_more(bad)}")

    def text(self, column: str) -> np.ndarray:
        """The column as stripped strings [n] (object); an empty cell raises."""
        cells = self.cells[column]
        self._first(_empty(cells), column, lambda i: "is empty")
        return cells.astype(str).str.strip().to_numpy(dtype=object)

    def number(
        self,
        column: str,
        *,
        positive: bool = False,
        nonnegative: bool = False,
        max_abs: float | None = None,
    ) -> np.ndarray:
        """The column as float64 [n], every value finite and in range, else a DataError."""
        cells = self.cells[column]
        if pd.api.types.is_numeric_dtype(cells) and not pd.api.types.is_bool_dtype(cells):
            values = cells.to_numpy(dtype=np.float64)  # NaN is "not finite" below
        else:
            self._first(_empty(cells), column, lambda i: "is empty")
            values = pd.to_numeric(cells.astype(str).str.strip(), errors="coerce").to_numpy(
                dtype=np.float64
            )
            text = cells.astype(str).str.strip()
            text_nan = text.str.lower().isin(["nan", "+nan", "-nan"]).to_numpy()
            shown = text.to_numpy(dtype=object)
            self._first(
                np.isnan(values) & ~text_nan,
                column,
                lambda i: f"{shown[i]!r} is not a number",
            )
        self._first(~np.isfinite(values), column, lambda i: f"{values[i]} is not finite")
        if positive:
            self._first(values <= 0, column, lambda i: f"{values[i]} is not > 0")
        if nonnegative:
            self._first(values < 0, column, lambda i: f"{values[i]} is negative")
        if max_abs is not None:
            self._first(
                np.abs(values) > max_abs,
                column,
                lambda i: (
                    f"|{values[i]}| > {max_abs} per settlement, beyond exchanges' funding "
                    "caps; rates are fractions (0.0001 = 0.01 %), not percent or basis points"
                ),
            )
        return values

    def interval(self, column: str) -> np.ndarray:
        """An interval column as int64 [n] (DEFAULT_INTERVAL when the table lacks it)."""
        if column not in self.cells:
            return np.full(self.n, DEFAULT_INTERVAL, dtype=np.int64)
        values = self.number(column)
        bad = (values < 1) | (values != np.round(values)) | (24 % np.maximum(values, 1) != 0)
        self._first(
            bad,
            column,
            lambda i: f"{values[i]:g} is not a whole number of hours dividing 24 "
            "(1, 2, 3, 4, 6, 8, 12 or 24)",
        )
        return values.astype(np.int64)

    def times(self, column: str) -> np.ndarray:
        """The column as datetime64[us] [n], naive UTC, every one on the hour."""
        cells = self.cells[column]
        self._first(_empty(cells), column, lambda i: "is empty")
        if pd.api.types.is_datetime64_any_dtype(cells):
            stamps = cells.dt.tz_convert("UTC").dt.tz_localize(None) if cells.dt.tz else cells
            stamps = stamps.dt.as_unit("us").to_numpy()
            shown = stamps.astype(str)
        else:
            shown = cells.astype(str).str.strip().to_numpy(dtype=object)
            inverse, unique = pd.factorize(shown)
            ok, aware, parsed = _parse_times(unique.astype(str))
            ok, aware = ok[inverse], aware[inverse]
            self._first(~ok, column, lambda i: f"{shown[i]!r} is not a time; {_ISO_HELP}")
            first = self.at(0, column).split(", column")[0]
            self._first(
                aware != aware[0],
                column,
                lambda i: (
                    f"{shown[i]!r} {'has a' if aware[i] else 'has no'} UTC offset but "
                    f"{first}'s {shown[0]!r} {'has one' if aware[0] else 'has none'}; write "
                    "every time one way (times without an offset are read as UTC)"
                ),
            )
            stamps = parsed[inverse]
        self._first(
            (stamps - stamps.astype("datetime64[h]")) != np.timedelta64(0, "us"),
            column,
            lambda i: f"{shown[i]!r} is not on the hour (an hourly table: minutes and "
            "seconds are 0)",
        )
        return stamps


def _empty(cells: pd.Series) -> np.ndarray:
    """bool [n]: the cell is missing or blank text."""
    missing = cells.isna().to_numpy()
    if pd.api.types.is_object_dtype(cells) or pd.api.types.is_string_dtype(cells):
        missing = missing | cells.astype(str).str.strip().eq("").to_numpy()
    return missing


def _parse_times(texts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ISO 8601 time strings [U] -> (parsed ok, had a UTC offset, naive UTC datetime64[us]).

    Where not ok, the time is NaT. Every string at once when they parse alike, else one
    by one (mixed offsets, bad strings).
    """
    # pandas also reads "now" and "today" as times; a table's times are written out.
    dated = pd.Series(texts).str.match(r"\d{4}-\d{2}-\d{2}").to_numpy()
    if dated.all():
        try:
            stamps = pd.DatetimeIndex(pd.to_datetime(texts, format="ISO8601"))
        except (ValueError, TypeError, OverflowError):
            stamps = None
        if stamps is not None and not stamps.isna().any():
            aware = stamps.tz is not None
            if aware:
                stamps = stamps.tz_convert("UTC").tz_localize(None)
            flags = np.full(len(texts), aware)
            return np.ones(len(texts), bool), flags, stamps.as_unit("us").to_numpy()
    ok, aware = np.zeros(len(texts), bool), np.zeros(len(texts), bool)
    out = np.full(len(texts), np.datetime64("NaT"), "datetime64[us]")
    for k, text in enumerate(texts):  # host-side, only for tables whose times differ
        if not dated[k]:
            continue
        try:
            stamp = pd.Timestamp(pd.to_datetime(text, format="ISO8601"))
        except (ValueError, TypeError, OverflowError):
            continue
        if pd.isna(stamp):
            continue
        ok[k], aware[k] = True, stamp.tz is not None
        if stamp.tz is not None:
            stamp = stamp.tz_convert("UTC").tz_localize(None)
        out[k] = stamp.as_unit("us").to_datetime64()
    return ok, aware, out


def _more(bad: np.ndarray) -> str:
    n = int(np.count_nonzero(bad)) - 1
    return f" (and {n} more such row{'s' if n > 1 else ''})" if n > 0 else ""


def _check_duplicates(rows: _Rows, times, symbol, long_ex, short_ex) -> None:
    """Raise if an (entry_time, symbol, long, short) row occurs twice, naming both lines."""
    keys = pd.DataFrame({"t": times, "s": symbol, "l": long_ex, "h": short_ex})
    repeated = keys.duplicated(keep=False).to_numpy()
    if not repeated.any():
        return
    i = int(np.flatnonzero(repeated)[0])
    j = int(np.flatnonzero(repeated & (keys == keys.iloc[i]).all(axis=1).to_numpy())[1])
    raise DataError(
        f"{rows.path} {rows.unit}s {rows.lines[i]} and {rows.lines[j]}, columns entry_time, "
        f"symbol, long_exchange, short_exchange: duplicate row for {symbol[i]} long "
        f"{long_ex[i]} short {short_ex[i]} at {format_date(pd.Timestamp(times[i]))}"
    )


def _leg_at(rows: _Rows, legs: pd.DataFrame, k: int, field: str) -> str:
    """`line N, column C` of leg k's `field` (long or short leg's column)."""
    column = _LEG_COLUMNS[field][legs["side"].iat[k]]
    return f"{rows.unit} {rows.lines[legs['row'].iat[k]]}, column {column}"


def _check_intervals_per_exchange(rows: _Rows, legs: pd.DataFrame) -> None:
    """Raise if one exchange is given two funding intervals, naming a line of each."""
    first = legs.drop_duplicates(["exchange", "interval"])
    second = first["exchange"].duplicated().to_numpy()
    if not second.any():
        return
    b = first.index[np.flatnonzero(second)[0]]
    a = first.index[first["exchange"] == legs["exchange"].iat[b]][0]
    raise DataError(
        f"{rows.path} {_leg_at(rows, legs, a, 'interval')} and "
        f"{_leg_at(rows, legs, b, 'interval')}: exchange {legs['exchange'].iat[a]!r} has "
        f"funding interval {legs['interval'].iat[a]} h on one and {legs['interval'].iat[b]} h "
        "on the other; an exchange has one interval"
    )


def _check_legs_agree(rows: _Rows, legs: pd.DataFrame) -> None:
    """Raise if one leg (hour, symbol, exchange) has two prices or two rates."""
    order = np.argsort(legs["key"].to_numpy(), kind="stable")  # file order within a leg
    key = legs["key"].to_numpy()[order]
    same = key[1:] == key[:-1]
    for field, rtol, atol in (("price", 1e-9, 0.0), ("rate", 1e-9, 1e-12)):
        values = legs[field].to_numpy()[order]
        differ = same & ~np.isclose(values[1:], values[:-1], rtol=rtol, atol=atol)
        if differ.any():
            k = int(np.flatnonzero(differ)[0])
            a, b = order[k], order[k + 1]
            what = "price" if field == "price" else "funding rate"
            raise DataError(
                f"{rows.path} {_leg_at(rows, legs, a, field)} and "
                f"{_leg_at(rows, legs, b, field)}: {legs['symbol'].iat[a]} on "
                f"{legs['exchange'].iat[a]} at {format_date(pd.Timestamp(legs['time'].iat[a]))} "
                f"has {what} {float(legs[field].iat[a])!r} on one and "
                f"{float(legs[field].iat[b])!r} on the "
                f"other; a leg has one {what} an hour"
            )


def _axes(
    rows: _Rows, legs: pd.DataFrame
) -> tuple[pd.DatetimeIndex, tuple[str, ...], tuple[str, ...]]:
    """The panel's axes: every hour from the first leg's to the last's, sorted names."""
    times = pd.date_range(legs["time"].min(), legs["time"].max(), freq="h")
    symbols = tuple(sorted(legs["symbol"].unique()))
    exchanges = tuple(sorted(legs["exchange"].unique()))
    if len(times) * len(symbols) * len(exchanges) > MAX_CELLS:
        # A mistyped year would otherwise allocate gigabytes of NaN.
        first, last = legs["time"].idxmin(), legs["time"].idxmax()
        raise DataError(
            f"{rows.path} {_leg_at(rows, legs, first, 'time')} and "
            f"{_leg_at(rows, legs, last, 'time')}: the table spans {len(times)} hours "
            f"({format_date(times[0])} .. {format_date(times[-1])}) of {len(symbols)} symbols "
            f"on {len(exchanges)} exchanges, over {MAX_CELLS:.0e} panel cells; is a time "
            "mistyped?"
        )
    return times, symbols, exchanges


def _build(legs: pd.DataFrame, axes, path: Path | str, n_rows: int) -> FundingPanel:
    """The checked legs scattered onto the panel's [hours, symbols, exchanges]."""
    times, symbols, exchanges = axes
    t, s, e = (legs[name].to_numpy() for name in ("t", "s", "e"))
    shape = (len(times), len(symbols), len(exchanges))
    price, rate, volume = (np.full(shape, np.nan) for _ in range(3))
    price[t, s, e] = legs["price"].to_numpy()
    rate[t, s, e] = legs["rate"].to_numpy()
    np.fmax.at(volume, (t, s, e), legs["volume"].to_numpy())
    interval = legs.drop_duplicates("exchange").set_index("exchange")["interval"]
    return FundingPanel(
        times=times,
        symbols=symbols,
        exchanges=exchanges,
        price=price,
        rate=rate,
        volume=volume,
        listed=np.isfinite(price),
        interval_hours=interval.reindex(exchanges).to_numpy(dtype=np.int64),
        source=(
            f"{path}: {len(symbols)} symbols x {len(exchanges)} exchanges x {len(times)} hours "
            f"({format_date(times[0])} .. {format_date(times[-1])}) from {n_rows} rows"
        ),
    )


# --- splits --------------------------------------------------------------------------


def split_hours(
    n_hours: int, val_fraction: float = 0.2, test_fraction: float = 0.2
) -> tuple[int, int]:
    """Chronological split of `n_hours`: train [0, val_start), validation [val_start,
    test_start), test [test_start, n_hours).

    Each part gets round(fraction * n_hours) hours, at least 1 when its fraction is > 0
    (a fraction of 0 leaves that part empty); train gets the rest and must be non-empty.

    Returns:
      (val_start, test_start).

    Raises:
      DataError: on fractions outside [0, 1) or too few hours for non-empty parts.
    """
    if isinstance(n_hours, bool) or not isinstance(n_hours, int | np.integer) or n_hours < 1:
        raise DataError(f"split_hours: n_hours must be an integer >= 1, got {n_hours!r}")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise DataError(f"split_hours: {name} must be in [0, 1), got {value!r}")
    if val_fraction + test_fraction >= 1:
        raise DataError(
            f"split_hours: val_fraction + test_fraction = {val_fraction + test_fraction:g} "
            "leaves no hours to train on; keep it below 1"
        )
    n_val = max(round(val_fraction * n_hours), 1) if val_fraction > 0 else 0
    n_test = max(round(test_fraction * n_hours), 1) if test_fraction > 0 else 0
    if n_val + n_test >= n_hours:
        need = 1 + (val_fraction > 0) + (test_fraction > 0)
        raise DataError(
            f"split_hours: {n_hours} hours cannot be split into non-empty train, validation "
            f"and test parts with val_fraction={val_fraction:g}, test_fraction="
            f"{test_fraction:g} (train would get {n_hours - n_val - n_test}); need at least "
            f"{need} hours, or smaller fractions"
        )
    return n_hours - n_val - n_test, n_hours - n_test


# --- command line --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m jaxtrade.data.funding --out FILE`: write a synthetic opportunity table."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxtrade.data.funding",
        description="Write the synthetic funding-rate opportunity table (CSV or Parquet).",
    )
    parser.add_argument("--out", required=True, help="output file, .csv or .parquet")
    parser.add_argument("--seed", type=int, default=FundingSynthConfig.seed)
    parser.add_argument("--days", type=int, default=FundingSynthConfig.n_days)
    parser.add_argument("--symbols", type=int, default=FundingSynthConfig.n_symbols)
    parser.add_argument(
        "--min-apr",
        type=float,
        default=0.0,
        help="keep rows with fund_apr above this, percent per year (default 0: every "
        "listed leg still appears, so the file loads back to the whole panel)",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        _kind(out)
        cfg = FundingSynthConfig(n_symbols=args.symbols, n_days=args.days, seed=args.seed)
    except (DataError, ValueError) as err:
        parser.error(str(err))
    panel = synthetic_funding(cfg)
    table = opportunities(panel, min_apr=args.min_apr)
    write_table(table, out)
    print(
        f"wrote {len(table)} rows ({panel.n_symbols} symbols x {panel.n_exchanges} exchanges "
        f"x {panel.n_hours} hours, seed {cfg.seed}, fund_apr > {args.min_apr:g}) to {out} "
        f"({out.stat().st_size / 1e6:.2f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Panel -> `MarketData` (device arrays shared by every environment) and its train,
validation and test ranges."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
import pandas as pd
from flax import struct

from jaxtrade.data import features as feats
from jaxtrade.data.panel import FIELDS, DataError, Panel, format_date, parse_date
from jaxtrade.data.synthetic import SyntheticConfig, synthetic_panel


@struct.dataclass
class MarketData:
    """The arrays the environments read; one copy serves every env (broadcast, never vmapped).

    Row t is bar t of the trimmed panel (the first `feats.WINDOW` raw bars are dropped
    so every row is complete). `features[t]` and `scores[t]` use bars <= t only.
    `build_market` makes them numpy arrays on the host; they become device arrays where
    a program places them (`parallel.put_replicated`) or takes them as arguments.
    """

    features: jax.Array  # [T, A, F] float32, normalised features of bar t
    scores: jax.Array  # [T, A, 4] float32, raw factor scores of bar t (feats.SCORE_NAMES)
    price: jax.Array  # [T, A] float32, execution price of bar t (adjusted close)
    # [T, A] bool, the assets that exist at bar t: a pool of procedural worlds pads its
    # worlds' assets to a common A (`jaxtrade.worlds.pool_market`); None: all of them.
    asset_mask: jax.Array | None = None

    @property
    def n_bars(self) -> int:
        return self.price.shape[0]

    @property
    def n_assets(self) -> int:
        return self.price.shape[1]

    @property
    def n_features(self) -> int:
        return self.features.shape[2]


RANGES = ("train", "validation", "test")  # in date order; see `Market`


@dataclasses.dataclass(frozen=True)
class Market:
    """A `MarketData` plus the host-side facts about it: dates, symbols, ranges, statistics.

    Bars are split by date into three ranges: train [0, val_start), validation
    [val_start, test_start) and test [test_start, n_bars). Training episodes read train
    bars only, validation chooses (the best checkpoint, early stopping), the test range
    reports (`python -m jaxtrade.evaluate` alone reads it). A training run holds a market
    `without_test()`: its arrays end before the test range, which it knows by dates only.
    """

    data: MarketData
    dates: pd.DatetimeIndex  # [T]
    symbols: tuple[str, ...]  # [A]
    val_start: int  # first validation bar (== test_start when there is no validation range)
    test_start: int  # first test bar (== n_bars when there is no test range here)
    stats: feats.FeatureStats  # normalisation statistics, from the training range only
    bars_per_year: float  # for annualising metrics (about 252 for daily, 1,764 for US hourly)
    source: str = ""
    report: tuple[str, ...] = ()
    # The test range of a market cut by `without_test()`: {"start", "end", "bars"}.
    withheld_test: dict | None = None
    # A pool of procedural worlds laid end to end: each world's bars; episodes start and
    # end inside one world (`jaxtrade.worlds.pool_market`). None: one market.
    world_bars: int | None = None
    # A run's procedural worlds (`jaxtrade.worlds.RunWorlds`): this market is one of its
    # training pools, and `validation_pool` its validation worlds (validation walks them).
    worlds: Any = None
    validation_pool: Market | None = None

    @property
    def n_worlds(self) -> int:
        return 1 if self.world_bars is None else self.n_bars // self.world_bars

    @property
    def n_bars(self) -> int:
        return len(self.dates)

    @property
    def n_assets(self) -> int:
        return len(self.symbols)

    def bounds(self, name: str) -> tuple[int, int]:
        """Bars [lo, hi) of range `name` (one of `RANGES`) held here; lo == hi when empty."""
        lo, hi = {"train": (0, self.val_start), "validation": (self.val_start, self.test_start),
                  "test": (self.test_start, self.n_bars)}[name]
        return lo, hi

    def span(self, name: str) -> dict | None:
        """Range `name` as {"start", "end", "bars", "first", "last"}, or None when it is empty:
        start and end as `format_date` writes them (for people), first and last the exact
        timestamps of its first and last bar (for `span_bounds`). A withheld test range is
        known by these alone."""
        if name == "test" and self.withheld_test is not None:
            return dict(self.withheld_test)
        lo, hi = self.bounds(name)
        if hi <= lo:
            return None
        first, last = self.dates[lo], self.dates[hi - 1]
        return {"start": format_date(first), "end": format_date(last), "bars": hi - lo,
                "first": first.isoformat(), "last": last.isoformat()}

    def without_test(self) -> Market:
        """This market cut before its test range: what a training run may hold. Features
        are causal, so every kept bar is exactly as in the whole market."""
        if self.test_start == self.n_bars:
            return self
        cut = self.test_start
        data = jax.tree.map(lambda x: x[:cut], self.data)
        return dataclasses.replace(self, data=data, dates=self.dates[:cut],
                                   withheld_test=self.span("test"))

    def with_all_assets(self) -> Market:
        """This market with an asset mask in which every asset exists: the observation of a
        pool of worlds (a flag per asset), for a model trained on worlds to read it."""
        if self.data.asset_mask is not None:
            return self
        mask = np.ones(self.data.price.shape, bool)
        return dataclasses.replace(self, data=self.data.replace(asset_mask=mask))

    def describe(self) -> str:
        """One line for logs: the three ranges with their bars and dates."""

        def part(name: str) -> str:
            span = self.span(name)
            if span is None:
                return f"{name} none"
            return f"{name} {span['bars']} bars ({span['start']} .. {span['end']})"

        n_total = self.n_bars + (self.withheld_test or {}).get("bars", 0)
        return (f"{self.n_assets} assets x {n_total} bars; "
                + ", ".join(part(name) for name in RANGES)
                + f"; {self.bars_per_year:.0f} bars/year")


def span_bounds(dates: pd.DatetimeIndex, span: dict) -> tuple[int, int]:
    """Bars [first, last] (inclusive) of `dates` inside a range recorded by `Market.span`,
    matched on its exact first and last timestamps (a range that ends at midnight of an
    intraday day ends there, not at the end of that day)."""
    first = int(dates.searchsorted(pd.Timestamp(span["first"]), "left"))
    last = int(dates.searchsorted(pd.Timestamp(span["last"]), "right")) - 1
    return first, last


MARKET_FILE = "market.json"  # in a run directory: what evaluation and deployment need of it
MARKET_FORMAT = 2  # layout version of MARKET_FILE (2: train, validation and test ranges)


def market_record(market: Market) -> dict:
    """What evaluating or deploying a model trained on `market` needs to know of it (JSON-ready).

    The normalisation statistics (features of new data must be scaled as in training),
    the symbols in column order, and the train, validation and test date ranges (None
    when empty); dates as `format_date` writes them. A market of another kind (an env's
    own data, e.g. `jaxtrade.envs.funding.FundingMarket`) writes its own `record()`.
    """
    if not isinstance(market, Market):
        return market.record()
    return {
        "format": MARKET_FORMAT,
        "source": market.source,
        "symbols": list(market.symbols),
        "n_assets": market.n_assets,
        "bars_per_year": market.bars_per_year,
        "feature_window": feats.WINDOW,
        "stats": market.stats.to_dict(),
        **{name: market.span(name) for name in RANGES},
        # How to rebuild the run's worlds, and each validation and test world's settings.
        **({"worlds": market.worlds.record()} if market.worlds is not None else {}),
    }


def estimate_bars_per_year(dates: pd.DatetimeIndex) -> float:
    """Bars per calendar year, from the span of the dates (daily ~252, hourly US ~1,764)."""
    years = (dates[-1] - dates[0]) / pd.Timedelta(days=365.25)
    if len(dates) < 2 or years <= 0:
        return 252.0
    return (len(dates) - 1) / years


def _split_indices(dates: pd.DatetimeIndex, val_fraction: float, test_fraction: float,
                   split_dates) -> tuple[int, int]:
    """(val_start, test_start): from `split_dates` (first validation date, first test date)
    when given, else the last `test_fraction` of the bars are the test range and the
    `val_fraction` before them the validation range."""
    if split_dates is not None:
        if len(split_dates) != 2:
            raise DataError(f"split dates must be two dates (first validation, first test), "
                            f"got {split_dates!r}")
        stamps = [parse_date(text) for text in split_dates]
        for text, stamp in zip(split_dates, stamps, strict=True):
            if stamp is None:
                raise DataError(f"split date {text!r} is not a date")
        if stamps[0] > stamps[1]:
            raise DataError(f"split dates {split_dates[0]} (validation) and {split_dates[1]} "
                            f"(test) are out of order")
        val_start, test_start = (int(dates.searchsorted(x, side="left")) for x in stamps)
        return val_start, test_start
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise DataError(f"{name} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"val_fraction + test_fraction = {val_fraction + test_fraction:g} "
                        f"leaves no training bars")
    n = len(dates)
    test_start = n - int(round(test_fraction * n))
    return test_start - int(round(val_fraction * n)), test_start


def build_market(
    panel: Panel,
    *,
    episode_length: int = 256,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_dates=None,
    stats: feats.FeatureStats | None = None,
) -> Market:
    """Features, ranges and device arrays for a panel.

    Args:
      panel: aligned bars.
      episode_length: training episode length; the training range must hold one episode.
      val_fraction, test_fraction: shares of the (feature-complete) bars in the validation
        and test ranges, which come last, in that order.
      split_dates: (first validation date, first test date); overrides the fractions.
      stats: normalisation statistics to reuse (e.g. a trained model's); fitted on
        the training range when None.

    Raises:
      DataError: too few bars for the feature window plus one episode, or a bad split.
    """
    raw, scores = feats.compute(panel)
    w = feats.WINDOW
    n_usable = panel.n_bars - w
    # An episode of L steps starting at t0 >= 1 trades at bars t0..t0+L-1 and is
    # marked at t0+L, so the training range needs L + 2 complete bars.
    need = episode_length + 2
    if n_usable < need:
        raise DataError(
            f"{panel.source}: {panel.n_bars} aligned bars is too few: the {w}-bar feature "
            f"window plus one episode of {episode_length} steps needs at least {w + need} "
            f"(use more history or a shorter episode length)"
        )
    dates = panel.dates[w:]
    val_start, test_start = _split_indices(dates, val_fraction, test_fraction, split_dates)
    if val_start < need:
        raise DataError(
            f"{panel.source}: the training range has {val_start} complete bars "
            f"(up to the split at {dates[min(val_start, len(dates) - 1)]:%Y-%m-%d}); one "
            f"episode of {episode_length} steps needs {need}: move the split later, "
            f"hold out less, or shorten episodes"
        )
    for name, lo, hi in (("validation", val_start, test_start),
                         ("test", test_start, len(dates))):
        if 0 < hi - lo < 2:
            raise DataError(f"{panel.source}: the {name} range has fewer than 2 bars")

    raw, scores = raw[w:], scores[w:]
    if stats is None:
        stats = feats.fit_stats(raw[:val_start])
    elif stats.mean.shape != (raw.shape[-1],):
        raise DataError(f"normalisation statistics have {stats.mean.shape[0]} features, "
                        f"expected {raw.shape[-1]}")
    # Host (numpy) arrays: a run places them on its devices itself (`make_train`), after
    # cutting off what it may not hold (`Market.without_test`).
    data = MarketData(
        features=np.asarray(feats.normalize(raw, stats), np.float32),
        scores=np.asarray(scores, np.float32),
        price=np.asarray(panel.adj_close[w:], np.float32),
    )
    return Market(
        data=data,
        dates=dates,
        symbols=panel.symbols,
        val_start=val_start,
        test_start=test_start,
        stats=stats,
        bars_per_year=estimate_bars_per_year(dates),
        source=panel.source,
        report=panel.report,
    )


def load_market(
    path=None,
    *,
    symbols=None,
    start=None,
    end=None,
    max_fill: int = 5,
    synthetic: SyntheticConfig | None = None,
    **split,
) -> Market:
    """The user's data at `path` (see `jaxtrade.data.loader.load_panel`), or the embedded market.

    `split` takes the keyword arguments of `build_market` (episode_length,
    val_fraction, test_fraction, split_dates, stats).
    """
    if path is None:
        panel = synthetic_panel(synthetic or SyntheticConfig())
        if symbols is not None or start is not None or end is not None:
            panel = _subset(panel, symbols, start, end)
    else:
        from jaxtrade.data.loader import load_panel

        panel = load_panel(path, symbols=symbols, start=start, end=end, max_fill=max_fill)
    return build_market(panel, **split)


def _subset(panel: Panel, symbols, start, end) -> Panel:
    """Symbol and date selection on an in-memory panel (the synthetic one)."""
    cols = np.arange(panel.n_assets)
    if symbols is not None:
        unknown = [s for s in symbols if s not in panel.symbols]
        if unknown:
            raise DataError(
                f"{panel.source}: unknown symbol(s) {', '.join(unknown)}; "
                f"available: {', '.join(panel.symbols)}"
            )
        cols = np.array([panel.symbols.index(s) for s in symbols])
    lo = 0 if start is None else int(panel.dates.searchsorted(pd.Timestamp(start), "left"))
    hi = panel.n_bars if end is None else int(panel.dates.searchsorted(pd.Timestamp(end), "right"))
    if hi <= lo:
        raise DataError(
            f"{panel.source}: no bars between {start} and {end} "
            f"(available {panel.dates[0]} .. {panel.dates[-1]})"
        )
    sub = panel.slice(lo, hi)
    return dataclasses.replace(
        sub,
        symbols=tuple(panel.symbols[i] for i in cols),
        **{name: getattr(sub, name)[:, cols] for name in FIELDS},
    )

"""Panel -> `MarketData` (device arrays shared by every environment) and the train/eval split."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from flax import struct

from jaxtrade.data import features as feats
from jaxtrade.data.panel import FIELDS, DataError, Panel, format_date
from jaxtrade.data.synthetic import SyntheticConfig, synthetic_panel


@struct.dataclass
class MarketData:
    """The arrays the environments read; one copy serves every env (broadcast, never vmapped).

    Row t is bar t of the trimmed panel (the first `feats.WINDOW` raw bars are dropped
    so every row is complete). `features[t]` and `scores[t]` use bars <= t only.
    """

    features: jax.Array  # [T, A, F] float32, normalised features of bar t
    scores: jax.Array  # [T, A, 4] float32, raw factor scores of bar t (feats.SCORE_NAMES)
    price: jax.Array  # [T, A] float32, execution price of bar t (adjusted close)

    @property
    def n_bars(self) -> int:
        return self.price.shape[0]

    @property
    def n_assets(self) -> int:
        return self.price.shape[1]

    @property
    def n_features(self) -> int:
        return self.features.shape[2]


@dataclasses.dataclass(frozen=True)
class Market:
    """A `MarketData` plus the host-side facts about it: dates, symbols, split, statistics.

    Bars [0, train_end) are the training range, [train_end, n_bars) the held-out range.
    """

    data: MarketData
    dates: pd.DatetimeIndex  # [T]
    symbols: tuple[str, ...]  # [A]
    train_end: int  # index of the first held-out bar (== n_bars when nothing is held out)
    stats: feats.FeatureStats  # normalisation statistics, from the training range only
    bars_per_year: float  # for annualising metrics (about 252 for daily, 1,764 for US hourly)
    source: str = ""
    report: tuple[str, ...] = ()

    @property
    def n_bars(self) -> int:
        return len(self.dates)

    @property
    def n_assets(self) -> int:
        return len(self.symbols)

    @property
    def n_eval_bars(self) -> int:
        return self.n_bars - self.train_end

    def describe(self) -> str:
        """One line for logs."""

        def span(lo: int, hi: int) -> str:
            if hi <= lo:
                return "none"
            return f"{format_date(self.dates[lo])} .. {format_date(self.dates[hi - 1])}"

        return (
            f"{self.n_assets} assets x {self.n_bars} bars; train {self.train_end} bars "
            f"({span(0, self.train_end)}), held out {self.n_eval_bars} bars "
            f"({span(self.train_end, self.n_bars)}); {self.bars_per_year:.0f} bars/year"
        )


MARKET_FILE = "market.json"  # in a run directory: what evaluation and deployment need of it
MARKET_FORMAT = 1  # layout version of MARKET_FILE


def market_record(market: Market) -> dict:
    """What evaluating or deploying a model trained on `market` needs to know of it (JSON-ready).

    The normalisation statistics (features of new data must be scaled as in training),
    the symbols in column order, and the training and held-out date ranges (None when
    nothing is held out); dates as `format_date` writes them.
    """

    def span(lo: int, hi: int) -> dict | None:
        if hi <= lo:
            return None
        return {"start": format_date(market.dates[lo]), "end": format_date(market.dates[hi - 1]),
                "bars": hi - lo}

    return {
        "format": MARKET_FORMAT,
        "source": market.source,
        "symbols": list(market.symbols),
        "n_assets": market.n_assets,
        "bars_per_year": market.bars_per_year,
        "feature_window": feats.WINDOW,
        "stats": market.stats.to_dict(),
        "train": span(0, market.train_end),
        "held_out": span(market.train_end, market.n_bars),
    }


def estimate_bars_per_year(dates: pd.DatetimeIndex) -> float:
    """Bars per calendar year, from the span of the dates (daily ~252, hourly US ~1,764)."""
    years = (dates[-1] - dates[0]) / pd.Timedelta(days=365.25)
    if len(dates) < 2 or years <= 0:
        return 252.0
    return (len(dates) - 1) / years


def _split_index(dates: pd.DatetimeIndex, eval_fraction: float, split_date) -> int:
    if split_date is not None:
        try:
            when = pd.Timestamp(split_date)
        except (ValueError, TypeError) as e:
            raise DataError(f"split date {split_date!r} is not a date") from e
        return int(dates.searchsorted(when, side="left"))
    if not 0.0 <= eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    return len(dates) - int(round(eval_fraction * len(dates)))


def build_market(
    panel: Panel,
    *,
    episode_length: int = 256,
    eval_fraction: float = 0.2,
    split_date=None,
    stats: feats.FeatureStats | None = None,
) -> Market:
    """Features, split and device arrays for a panel.

    Args:
      panel: aligned bars.
      episode_length: training episode length; the training range must hold one episode.
      eval_fraction: share of the (feature-complete) bars held out at the end.
      split_date: first held-out date; overrides `eval_fraction` when given.
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
    train_end = _split_index(dates, eval_fraction, split_date)
    if train_end < need:
        raise DataError(
            f"{panel.source}: the training range has {train_end} complete bars "
            f"(up to the split at {dates[min(train_end, len(dates) - 1)]:%Y-%m-%d}); one "
            f"episode of {episode_length} steps needs {need}: move the split later, "
            f"hold out less, or shorten episodes"
        )
    if 0 < len(dates) - train_end < 2:
        raise DataError(f"{panel.source}: the held-out range has fewer than 2 bars")

    raw, scores = raw[w:], scores[w:]
    if stats is None:
        stats = feats.fit_stats(raw[:train_end])
    elif stats.mean.shape != (raw.shape[-1],):
        raise DataError(f"normalisation statistics have {stats.mean.shape[0]} features, "
                        f"expected {raw.shape[-1]}")
    data = MarketData(
        features=jnp.asarray(feats.normalize(raw, stats), jnp.float32),
        scores=jnp.asarray(scores, jnp.float32),
        price=jnp.asarray(panel.adj_close[w:], jnp.float32),
    )
    return Market(
        data=data,
        dates=dates,
        symbols=panel.symbols,
        train_end=train_end,
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
    eval_fraction, split_date, stats).
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

"""A market-regime detector from recent bars only, its thresholds fitted on the training
range (host-only numpy): what `--regime-specialists` routes by (`jaxtrade.specialists`).

Definition, at bar t of a price matrix P [T, A] (adjusted closes, the env's execution
prices `MarketData.price`):

* the equal-weight index return r_t = mean_a P[t, a] / P[t - 1, a] - 1, over the assets
  that exist at both bars (`asset_mask`), as `evaluation.market_returns`;
* over the trailing `lookback` L returns r_{t-L+1} .. r_t (prices P[t-L] .. P[t]: bar t
  and the L bars before it, nothing after), the trend g_t = prod(1 + r) - 1 (the
  index's L-bar return) and the volatility s_t = std(r) (ddof 0);
* the label, one of `KINDS[kind]`:

    four        high_vol if s_t > vol_high, low_vol if s_t < vol_low, else bull if
                g_t >= trend, else bear (the reference's four regimes as one label per
                bar: volatility extremes first, as the evaluation report's regime table)
    trend       bull if g_t >= trend, else bear
    volatility  high_vol if s_t >= vol_high, else low_vol

  and -1 where fewer than L returns lie behind bar t (t < L).

The thresholds are fitted on the training range only (`fit`): the statistics of the bars
t in [L, train_stop), whose windows hold training bars only. `four`: vol_low and vol_high
are the training volatilities' `vol_quantile` (0.25) and 1 - `vol_quantile` quantiles, and
trend the median training trend of the bars between them, so that each of the four labels
holds about a quarter of the training bars; `trend`: the median training trend (a half
each); `volatility`: the median training volatility. Quantiles rather than fixed levels
(a trend of 0, a volatility ratio): a market that drifts up would label nearly every
window bull at 0, and a specialist needs steps of its regime to be chosen by.

A decision at step k of a pass from bar `first` (`jaxtrade.evaluation`) is taken on bar
first + k - 1's observation and traded at bar first + k; its regime is the label of bar
first + k - 1 (`step_labels`): the same bars a deployed policy has when it decides on the
bar after the last one given (`label` of the given bars). Prices are read as float32
(as the market stores them) so that both give the same label.

`jaxtrade.metrics.market_regimes` is another labelling, for the evaluation report: it
includes the bar's own return and compares with the median volatility of the walk itself
(it sees the whole walk), so it describes bars after the fact and cannot route decisions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

KINDS = {"four": ("bull", "bear", "high_vol", "low_vol"),
         "trend": ("bull", "bear"),
         "volatility": ("high_vol", "low_vol")}
DEFAULT_KIND = "four"
DEFAULT_LOOKBACK = 20  # trailing bars (a month of daily bars, the report's regime window)
DEFAULT_VOL_QUANTILE = 0.25  # `four`: the training quartiles of volatility


class RegimeError(ValueError):
    """A detector that cannot be fitted or applied; the message is one line."""


def index_returns(prices: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """float64 [T]: the equal-weight index return into each bar (NaN at bar 0, and where
    no asset exists at both bars).

    Args:
      prices: [T, A] prices (read as float32, as `MarketData.price`).
      mask: bool [T, A], the assets that exist at each bar; None: all of them.
    """
    p = np.asarray(prices, np.float32).astype(np.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise RegimeError(f"prices must be [bars, assets], got shape {p.shape}")
    growth = p[1:] / p[:-1]
    both = np.ones(growth.shape, bool) if mask is None else (
        np.asarray(mask, bool)[1:] & np.asarray(mask, bool)[:-1])
    n = both.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(both, growth, 0.0).sum(-1) / n - 1.0
    return np.concatenate([[np.nan], np.where(n > 0, r, np.nan)])


def trailing(prices: np.ndarray, lookback: int, mask: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(trend, vol), float64 [T] each: the index's return and the standard deviation of its
    returns over the `lookback` returns into bars t - lookback + 1 .. t; NaN for t <
    lookback (see the module docstring)."""
    if isinstance(lookback, bool) or not isinstance(lookback, int | np.integer) or lookback < 2:
        raise RegimeError(f"lookback must be a whole number of bars >= 2, got {lookback!r}")
    r = index_returns(prices, mask)
    n = len(r)
    trend = np.full(n, np.nan)
    vol = np.full(n, np.nan)
    if n > lookback:
        windows = np.lib.stride_tricks.sliding_window_view(r[1:], lookback)  # [n - L, L]
        trend[lookback:] = np.prod(1.0 + windows, axis=-1) - 1.0
        vol[lookback:] = windows.std(axis=-1)
    return trend, vol


@dataclasses.dataclass(frozen=True)
class RegimeDetector:
    """A fitted detector: the labelling rule of `kind` over `lookback` bars and its
    thresholds (see the module docstring)."""

    kind: str  # one of KINDS
    lookback: int  # trailing bars L of the statistics
    trend: float | None  # bull at or above this L-bar index return (None: `volatility`)
    vol_low: float | None  # low_vol below this volatility (None: `trend`)
    vol_high: float | None  # high_vol above it (at or above for `volatility`)
    fitted_on: tuple[int, int] = (0, 0)  # bars [first, stop) whose statistics fitted it

    @property
    def names(self) -> tuple[str, ...]:
        return KINDS[self.kind]

    def classify(self, trend: np.ndarray, vol: np.ndarray) -> np.ndarray:
        """int64 [T] labels (indices into `names`, -1 where a statistic is NaN)."""
        trend, vol = np.asarray(trend, np.float64), np.asarray(vol, np.float64)
        known = ~(np.isnan(trend) | np.isnan(vol))
        idx = {name: i for i, name in enumerate(self.names)}
        with np.errstate(invalid="ignore"):
            if self.kind == "volatility":
                out = np.where(vol >= self.vol_high, idx["high_vol"], idx["low_vol"])
            else:
                out = np.where(trend >= self.trend, idx["bull"], idx["bear"])
                if self.kind == "four":
                    out = np.where(vol < self.vol_low, idx["low_vol"], out)
                    out = np.where(vol > self.vol_high, idx["high_vol"], out)
        return np.where(known, out, -1)

    def labels(self, prices: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """int64 [T]: the label of every bar from bars <= t only (-1 for t < lookback)."""
        return self.classify(*trailing(prices, self.lookback, mask))

    def label(self, prices: np.ndarray, mask: np.ndarray | None = None) -> str:
        """The regime name of the last bar of `prices` (recent bars, oldest first).

        Raises:
          RegimeError: fewer than lookback + 1 bars.
        """
        if len(prices) < self.lookback + 1:
            raise RegimeError(f"the regime detector needs the last {self.lookback + 1} bars "
                              f"(a {self.lookback}-bar lookback + 1), got {len(prices)}")
        i = int(self.labels(np.asarray(prices)[-self.lookback - 1:],
                            None if mask is None else np.asarray(mask)[-self.lookback - 1:])[-1])
        if i < 0:
            raise RegimeError("the regime detector's last bar has no index return (no asset "
                              "exists at both bars)")
        return self.names[i]

    def step_labels(self, prices: np.ndarray, first: int, n_steps: int,
                    mask: np.ndarray | None = None) -> np.ndarray:
        """int64 [n_steps]: the regime of each step of a pass from bar `first`, the label
        of bar first + k - 1 (the bar its decision observes); reads no bar after
        first + n_steps - 2."""
        last = first + n_steps - 1  # the bars first - 1 .. last - 1
        if first < 1 or last > len(prices):
            raise RegimeError(f"steps {first} .. {first + n_steps - 1} need bars 0 .. "
                              f"{last - 1}, the prices hold {len(prices)}")
        return self.labels(np.asarray(prices)[:last],
                           None if mask is None else np.asarray(mask)[:last])[first - 1:]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "lookback": self.lookback, "trend": self.trend,
                "vol_low": self.vol_low, "vol_high": self.vol_high,
                "fitted_on": list(self.fitted_on), "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: Mapping) -> RegimeDetector:
        """The detector `to_dict` wrote.

        Raises:
          RegimeError: not a detector record.
        """
        try:
            kind = d["kind"]
            if kind not in KINDS:
                raise KeyError(kind)
            num = lambda k: None if d[k] is None else float(d[k])  # noqa: E731
            return cls(kind, int(d["lookback"]), num("trend"), num("vol_low"), num("vol_high"),
                       tuple(int(x) for x in d.get("fitted_on", (0, 0))))
        except (KeyError, TypeError, ValueError) as e:
            raise RegimeError(f"not a regime detector record ({e!r})") from None


def fit(prices: np.ndarray, train_stop: int, kind: str = DEFAULT_KIND,
        lookback: int = DEFAULT_LOOKBACK, mask: np.ndarray | None = None,
        vol_quantile: float = DEFAULT_VOL_QUANTILE) -> RegimeDetector:
    """The detector of `kind` with thresholds from the statistics of the training bars
    t in [lookback, train_stop) only (their windows end before bar train_stop); nothing
    at or after `train_stop` is read.

    Raises:
      RegimeError: an unknown kind, a bad lookback or quantile, or fewer than 2 such bars.
    """
    if kind not in KINDS:
        raise RegimeError(f"unknown regime kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not 0 < vol_quantile < 0.5:
        raise RegimeError(f"vol_quantile must be in (0, 0.5), got {vol_quantile}")
    prices = np.asarray(prices)[:train_stop]
    mask = None if mask is None else np.asarray(mask)[:train_stop]
    trend, vol = trailing(prices, lookback, mask)
    ok = ~(np.isnan(trend) | np.isnan(vol))
    if ok.sum() < 2:
        raise RegimeError(f"the training range has {int(ok.sum())} bar(s) with a complete "
                          f"{lookback}-bar lookback; fitting the regime thresholds needs at "
                          f"least 2 (a shorter lookback, or more training bars)")
    trend, vol = trend[ok], vol[ok]
    span = (lookback, int(train_stop))
    if kind == "trend":
        return RegimeDetector(kind, lookback, float(np.median(trend)), None, None, span)
    if kind == "volatility":
        mid = float(np.median(vol))
        return RegimeDetector(kind, lookback, None, mid, mid, span)
    lo, hi = (float(x) for x in np.quantile(vol, [vol_quantile, 1 - vol_quantile]))
    middle = trend[(vol >= lo) & (vol <= hi)]
    return RegimeDetector(kind, lookback, float(np.median(middle if len(middle) else trend)),
                          lo, hi, span)

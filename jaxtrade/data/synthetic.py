"""The embedded default market: a seeded synthetic panel with regimes and a tradable signal.

Host-only (numpy). Nothing is downloaded: the same `SyntheticConfig` always gives
the same bars, on every machine.

The model, per bar t and asset i (log returns):

    r[t, i] = beta_i * m[t] + alpha_scale * signal_strength * a[t, i] + idio_vol_i * s[k] * e[t, i]

- `m[t]` is the market factor: drift and volatility set by a hidden 4-state Markov
  regime k(t) in {bull, bear, high_vol, low_vol} that persists for `regime_duration`
  bars on average; shocks are Student-t with `tail_df` degrees of freedom (fat tails),
  scaled to unit variance. The common factor is what correlates the assets.
- `a[t, i]` is a persistent cross-sectional signal: an AR(1) per asset with
  autocorrelation `signal_persistence`, demeaned across assets each bar (so the
  equal-weight index gets none of it). Because it persists, past returns reveal
  it: momentum and quality tilts earn it, and a policy that reads the features
  can beat equal weight after costs. `signal_strength=0` removes it.
- `e[t, i]` is idiosyncratic Student-t noise, scaled by the regime's volatility
  multiplier s[k].

Volume follows a per-asset size level (log dollar volume) with noise and more
volume on large moves; open/high/low are drawn around the close path.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from jaxtrade.data.panel import Panel, format_date

REGIME_NAMES = ("bull", "bear", "high_vol", "low_vol")
# Per-bar (daily-like) market drift and volatility of each regime, and the
# multiplier applied to idiosyncratic volatility in that regime.
_REGIME_DRIFT = np.array([0.0007, -0.0012, -0.0002, 0.0004])
_REGIME_VOL = np.array([0.009, 0.016, 0.026, 0.006])
_REGIME_IDIO_MULT = np.array([1.0, 1.3, 1.8, 0.7])


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the embedded synthetic market."""

    n_assets: int = 12  # stocks; cash is added by the environment (12 + cash, as the reference)
    n_bars: int = 2520  # bars to generate (about 10 years of daily bars)
    seed: int = 0  # same seed, same market
    signal_strength: float = 1.0  # scale of the persistent cross-sectional signal; 0 = none
    signal_persistence: float = 0.995  # AR(1) coefficient of the signal (per bar)
    alpha_scale: float = 0.0015  # per-bar expected excess return of a 1-sd signal
    regime_duration: float = 120.0  # mean bars a market regime lasts
    tail_df: float = 4.0  # Student-t degrees of freedom of all shocks (> 2)
    freq: str = "B"  # pandas frequency of the date index: "B" daily, "h" hourly
    start: str = "2010-01-04"  # first date

    def __post_init__(self):
        checks = {
            "n_assets": self.n_assets >= 1,
            "n_bars": self.n_bars >= 2,
            "signal_strength": self.signal_strength >= 0,
            "signal_persistence": 0 <= self.signal_persistence < 1,
            "alpha_scale": self.alpha_scale >= 0,
            "regime_duration": self.regime_duration >= 1,
            "tail_df": self.tail_df > 2,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            raise ValueError(f"invalid synthetic market setting: {values}")


@dataclasses.dataclass(frozen=True)
class SyntheticMarket:
    """The generated panel plus the hidden variables that drove it (for tests and analysis)."""

    panel: Panel
    regime: np.ndarray  # [T] int, index into REGIME_NAMES
    signal: np.ndarray  # [T, A] the demeaned latent signal a[t, i]


def _student_t(rng: np.random.Generator, df: float, shape) -> np.ndarray:
    """Unit-variance Student-t draws."""
    return rng.standard_t(df, size=shape) * np.sqrt((df - 2.0) / df)


def _regime_path(rng: np.random.Generator, n: int, mean_duration: float) -> np.ndarray:
    """A Markov chain over the 4 regimes that leaves its state with prob 1/mean_duration."""
    n_regimes = len(REGIME_NAMES)
    switch = rng.random(n) < 1.0 / mean_duration
    # On a switch, move to one of the other regimes uniformly.
    jumps = np.where(switch, rng.integers(1, n_regimes, size=n), 0)
    jumps[0] = rng.integers(0, n_regimes)
    return np.cumsum(jumps) % n_regimes


def _ar1(rng: np.random.Generator, n: int, n_assets: int, phi: float) -> np.ndarray:
    """Stationary unit-variance AR(1) paths, demeaned across assets each bar."""
    shocks = rng.standard_normal((n, n_assets)) * np.sqrt(1.0 - phi**2)
    out = np.empty((n, n_assets))
    out[0] = rng.standard_normal(n_assets)
    for t in range(1, n):  # host-side data generation, once per run
        out[t] = phi * out[t - 1] + shocks[t]
    return out - out.mean(axis=1, keepdims=True)


def generate(config: SyntheticConfig = SyntheticConfig()) -> SyntheticMarket:
    """Generates the synthetic market described in the module docstring."""
    rng = np.random.default_rng(config.seed)
    n, n_assets = config.n_bars, config.n_assets

    regime = _regime_path(rng, n, config.regime_duration)
    market = _REGIME_DRIFT[regime] + _REGIME_VOL[regime] * _student_t(rng, config.tail_df, n)

    beta = rng.uniform(0.6, 1.4, n_assets)
    idio_vol = rng.uniform(0.008, 0.018, n_assets)
    signal = _ar1(rng, n, n_assets, config.signal_persistence)
    idio = _student_t(rng, config.tail_df, (n, n_assets))

    log_ret = (
        beta[None, :] * market[:, None]
        + config.alpha_scale * config.signal_strength * signal
        + idio_vol[None, :] * _REGIME_IDIO_MULT[regime][:, None] * idio
    )
    log_ret[0] = 0.0
    start_price = rng.uniform(20.0, 400.0, n_assets)
    close = start_price[None, :] * np.exp(np.cumsum(log_ret, axis=0))

    bar_vol = idio_vol[None, :] * _REGIME_IDIO_MULT[regime][:, None] + _REGIME_VOL[regime][:, None]
    prev_close = np.vstack([close[:1], close[:-1]])
    open_ = prev_close * np.exp(0.2 * bar_vol * rng.standard_normal((n, n_assets)))
    wick = 0.5 * bar_vol
    high = np.maximum(open_, close) * np.exp(wick * np.abs(rng.standard_normal((n, n_assets))))
    low = np.minimum(open_, close) * np.exp(-wick * np.abs(rng.standard_normal((n, n_assets))))

    # Size: log dollar volume level per asset; busier on large moves.
    size_level = rng.normal(np.log(2e8), 1.0, n_assets)
    surprise = np.abs(log_ret) / bar_vol
    dollar_volume = np.exp(size_level[None, :] + 0.3 * rng.standard_normal((n, n_assets)))
    volume = np.round(dollar_volume * (0.7 + 0.3 * surprise) / close)

    dates = pd.date_range(config.start, periods=n, freq=config.freq)
    symbols = tuple(f"SYN{i:02d}" for i in range(n_assets))
    source = (
        f"synthetic(seed={config.seed}, n_assets={n_assets}, n_bars={n}, "
        f"signal_strength={config.signal_strength})"
    )
    panel = Panel(
        dates=dates,
        symbols=symbols,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=volume,
        adj_close=close.copy(),
        source=source,
        report=(
            f"generated {n_assets} symbols x {n} bars "
            f"({format_date(dates[0])} .. {format_date(dates[-1])})",
        ),
    )
    return SyntheticMarket(panel=panel, regime=regime, signal=signal)


def synthetic_panel(config: SyntheticConfig = SyntheticConfig()) -> Panel:
    """The synthetic market's bars only."""
    return generate(config).panel

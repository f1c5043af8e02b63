"""Per-asset features and factor scores, computed only from data up to each bar (host-side).

Every quantity at row t uses bars 0..t and nothing later (rolling windows and
shifts look backwards only); `tests/data/test_features.py` proves it by
perturbing the future. Rows before `WINDOW` are incomplete and are dropped by
`jaxtrade.data.market.build_market`.

Features (columns of the [T, A, F] array, in this order):

| name      | definition (p = adjusted close, r = 1-bar log return)          |
|-----------|----------------------------------------------------------------|
| ret_1     | log(p_t / p_{t-1})                                             |
| ret_5     | log(p_t / p_{t-5})                                             |
| ret_20    | log(p_t / p_{t-20})                                            |
| mom_20    | p_t / mean(p_{t-19..t}) - 1 (distance from the 20-bar average)  |
| vol_20    | std(r_{t-19..t})                                               |
| sharpe_20 | mean(r_{t-19..t}) / vol_20 (per bar, not annualised)           |
| size      | log(1 + mean(close * volume over 20 bars)), log dollar volume  |
| volume_z  | z-score of log(1 + volume_t) within its last 20 bars           |
| hl_range  | (high_t - low_t) / close_t                                     |

Factor scores (higher = more of the factor; raw, not normalised; only their
cross-sectional ranks matter to the regimes):

| name     | definition                                         |
|----------|----------------------------------------------------|
| momentum | ret_20, the 20-bar price change                    |
| low_vol  | -vol_20                                            |
| quality  | sharpe_20                                          |
| size     | -size: smaller dollar volume scores higher         |

Size uses dollar volume rather than the reference's inverse price: a price level
says nothing about a company's size (splits change it), while traded dollar
volume is the standard size/liquidity proxy available from OHLCV bars.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from jaxtrade.data.panel import Panel

WINDOW = 20  # bars of history the longest feature needs; rows [0, WINDOW) are incomplete
FEATURE_NAMES = (
    "ret_1",
    "ret_5",
    "ret_20",
    "mom_20",
    "vol_20",
    "sharpe_20",
    "size",
    "volume_z",
    "hl_range",
)
SCORE_NAMES = ("momentum", "low_vol", "quality", "size")
CLIP = 10.0  # normalised features are clipped to [-CLIP, CLIP] so one bad bar cannot dominate
_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Per-feature mean and std over the training rows, pooled over assets."""

    mean: np.ndarray  # [F]
    std: np.ndarray  # [F]

    def to_dict(self) -> dict:
        return {
            "names": list(FEATURE_NAMES),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> FeatureStats:
        if list(d["names"]) != list(FEATURE_NAMES):
            raise ValueError(f"feature names {d['names']} differ from {list(FEATURE_NAMES)}")
        return cls(mean=np.asarray(d["mean"], np.float64), std=np.asarray(d["std"], np.float64))


def compute(panel: Panel) -> tuple[np.ndarray, np.ndarray]:
    """Raw features and factor scores.

    Returns:
      features: float64 [T, A, F], NaN in rows < WINDOW.
      scores: float64 [T, A, 4], NaN in rows < WINDOW.
    """

    def frame(x: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(x)

    log_p = frame(np.log(panel.adj_close))
    r1 = log_p.diff(1)
    ret_5 = log_p.diff(5)
    ret_20 = log_p.diff(WINDOW)
    price = frame(panel.adj_close)
    mom_20 = price / price.rolling(WINDOW).mean() - 1.0
    vol_20 = r1.rolling(WINDOW).std(ddof=1)
    sharpe_20 = r1.rolling(WINDOW).mean() / (vol_20 + _EPS)
    size = np.log1p(frame(panel.close * panel.volume).rolling(WINDOW).mean())
    log_v = np.log1p(frame(panel.volume))
    volume_z = (log_v - log_v.rolling(WINDOW).mean()) / (log_v.rolling(WINDOW).std(ddof=1) + _EPS)
    hl_range = frame((panel.high - panel.low) / panel.close)

    columns = (r1, ret_5, ret_20, mom_20, vol_20, sharpe_20, size, volume_z, hl_range)
    features = np.stack([c.to_numpy(np.float64) for c in columns], axis=-1)
    scores = np.stack(
        [ret_20.to_numpy(), -vol_20.to_numpy(), sharpe_20.to_numpy(), -size.to_numpy()],
        axis=-1,
    )
    features[:WINDOW] = np.nan
    scores[:WINDOW] = np.nan
    return features, scores


def fit_stats(features: np.ndarray) -> FeatureStats:
    """Mean and std of each feature over all rows and assets given (the training range)."""
    flat = features.reshape(-1, features.shape[-1])
    mean = flat.mean(axis=0)
    std = flat.std(axis=0)
    # A constant feature (e.g. volume_z of a series with constant volume) is left centred, unscaled.
    std = np.where(std > _EPS, std, 1.0)
    return FeatureStats(mean=mean, std=std)


def normalize(features: np.ndarray, stats: FeatureStats) -> np.ndarray:
    """z-scores with the given statistics, clipped to [-CLIP, CLIP]."""
    return np.clip((features - stats.mean) / stats.std, -CLIP, CLIP)

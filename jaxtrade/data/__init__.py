"""Market data: the user's files or the embedded synthetic market -> `MarketData` device arrays."""

from jaxtrade.data.features import FEATURE_NAMES, SCORE_NAMES, WINDOW, FeatureStats
from jaxtrade.data.market import Market, MarketData, build_market, load_market
from jaxtrade.data.panel import DataError, Panel
from jaxtrade.data.synthetic import SyntheticConfig, synthetic_panel

__all__ = [
    "FEATURE_NAMES",
    "SCORE_NAMES",
    "WINDOW",
    "DataError",
    "FeatureStats",
    "Market",
    "MarketData",
    "Panel",
    "SyntheticConfig",
    "build_market",
    "load_market",
    "synthetic_panel",
]

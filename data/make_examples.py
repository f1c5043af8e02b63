"""Writes the example datasets in this folder from the embedded synthetic market.

    python data/make_examples.py

Provenance: every file here is synthetic (jaxtrade.data.SyntheticConfig, seeds below),
written in the formats users bring: no real prices are redistributed.
"""

from pathlib import Path

import pandas as pd

from jaxtrade.data import SyntheticConfig, synthetic_panel

HERE = Path(__file__).resolve().parent


def frame(panel, j: int) -> pd.DataFrame:
    return pd.DataFrame({
        "Date": panel.dates.strftime("%Y-%m-%d"),
        "Open": panel.open[:, j].round(4),
        "High": panel.high[:, j].round(4),
        "Low": panel.low[:, j].round(4),
        "Close": panel.close[:, j].round(4),
        "Adj Close": panel.adj_close[:, j].round(4),
        "Volume": panel.volume[:, j].astype("int64"),
    })


def main():
    # Long format: one file, 6 symbols x 800 daily bars.
    panel = synthetic_panel(SyntheticConfig(n_assets=6, n_bars=800, seed=42, start="2018-01-01"))
    long = pd.concat(
        [frame(panel, j).assign(Symbol=s) for j, s in enumerate(panel.symbols)], ignore_index=True
    )
    cols = ["Date", "Symbol", "Open", "High", "Low", "Close", "Adj Close", "Volume"]
    long[cols].to_csv(HERE / "example_long.csv", index=False)
    # yfinance style: one CSV per symbol.
    yf = HERE / "example_yfinance"
    yf.mkdir(exist_ok=True)
    panel = synthetic_panel(SyntheticConfig(n_assets=3, n_bars=600, seed=7, start="2019-01-01"))
    for j, name in enumerate(("AAA", "BBB", "CCC")):
        frame(panel, j).to_csv(yf / f"{name}.csv", index=False)


if __name__ == "__main__":
    main()

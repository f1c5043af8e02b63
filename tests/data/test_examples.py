"""The example datasets in data/ load as documented."""

from pathlib import Path

import pytest

from jaxtrade.data import load_market

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.mark.parametrize(
    "path, symbols, bars",
    [
        ("example_long.csv", ("SYN00", "SYN01", "SYN02", "SYN03", "SYN04", "SYN05"), 780),
        ("example_yfinance", ("AAA", "BBB", "CCC"), 580),
    ],
)
def test_example_data_loads(path, symbols, bars):
    market = load_market(DATA / path, episode_length=128)
    assert market.symbols == symbols and market.n_bars == bars

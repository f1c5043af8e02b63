"""Load user market data into an aligned `Panel` (host-only: pandas/numpy, no JAX).

Accepted inputs:
  * one long-format file (`.csv`, `.csv.gz`, `.parquet`, `.pq`) with columns
    date, symbol, open, high, low, close, volume and optionally adj close;
  * one single-series file of the same types without a symbol column (date, open,
    high, low, close, volume, optionally adj close: an FX pair, a coin, an index),
    which holds one symbol named after the file (`EURUSD.csv` holds EURUSD);
  * a directory of per-symbol CSV files as yfinance and most vendors write them
    (`AAPL.csv` holds symbol AAPL), including yfinance's three-line header.

Text dates are parsed file by file: each file uses one format throughout (ISO,
MM/DD/YYYY, either with a time of day), the one that fits most of its rows, so the
files of one directory may differ.

Every problem with the data raises one `DataError` whose one-line message names the
file, the line a user sees in an editor (or the date), the symbol and the column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from jaxtrade.data.panel import DataError, Panel, format_date

PRICES = ("open", "high", "low", "close", "adj_close")
NUMERIC = (*PRICES, "volume")

# Canonical column -> accepted headers (normalised by `_header_key`); earlier ones win.
_ALIASES = {
    "date": ("date", "datetime", "timestamp", "time"),
    "symbol": ("symbol", "ticker"),
    "open": ("open",),
    "high": ("high",),
    "low": ("low",),
    "close": ("close",),
    "volume": ("volume",),
    "adj_close": ("adj close", "adjclose"),
}
_REQUIRED = ("date", "symbol", "open", "high", "low", "close", "volume")
_TEXT_ALIASES = {*_ALIASES["date"], *_ALIASES["symbol"]}
_CSV_SUFFIXES = (".csv", ".csv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
# pandas format -> how messages spell it. Tried in order on each file's dates; a file uses
# one format throughout, the one that parses the most of its rows.
_DATE_FORMATS = {
    "ISO8601": "YYYY-MM-DD[ HH:MM[:SS]][+HH:MM]",
    "%m/%d/%Y": "MM/DD/YYYY",
    "%m/%d/%Y %H:%M": "MM/DD/YYYY HH:MM",
    "%m/%d/%Y %H:%M:%S": "MM/DD/YYYY HH:MM:SS",
}
_DATE_HELP = "expected YYYY-MM-DD, MM/DD/YYYY or YYYY-MM-DD HH:MM[:SS][+HH:MM]"


def load_panel(
    path: str | Path,
    *,
    symbols: Iterable[str] | str | None = None,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    max_fill: int = 5,
) -> Panel:
    """Read market data from `path` and align it into a `Panel` (host-only).

    Args:
      path: a long-format CSV/Parquet file or a directory of per-symbol CSV files.
      symbols: the symbols to load, in panel column order (a comma-separated string
        is accepted too); None loads every symbol, sorted.
      start, end: inclusive date bounds. An `end` at midnight (e.g. "2024-01-05")
        includes that whole day, so intraday bars on it are kept.
      max_fill: most consecutive missing bars per symbol that may be forward-filled.

    Returns:
      A `Panel` whose dates are the union of the symbols' dates inside their common
      span, with missing bars filled (price = previous close, volume 0) and
      `report` saying what was dropped and filled.

    Raises:
      DataError: on unreadable, malformed or unalignable data, with a one-line message.
    """
    wanted, lo, hi = _options(symbols, start, end, max_fill)
    raw, available = _read_source(Path(path), wanted)
    return _build_panel(raw, list(wanted or available), lo, hi, max_fill, str(path))


def load_frame(
    frame: pd.DataFrame,
    *,
    symbols: Iterable[str] | str | None = None,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    max_fill: int = 5,
    source: str = "DataFrame",
) -> Panel:
    """`load_panel` for long-format bars already in memory (host-only).

    `frame` has the columns of a long-format file (date, symbol, open, high, low,
    close, volume, optionally adj close; the same aliases), or date and symbol as
    its index. Messages name `source` and the row's position in `frame`.

    Raises:
      DataError: as `load_panel`.
    """
    wanted, lo, hi = _options(symbols, start, end, max_fill)
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{source}: expected a pandas DataFrame, got {type(frame).__name__}")
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index()
    raw = _canonical_columns(frame, source, symbol=None)
    raw["_file"] = source
    raw["_line"] = np.arange(len(raw))
    raw = raw[~raw[[c for c in _ALIASES if c in raw]].isna().all(axis=1)]
    if raw.empty:
        raise DataError(f"{source}: no data rows")
    raw, available = _select_symbols(raw, wanted, source)
    return _build_panel(raw, list(wanted or available), lo, hi, max_fill, source)


def _build_panel(
    raw: pd.DataFrame,
    order: list[str],
    lo: pd.Timestamp | None,
    hi: pd.Timestamp | None,
    max_fill: int,
    source: str,
) -> Panel:
    """Rows of the wanted symbols (`_read_source`'s form) -> a checked, aligned Panel."""
    bars = _parse_dates(raw)
    bars, n_filtered = _filter_dates(bars, lo, hi, order, source)
    bars = _parse_values(bars)
    _check_duplicates(bars)
    dates, arrays, notes = _align(bars, order, max_fill, source)

    report = [
        f"loaded {len(order)} symbols x {len(dates)} bars "
        f"({_fmt(dates[0])} .. {_fmt(dates[-1])}) from {source}"
    ]
    if n_filtered:
        report.append(f"dropped {n_filtered} rows outside {_requested(lo, hi)}")
    report += notes + _adj_notes(bars)
    return Panel(dates=dates, symbols=tuple(order), source=source, report=tuple(report), **arrays)


# --- options -------------------------------------------------------------------------


def _options(symbols, start, end, max_fill) -> tuple[list[str] | None, pd.Timestamp | None,
                                                     pd.Timestamp | None]:
    """The checked options of `load_panel`: wanted symbols, start and end bounds."""
    wanted = _wanted_symbols(symbols)
    if isinstance(max_fill, bool) or not isinstance(max_fill, int | np.integer) or max_fill < 0:
        raise DataError(f"max_fill (CLI --max-fill) must be an integer >= 0, got {max_fill!r}")
    lo, hi = _bound(start, "start"), _bound(end, "end")
    if lo is not None and hi is not None and lo > hi:
        raise DataError(f"start={_fmt(lo)} is after end={_fmt(hi)}")
    return wanted, lo, hi


def _wanted_symbols(symbols: Iterable[str] | str | None) -> list[str] | None:
    """The `symbols` option as a list of unique names, or None for all."""
    if symbols is None:
        return None
    names = symbols.split(",") if isinstance(symbols, str) else list(symbols)
    names = [str(name).strip() for name in names if str(name).strip()]
    if not names:
        raise DataError("symbols is empty; pass None to load every symbol")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"symbols lists {', '.join(repeated)} more than once")
    return names


def _bound(value, name: str) -> pd.Timestamp | None:
    """A start/end option as a tz-naive (UTC) timestamp."""
    if value is None:
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise DataError(f"{name}={value!r} is not a date; {_DATE_HELP}") from None
    if pd.isna(stamp):
        raise DataError(f"{name}={value!r} is not a date; {_DATE_HELP}")
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tz is not None else stamp


def _in_range(dates: pd.Series, lo: pd.Timestamp | None, hi: pd.Timestamp | None) -> pd.Series:
    """Mask of `dates` inside [lo, hi]; a midnight `hi` means the whole day."""
    keep = pd.Series(True, index=dates.index)
    if lo is not None:
        keep &= dates >= lo
    if hi is not None:
        keep &= dates < hi + pd.Timedelta(days=1) if hi == hi.normalize() else dates <= hi
    return keep


# --- reading -------------------------------------------------------------------------


def _read_source(path: Path, wanted: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """Text rows of the wanted symbols, and every symbol the source holds (sorted).

    The frame has the canonical columns as text (Parquet keeps its own dtypes), plus
    `_file`, `_line` (where a user finds the row) and `_adj` (the file had adj close).
    """
    if path.is_dir():
        return _read_directory(path, wanted)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    # Without a symbol column the file holds one series, named after the file.
    frame = _read_table(path, symbol=_stem(path.name, _CSV_SUFFIXES + _PARQUET_SUFFIXES))
    return _select_symbols(frame, wanted, path)


def _select_symbols(
    frame: pd.DataFrame, wanted: list[str] | None, source: Path | str
) -> tuple[pd.DataFrame, list[str]]:
    """The rows of the wanted symbols of a long-format table, and every symbol it holds."""
    frame["symbol"] = frame["symbol"].astype("str").str.strip()
    empty = frame["symbol"].isna() | (frame["symbol"] == "")
    if empty.any():
        row = frame[empty].iloc[0]
        raise DataError(f"{_at(row, with_date=False)}: symbol is empty")
    available = sorted(frame["symbol"].unique())
    _check_known(wanted, available, source)
    if wanted is not None:
        frame = frame[frame["symbol"].isin(wanted)]
    return frame, available


def _read_directory(path: Path, wanted: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    """Per-symbol CSV files in `path`; the file name (less .csv) is the symbol."""
    files: dict[str, Path] = {}
    for file in sorted(path.iterdir()):
        symbol = _csv_symbol(file)
        if symbol is None:
            continue
        if symbol in files:
            raise DataError(f"{path}: both {files[symbol].name} and {file.name} hold {symbol}")
        files[symbol] = file
    if not files:
        raise DataError(
            f"{path}: no .csv files in the directory (expected one per symbol, e.g. AAPL.csv)"
        )
    available = sorted(files)
    _check_known(wanted, available, path)
    frames = []
    for symbol in wanted or available:
        frame = _read_table(files[symbol], symbol=symbol)
        frame["symbol"] = symbol
        frames.append(frame)
    return pd.concat(frames, ignore_index=True), available


def _csv_symbol(file: Path) -> str | None:
    """The symbol a per-symbol CSV file holds, or None if `file` is not one."""
    name = file.name
    # "._AAPL.csv" is macOS metadata, not data.
    if name.startswith(".") or not file.is_file():
        return None
    return _stem(name, _CSV_SUFFIXES)


def _stem(name: str, suffixes: tuple[str, ...]) -> str | None:
    """`name` less the first of `suffixes` it ends with (any case), or None."""
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _check_known(wanted: list[str] | None, available: list[str], path: Path | str) -> None:
    unknown = [name for name in wanted or () if name not in available]
    if unknown:
        raise DataError(
            f"{path}: no data for symbol(s) {', '.join(unknown)}; "
            f"available: {_names(available, limit=20)}"
        )


def _read_table(file: Path, *, symbol: str | None) -> pd.DataFrame:
    """One file's rows with canonical columns, where-from columns and blank rows dropped.

    `symbol` fills the symbol column when the file has none (see `_canonical_columns`).
    """
    name = file.name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        frame = _pandas_read(pd.read_parquet, file)
        # A frame saved with its date (and symbol) as index keeps them there.
        if not isinstance(frame.index, pd.RangeIndex):
            frame = frame.reset_index()
        header_lines = 0
    elif name.endswith(_CSV_SUFFIXES):
        frame, header_lines = _read_csv(file)
    else:
        raise DataError(
            f"{file}: unsupported file type; expected .csv, .csv.gz, .parquet or "
            ".pq, or a directory of per-symbol .csv files"
        )
    frame = _canonical_columns(frame, file, symbol=symbol)
    frame["_file"] = str(file)
    frame["_line"] = np.arange(len(frame)) + header_lines + 1
    # A symbol named after the file is no cell of the row.
    cells = [c for c in _ALIASES if c in frame and not (c == "symbol" and frame["_named"].all())]
    blank = frame[cells].isna().all(axis=1)
    frame = frame[~blank]
    if frame.empty:
        raise DataError(f"{file}: no data rows")
    return frame


def _pandas_read(reader, file: Path, **kwargs) -> pd.DataFrame:
    """`reader(file, ...)` with pandas/pyarrow failures turned into a DataError."""
    try:
        return reader(file, **kwargs)
    except (OSError, ValueError, pa.ArrowException) as err:
        detail = str(err).strip().splitlines()
        raise DataError(
            f"cannot read {file}: {detail[0] if detail else type(err).__name__}"
        ) from err


def _read_csv(file: Path) -> tuple[pd.DataFrame, int]:
    """The file's cells, and how many header lines precede the first data row.

    Date and symbol columns stay text (a ticker like "0700" keeps its zero); the
    numeric ones are parsed by pandas, falling back to text where a cell is not a
    number, so that `_parse_values` can point at it.
    """
    head = _pandas_read(pd.read_csv, file, header=None, nrows=3, dtype=str, index_col=False)
    skip = _yfinance_extra_header(head, file)
    text = {}
    for position, header in enumerate(head.iloc[0]):
        if pd.notna(header) and (_header_key(header) in _TEXT_ALIASES or (skip and not position)):
            text[header] = "str"
    # skip_blank_lines=False keeps row i on line i + header lines; blank rows go later.
    # index_col=False stops a trailing comma from turning the date into the index.
    # low_memory=False infers each column's type from all of it, not per chunk.
    frame = _pandas_read(
        pd.read_csv,
        file,
        dtype=text,
        skiprows=skip,
        skip_blank_lines=False,
        index_col=False,
        low_memory=False,
    )
    if skip:
        frame = frame.rename(columns={frame.columns[0]: "date"})
    return frame, 1 + len(skip)


def _yfinance_extra_header(head: pd.DataFrame, file: Path) -> list[int]:
    """Lines after the first of newer yfinance's header: `Ticker,AAPL,...` and `Date,,,`."""
    first = head.iloc[:, 0].fillna("").str.strip().str.lower().tolist()
    if first[:2] != ["price", "ticker"]:
        return []
    tickers = sorted(set(head.iloc[1, 1:].dropna().str.strip()))
    if len(tickers) > 1:
        raise DataError(
            f"{file}: the header holds several tickers ({', '.join(tickers)}); "
            "save one file per symbol"
        )
    return [1, 2] if len(first) > 2 and first[2] in ("date", "datetime") else [1]


def _header_key(header) -> str:
    """A header as matched against `_ALIASES`: lower case, runs of `_`/space as one space."""
    return re.sub(r"[\s_]+", " ", str(header).strip().lower())


def _canonical_columns(
    frame: pd.DataFrame, file: Path | str, *, symbol: str | None
) -> pd.DataFrame:
    """The known columns of `frame` under canonical names; text stripped, empty cells NA.

    Without a symbol column every row is `symbol`'s (the file's name), or, when `symbol`
    is None (in-memory frames), the column is required. Adds `_adj` (the file had an adj
    close column; without one, adj_close is NA here and becomes close once the numbers
    are parsed) and `_named` (the symbol is the file's name, not a column's).
    """
    known = {alias for aliases in _ALIASES.values() for alias in aliases}
    by_key: dict[str, str] = {}
    for column in frame.columns:
        key = _header_key(column)
        if key in known and key in by_key:
            raise DataError(f"{file}: columns {by_key[key]!r} and {column!r} are the same column")
        by_key.setdefault(key, column)
    picked = {}
    for name, aliases in _ALIASES.items():
        hit = next((alias for alias in aliases if alias in by_key), None)
        if hit is not None:
            picked[name] = hit
    required = [name for name in _REQUIRED if not (symbol is not None and name == "symbol")]
    missing = [name for name in required if name not in picked]
    if missing:
        hint = (
            "; one symbol's bars: add its name as a symbol column"
            if "symbol" in missing
            else ""
        )
        raise DataError(
            f"{file}: missing column(s) {', '.join(missing)}; found: "
            f"{', '.join(map(str, frame.columns))} (need {', '.join(required)}; "
            f"adj close optional{hint})"
        )

    out = pd.DataFrame({name: _text(frame[by_key[key]]) for name, key in picked.items()})
    if picked["date"] == "date" and "time" in by_key and pd.api.types.is_string_dtype(out["date"]):
        # Some vendors write intraday bars with separate Date and Time columns.
        out["date"] = out["date"].str.cat(_text(frame[by_key["time"]]), sep=" ")
    out["_named"] = "symbol" not in picked
    if "symbol" not in picked:
        out["symbol"] = symbol
    out["_adj"] = "adj_close" in picked
    if "adj_close" not in picked:
        out["adj_close"] = np.nan
    return out


def _text(column: pd.Series) -> pd.Series:
    """Text cells stripped, with empty ones as NA; non-text dtypes (Parquet) unchanged."""
    if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
        return column
    text = column.astype("str").str.strip()
    return text.mask(text == "")


# --- parsing and validation ----------------------------------------------------------


def _parse_dates(raw: pd.DataFrame) -> pd.DataFrame:
    """`raw` with `date` as tz-naive timestamps; tz-aware ones are converted to UTC first.

    Text dates are parsed per file (`_file`), each file in the format that fits most of
    its rows; the first row (in `raw` order) that does not parse raises.
    """
    column = raw["date"]
    if pd.api.types.is_datetime64_any_dtype(column):
        dates = column.dt.tz_convert("UTC").dt.tz_localize(None) if column.dt.tz else column
        dates = dates.dt.as_unit("us").to_numpy()
        formats = np.full(len(raw), None)
    else:
        text = column.astype("str")
        dates = np.full(len(raw), np.datetime64("NaT"), "datetime64[us]")
        formats = np.full(len(raw), None)
        for rows in raw.groupby("_file", sort=False).indices.values():
            parsed, formats[rows] = _parse_date_text(text.iloc[rows])
            dates[rows] = parsed.dt.as_unit("us").to_numpy()
    bad = np.flatnonzero(np.isnat(dates))
    if len(bad):
        raise DataError(_bad_date(raw.iloc[bad[0]], formats[bad[0]]))
    return raw.assign(date=dates)


def _parse_date_text(text: pd.Series) -> tuple[pd.Series, str | None]:
    """One file's date strings as naive UTC timestamps (NaT where unparseable), and the
    format of `_DATE_FORMATS` that parses the most of them (None if none parses any)."""
    best, best_fmt = None, None
    for fmt in _DATE_FORMATS:
        parsed = pd.to_datetime(text, format=fmt, errors="coerce", utc=True)
        if best is None or parsed.notna().sum() > best.notna().sum():
            best, best_fmt = parsed, fmt
        if best.notna().sum() == text.notna().sum():
            break
    return best.dt.tz_localize(None), best_fmt if best.notna().any() else None


def _bad_date(row: pd.Series, fmt: str | None) -> str:
    """Why `row`'s date did not parse, given its file's format (None: no format fits)."""
    where = _at(row, with_date=False)
    if pd.isna(row["date"]):
        return f"{where}: date is empty"
    tried = ", ".join(_DATE_FORMATS.values())
    name = Path(str(row["_file"])).name
    if fmt is None:
        return (
            f"{where}: date {row['date']!r} is not a date; none of the formats tried fits "
            f"the dates in {name}: {tried}"
        )
    return (
        f"{where}: date {row['date']!r} is not a date; expected {_DATE_FORMATS[fmt]} like "
        f"the other dates in {name} (formats tried: {tried})"
    )


def _filter_dates(
    bars: pd.DataFrame,
    lo: pd.Timestamp | None,
    hi: pd.Timestamp | None,
    order: list[str],
    source: str,
) -> tuple[pd.DataFrame, int]:
    """Rows inside [start, end] and how many were dropped; every symbol must keep some."""
    if lo is None and hi is None:
        return bars, 0
    kept = bars[_in_range(bars["date"], lo, hi)]
    if kept.empty:
        raise DataError(
            f"{source}: no rows left after the start/end filter "
            f"({_requested(lo, hi)}); the data covers {_span(bars['date'])}"
        )
    present = set(kept["symbol"].unique())
    for symbol in order:
        if symbol not in present:
            own = bars[bars["symbol"] == symbol]
            raise DataError(
                f"{own['_file'].iloc[0]}: {symbol} has no rows left after the "
                f"start/end filter ({_requested(lo, hi)}); its data covers "
                f"{_span(own['date'])}; leave it out with symbols=..."
            )
    return kept, len(bars) - len(kept)


def _parse_values(bars: pd.DataFrame) -> pd.DataFrame:
    """`bars` with prices and volume as checked float64.

    A bar with any empty price cell becomes all-NaN prices (filled later like an absent
    bar; `_empty` names the empty columns). An empty volume cell alone becomes 0 and is
    flagged in `_novol`. Without an adj close (no column, or all of a symbol's cells
    empty), adj_close = close.
    """
    numbers = pd.DataFrame(
        {name: pd.to_numeric(bars[name], errors="coerce").astype(np.float64) for name in NUMERIC}
    )
    given = bars[list(NUMERIC)].notna()
    _raise_first(
        bars,
        given & (numbers.isna() | np.isinf(numbers)),
        lambda column, value: f"{column} {value!r} is not a number",
    )
    bad_sign = (numbers <= 0).assign(volume=numbers["volume"] < 0)
    _raise_first(
        bars,
        bad_sign,
        lambda column, value: (
            f"{column} {value} is " + ("negative" if column == "volume" else "not > 0")
        ),
    )

    # Some vendors ship the column but leave it blank for symbols they do not adjust.
    blank_adj = numbers["adj_close"].isna().groupby(bars["symbol"]).transform("all")
    has_adj = bars["_adj"] & ~blank_adj
    numbers["adj_close"] = numbers["adj_close"].where(has_adj, numbers["close"])
    empty = numbers[list(PRICES)].isna()
    empty["adj_close"] &= has_adj
    labels = pd.Series("", index=bars.index)
    for name in PRICES:
        labels += np.where(empty[name], f"{name} ", "")
    missing = empty.any(axis=1)
    numbers.loc[missing, list(PRICES)] = np.nan
    return bars.assign(
        **{name: numbers[name] for name in PRICES},
        _adj=has_adj,
        volume=numbers["volume"].fillna(0.0),
        _empty=labels.str.strip().str.replace(" ", ", "),
        _novol=numbers["volume"].isna() & ~missing,
    )


def _raise_first(bars: pd.DataFrame, bad: pd.DataFrame, describe) -> None:
    """Raise for the first row (in file order) with a True in `bad`, naming its column."""
    flags = bad.to_numpy()
    rows = np.flatnonzero(flags.any(axis=1))
    if not len(rows):
        return
    column = bad.columns[flags[rows[0]]][0]
    row = bars.iloc[rows[0]]
    more = int(flags.sum()) - 1
    suffix = f" (and {more} more such value{'s' if more > 1 else ''})" if more else ""
    raise DataError(f"{_at(row)}: {describe(column, row[column])}{suffix}")


def _check_duplicates(bars: pd.DataFrame) -> None:
    """Raise if a (date, symbol) pair occurs twice, naming both lines."""
    repeated = bars.duplicated(["symbol", "date"], keep=False)
    if not repeated.any():
        return
    first = bars[repeated].iloc[0]
    same = bars[repeated & (bars["symbol"] == first["symbol"]) & (bars["date"] == first["date"])]
    lines = same["_line"].tolist()
    n_extra = int(bars.duplicated(["symbol", "date"]).sum())
    suffix = f" ({n_extra} duplicate rows in all)" if n_extra > 1 else ""
    unit = _unit(first["_file"])
    if first["_named"]:
        suffix += (
            f"; the file has no symbol column (symbol or ticker), so all its rows are "
            f"one symbol, {first['symbol']}, named after the file"
        )
    raise DataError(
        f"{first['_file']} {unit}s {lines[0]} and {lines[1]}: duplicate bar for "
        f"{first['symbol']} on {_fmt(first['date'])}{suffix}"
    )


# --- alignment -----------------------------------------------------------------------


def _align(
    bars: pd.DataFrame, order: list[str], max_fill: int, source: str
) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray], list[str]]:
    """Bars on the union of dates inside the symbols' common span, gaps forward-filled.

    Returns:
      dates [T], the Panel's price/volume arrays (float64 [T, A]) and report lines.
    """
    by_symbol = bars.groupby("symbol")
    firsts = by_symbol["date"].min().reindex(order)
    lasts = by_symbol["date"].max().reindex(order)
    lo, hi = firsts.max(), lasts.min()
    if lo > hi:
        raise DataError(_no_overlap(firsts, lasts, source))

    codes, all_dates = pd.factorize(bars["date"], sort=True)
    columns = pd.Index(order).get_indexer(bars["symbol"])
    in_span = (all_dates >= lo) & (all_dates <= hi)
    dates = pd.DatetimeIndex(all_dates[in_span], name=None)

    def grid(name: str, fill: bool = False) -> np.ndarray:
        """Column `name` scattered to [all dates, A] (NaN: no row), cut to the span."""
        out = np.full((len(all_dates), len(order)), np.nan)
        out[codes, columns] = bars[name].to_numpy(np.float64)
        # Filling over every date, not just the span, lets a symbol that lacks the
        # span's first date take its previous bar from before the span.
        return (pd.DataFrame(out).ffill().to_numpy() if fill else out)[in_span]

    close, adj_close = grid("close"), grid("adj_close")
    close_ff, adj_ff = grid("close", fill=True), grid("adj_close", fill=True)
    missing = np.isnan(close)
    lines = grid("_line")
    for j, symbol in enumerate(order):
        gap = _bad_gap(missing[:, j], np.isnan(close_ff[:, j]), max_fill)
        if gap is not None:
            raise DataError(_gap_message(bars, symbol, dates, lines[:, j], *gap, max_fill))

    arrays = {name: np.where(missing, close_ff, grid(name)) for name in ("open", "high", "low")}
    arrays["close"] = np.where(missing, close_ff, close)
    arrays["adj_close"] = np.where(missing, adj_ff, adj_close)
    arrays["volume"] = np.where(missing, 0.0, grid("volume"))

    notes = []
    n_outside = int(((bars["date"] < lo) | (bars["date"] > hi)).sum())
    if n_outside:
        notes.append(
            f"dropped {n_outside} rows outside the common date span {_fmt(lo)} .. {_fmt(hi)}"
        )
    filled = missing.sum(axis=0)
    if filled.any():
        notes.append(f"filled {filled.sum()} bars ({_counts(order, filled)})")
    novol = (grid("_novol") == 1.0).sum(axis=0)
    if novol.any():
        notes.append(
            f"set volume 0 on {novol.sum()} bars with an empty volume cell "
            f"({_counts(order, novol)})"
        )
    return dates, arrays, notes


def _bad_gap(
    missing: np.ndarray, unfillable: np.ndarray, max_fill: int
) -> tuple[int, int, bool] | None:
    """The first run of missing bars [T] that cannot be filled, or None.

    A run cannot be filled when it starts the series with no earlier bar (`unfillable`)
    or is longer than `max_fill`.

    Returns:
      (begin, stop, whether it is the first kind) of the run, or None.
    """
    edges = np.flatnonzero(np.diff(np.concatenate([[0], missing.astype(np.int8), [0]])))
    begins, stops = edges[0::2], edges[1::2]
    bad = np.flatnonzero((stops - begins > max_fill) | unfillable[begins])
    if not len(bad):
        return None
    begin = begins[bad[0]]
    return int(begin), int(stops[bad[0]]), bool(unfillable[begin])


def _gap_message(
    bars: pd.DataFrame,
    symbol: str,
    dates: pd.DatetimeIndex,
    lines: np.ndarray,
    begin: int,
    stop: int,
    unfillable: bool,
    max_fill: int,
) -> str:
    """Why bars [begin, stop) of `symbol` cannot be filled; `lines` [T] is NaN for no row."""
    own = bars[bars["symbol"] == symbol]
    file = own["_file"].iloc[0]
    empty = own.set_index("_line")["_empty"]  # the empty price columns, by line
    unit = _unit(file)
    if unfillable:
        if np.isnan(lines[begin]):
            return (
                f"{file}: {symbol} has no row on {_fmt(dates[begin])}, the first aligned date, "
                "and no earlier bar to forward-fill from; set start after it"
            )
        line = int(lines[begin])
        return (
            f"{file} {unit} {line} ({symbol}, {_fmt(dates[begin])}): {symbol}'s first "
            f"aligned bar has empty {empty[line]} and there is no earlier bar to forward-fill "
            "from; fix the row or set start after it"
        )
    causes = []
    absent = np.isnan(lines[begin:stop])
    if absent.any():
        causes.append(f"no row, so every column, on {int(absent.sum())} of those dates")
    present = lines[begin:stop][~absent].astype(int)
    if len(present):
        more = f" and {len(present) - 1} more rows" if len(present) > 1 else ""
        causes.append(f"empty {empty[present[0]]} on {unit} {present[0]}{more}")
    return (
        f"{file}: {symbol} is missing {stop - begin} consecutive bars from "
        f"{_fmt(dates[begin])} to {_fmt(dates[stop - 1])} ({'; '.join(causes)}), more than "
        f"max_fill={max_fill} (CLI --max-fill) allows; fix the data, raise max_fill or "
        "narrow start/end"
    )


def _no_overlap(firsts: pd.Series, lasts: pd.Series, source: str) -> str:
    """Message naming the symbol whose dates overlap the fewest others."""
    first, last = firsts.to_numpy(), lasts.to_numpy()
    overlaps = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
    symbol = firsts.index[int(np.argmin(overlaps.sum(axis=1)))]
    rest_f, rest_l = firsts.drop(symbol), lasts.drop(symbol)
    if len(rest_f) == 1:
        others = f"{rest_f.index[0]} ({_fmt(rest_f.iloc[0])} .. {_fmt(rest_l.iloc[0])})"
    elif rest_f.max() <= rest_l.min():
        others = f"the other symbols' common span {_fmt(rest_f.max())} .. {_fmt(rest_l.min())}"
    else:
        others = f"the other symbols ({_fmt(rest_f.min())} .. {_fmt(rest_l.max())})"
    return (
        f"{source}: {symbol} has dates {_fmt(firsts[symbol])} .. {_fmt(lasts[symbol])}, "
        f"which do not overlap {others}; leave it out with symbols=... or fix its data"
    )


def _adj_notes(bars: pd.DataFrame) -> list[str]:
    """Report line naming the symbols whose adj_close is their close."""
    lacking = sorted(bars.loc[~bars["_adj"], "symbol"].unique())
    if not lacking:
        return []
    if bars["_adj"].any():
        return [f"no adj close for {_names(lacking)}; their adj_close = close"]
    return ["no adj close in the data; adj_close = close"]


# --- message helpers -----------------------------------------------------------------


def _unit(file: str) -> str:
    """What a row number counts in `file`: editor lines of a CSV, else rows (Parquet, frames)."""
    return "line" if file.lower().endswith(_CSV_SUFFIXES) else "row"


def _at(row: pd.Series, *, with_date: bool = True) -> str:
    """Where a row is, for messages: `file line N (SYMBOL, DATE)`."""
    tags = [str(row["symbol"])] if pd.notna(row.get("symbol")) else []
    if with_date:
        tags.append(_fmt(row["date"]))
    where = f"{row['_file']} {_unit(row['_file'])} {row['_line']}"
    return f"{where} ({', '.join(tags)})" if tags else where


def _fmt(stamp: pd.Timestamp | None) -> str:
    """A timestamp as a date when it is midnight, else with its time of day."""
    return "(none)" if stamp is None else format_date(stamp)


def _span(dates: pd.Series) -> str:
    return f"{_fmt(dates.min())} .. {_fmt(dates.max())}"


def _requested(lo: pd.Timestamp | None, hi: pd.Timestamp | None) -> str:
    """The start/end options as given, e.g. `start=2024-01-01, end=2024-06-30`."""
    parts = [
        f"{name}={_fmt(value)}" for name, value in (("start", lo), ("end", hi)) if value is not None
    ]
    return ", ".join(parts)


def _names(names: list[str], limit: int = 10) -> str:
    """Names comma-joined, the list cut after `limit`."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _counts(order: list[str], counts: np.ndarray, limit: int = 10) -> str:
    """`AAPL 2, MSFT 1` for the symbols with a non-zero count."""
    pairs = [f"{symbol} {int(n)}" for symbol, n in zip(order, counts, strict=True) if n]
    return _names(pairs, limit)

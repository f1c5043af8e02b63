"""`python -m jaxtrade.plot RUN_DIR [RUN_DIR ...]`: training curves of one or more runs,
overlaid, as PNGs (host-only).

Reads each run's metrics.jsonl and writes `training.png` (return, validation, losses, PPO
health, costs; one colour per run), `actions.png` (the regime mix over training, one
stacked panel per run) and `hparams.png` (each hyperparameter over training, one panel
each, with the schedule's phase boundaries from the rows' `phase` column or, named,
from RUN_DIR/phases.jsonl, and the adjustments of RUN_DIR/hparams.jsonl marked). A
population run (RUN_DIR/population.jsonl) gets `population.png` instead
(`jaxtrade.population_plot`).
Matplotlib is driven through `Figure` and the Agg canvas, never pyplot.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jaxtrade.adjust import HPARAMS_FILE, SHAPE_KEYS
from jaxtrade.adjust import read as read_adjustments
from jaxtrade.config import RUNTIME_FIELDS
from jaxtrade.envs import NAMES
from jaxtrade.rows import ENV_FILE, VALIDATION_PREFIXES, number, split_row

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS_FILE = "metrics.jsonl"
DPI = 100
TRAINING_SIZE = (16.0, 10.0)  # inches: a 3 x 4 grid of panels
ACTIONS_WIDTH = 13.0  # inches
ACTIONS_RUN_HEIGHT = 2.6  # inches per run panel
ACTIONS_EXTRA_HEIGHT = 0.9  # inches: title and x label
ACTION_COLORS = (0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 1, 5)  # 12 distinct tab20 entries
PHASES_FILE = "phases.jsonl"  # one record per phase change (`jaxtrade.engine.run`)
HPARAM_KEYS = (*RUNTIME_FIELDS, *SHAPE_KEYS)  # hparams.png's panels, those a run logs
HPARAMS_COLUMNS = 4
HPARAMS_PANEL_SIZE = (4.0, 2.6)  # inches per panel
HPARAMS_EXTRA_HEIGHT = 0.8  # inches: the legend


class PlotError(Exception):
    """A run that cannot be read or a plot that cannot be written; one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run's metrics.jsonl, as read."""

    label: str  # legend entry: the run directory's name
    rows: tuple[dict[str, Any], ...]  # one per training iteration, in file order
    action_names: tuple[str, ...] = NAMES  # RUN_DIR/env.json's (the portfolio's regimes
    # for runs from before it was written)
    phases: tuple[PhaseStart, ...] = ()  # the schedule's phase changes, in order
    adjustments: tuple[dict[str, Any], ...] = ()  # hparams.jsonl's changes (`adjust.read`)


@dataclasses.dataclass(frozen=True)
class PhaseStart:
    """A phase boundary: where phase `name` starts, and why the phase before it ended."""

    timestep: float
    name: str
    reason: str = "end"  # "end": at its planned end; else why its transition rule fired

    @property
    def early(self) -> bool:
        return self.reason != "end"


@dataclasses.dataclass(frozen=True)
class Panel:
    """One scalar panel of training.png."""

    title: str
    key: str  # metrics.jsonl column (for validation panels: the metric without its prefix)
    validation: bool = False  # only rows with a validation walk; drawn with markers
    scale: str = "linear"  # "log": positive values on a log axis; "auto": log past 2 decades
    ref: float | None = None  # a dashed horizontal reference line
    percent: bool = False  # y values are fractions, labelled as percentages


PANELS = (  # row by row, 4 per row
    Panel("training episode return", "episode_return_mean"),
    Panel("validation score", "score", validation=True),
    Panel("validation total return", "total_return", validation=True, ref=0.0, percent=True),
    Panel("validation Sharpe", "sharpe", validation=True, ref=0.0),
    Panel("policy loss", "policy_loss", ref=0.0),
    Panel("value loss", "value_loss", scale="auto"),
    Panel("explained variance", "explained_variance", ref=0.0),
    Panel(f"entropy (dashed: uniform over {len(NAMES)})", "entropy", ref=math.log(len(NAMES))),
    Panel("approximate KL", "approx_kl", scale="log"),
    Panel("clip fraction", "clip_frac", percent=True),
    Panel("cost per step (cost_mean)", "cost_mean"),
    Panel("turnover per step (turnover_mean)", "turnover_mean"),
)
PANEL_COLUMNS = 4


def read_run(run_dir: Path) -> Run:
    """The rows of `run_dir/metrics.jsonl`; PlotError if missing, empty or malformed."""
    if not run_dir.is_dir():
        raise PlotError(f"{run_dir}: no such run directory")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise PlotError(f"{path}: not found")
    names = action_names(run_dir)
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    rows.append(_parse_row(line, f"{path}:{n}", len(names)))
    except UnicodeDecodeError as e:
        raise PlotError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise PlotError(f"{path}: {e.strerror or e}") from None
    if not rows:
        raise PlotError(f"{path}: no rows")
    try:
        adjustments = tuple(read_adjustments(run_dir))
    except (KeyError, TypeError, AttributeError) as e:
        raise PlotError(f"{run_dir / HPARAMS_FILE}: not hparams.jsonl records ({e!r})") from None
    return Run(run_dir.resolve().name or str(run_dir), tuple(rows), names,
               phase_starts(run_dir, rows), adjustments)


def phase_starts(run_dir: Path, rows: list[dict[str, Any]]) -> tuple[PhaseStart, ...]:
    """The phase boundaries: RUN_DIR/phases.jsonl's records ({"timestep", "name", "reason"}
    each), else where the rows' integer `phase` column changes (named by number)."""
    path = run_dir / PHASES_FILE
    if path.is_file():
        try:
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            return tuple(PhaseStart(float(r["timestep"]), str(r["name"]),
                                    str(r.get("reason", "end"))) for r in records)
        except (ValueError, KeyError, TypeError) as e:
            raise PlotError(f"{path}: not phases.jsonl records ({e!r})") from None
    starts, before = [], None
    for row in rows:
        phase = row.get("phase")
        if not isinstance(phase, int) or isinstance(phase, bool):
            continue
        if before is not None and phase != before[1]:
            starts.append(PhaseStart(before[0], f"phase {phase}"))
        # A row's iteration starts where the previous row's ended: there its phase began.
        before = (float(row["timesteps"]), phase)
    return tuple(starts)


def action_names(run_dir: Path) -> tuple[str, ...]:
    """The run's action labels from RUN_DIR/env.json, else the portfolio's regimes."""
    path = run_dir / ENV_FILE
    if not path.is_file():
        return NAMES
    try:
        return tuple(json.loads(path.read_text())["action_names"])
    except (ValueError, KeyError, TypeError) as e:
        raise PlotError(f"{path}: no list of action_names ({e})") from None


def _parse_row(line: str, where: str, n_actions: int = len(NAMES)) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise PlotError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(row, dict):
        raise PlotError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if number(row.get("timesteps")) is None:
        raise PlotError(f"{where}: no numeric 'timesteps'")
    for key in ("action_freq", *(p + "action_freq" for p in VALIDATION_PREFIXES)):
        freq = row.get(key)
        if freq is not None and (not isinstance(freq, list) or len(freq) != n_actions):
            raise PlotError(f"{where}: {key} is not a list of {n_actions} shares")
    return row


def series(run: Run, panel: Panel) -> tuple[list[float], list[float]]:
    """(timesteps, values) of `panel`'s column; rows without a numeric value are skipped."""
    xs, ys = [], []
    for row in run.rows:
        training, validation = split_row(row)
        y = number((validation if panel.validation else training).get(panel.key))
        if y is not None:
            xs.append(float(row["timesteps"]))
            ys.append(y)
    return xs, ys


def action_mix(run: Run) -> tuple[list[float], list[list[float]]]:
    """(timesteps, shares [n_actions][T]) over the rows with finite action_freq."""
    xs, shares = [], [[] for _ in run.action_names]
    for row in run.rows:
        freq = row.get("action_freq")
        if freq is None or not all(number(v) is not None and math.isfinite(v) for v in freq):
            continue
        xs.append(float(row["timesteps"]))
        for column, v in zip(shares, freq, strict=True):
            column.append(float(v))
    return xs, shares


def actions_figsize(n_runs: int) -> tuple[float, float]:
    """Size of actions.png in inches for `n_runs` panels."""
    return ACTIONS_WIDTH, ACTIONS_EXTRA_HEIGHT + ACTIONS_RUN_HEIGHT * n_runs


def _use_log(panel: Panel, ys: list[float]) -> bool:
    positive = [y for y in ys if math.isfinite(y) and y > 0]
    if panel.scale == "log":
        return bool(positive)
    if panel.scale == "auto" and positive and len(positive) == sum(map(math.isfinite, ys)):
        return max(positive) / min(positive) > 100.0
    return False


def _style_timesteps(ax):
    from matplotlib.ticker import EngFormatter

    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(alpha=0.3)


def training_figure(runs: list[Run]) -> Figure:
    """training.png's `Figure`: PANELS over timesteps, one colour per run, one legend on top."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    fig = Figure(figsize=TRAINING_SIZE, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(math.ceil(len(PANELS) / PANEL_COLUMNS), PANEL_COLUMNS, sharex=True)
    colors = colormaps["tab10"]
    for ax, panel in zip(axes.flat, PANELS, strict=True):
        drawn = []
        for i, run in enumerate(runs):
            xs, ys = series(run, panel)
            if not xs:
                continue
            drawn.extend(ys)
            dots = panel.validation or len(xs) == 1  # a lone point has no line to show it
            style = dict(marker="o", ms=3.5, lw=1.2) if dots else dict(lw=1.1)
            ax.plot(xs, ys, color=colors(i % 10), label=run.label, **style)
        ax.set_title(panel.title, fontsize=10)
        _style_timesteps(ax)
        if not drawn:
            ax.text(0.5, 0.5, "not logged", transform=ax.transAxes, ha="center", va="center",
                    color="0.5")
            continue
        if panel.ref is not None:
            ax.axhline(panel.ref, color="0.4", lw=0.8, ls="--", zorder=1)
        if _use_log(panel, drawn):
            ax.set_yscale("log", nonpositive="mask")
        elif panel.percent:
            ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    for ax in axes[-1]:
        ax.set_xlabel("timesteps")
    handles = [Line2D([], [], color=colors(i % 10), label=run.label) for i, run in enumerate(runs)]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(runs), 6), fontsize=9,
               frameon=False)
    return fig


def actions_figure(runs: list[Run]) -> Figure:
    """actions.png's `Figure`: each run's action mix (action_freq), stacked, over timesteps."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import PercentFormatter

    fig = Figure(figsize=actions_figsize(len(runs)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(runs), 1, sharex=True, squeeze=False)[:, 0]
    palette = colormaps["tab20"]
    names = runs[0].action_names
    if any(run.action_names != names for run in runs):
        raise PlotError("the runs have different actions: plot them separately")
    colors = ([palette(i) for i in ACTION_COLORS] if len(names) == len(ACTION_COLORS)
              else [palette(i % 20) for i in range(len(names))])
    mixes = [action_mix(run) for run in runs]
    steps = [x for xs, _ in mixes for x in xs]
    for ax, run, (xs, shares) in zip(axes, runs, mixes, strict=True):
        ax.set_title(f"{run.label}: action mix (share of training steps per regime)",
                     fontsize=10, loc="left")
        _style_timesteps(ax)
        ax.set_ylim(0.0, 1.0)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        if xs:
            ax.stackplot(xs, shares, labels=names, colors=colors, lw=0.0)
        else:
            ax.text(0.5, 0.5, "no action_freq logged", transform=ax.transAxes, ha="center",
                    va="center", color="0.5")
    if steps and min(steps) < max(steps):  # the panels share x: the range of all runs, no margins
        axes[-1].set_xlim(min(steps), max(steps))
    axes[-1].set_xlabel("timesteps")
    # Legend top-down in stack order, so it reads like the areas.
    patches = [Patch(facecolor=c) for c in colors]
    fig.legend(patches[::-1], list(names)[::-1], loc="outside right center", fontsize=9,
               frameon=False)
    return fig


def hparam_keys(runs: list[Run]) -> list[str]:
    """hparams.png's panels: the `HPARAM_KEYS` some run logs or adjusts, in that order."""
    keys = {k for run in runs for row in run.rows for k in row if number(row[k]) is not None}
    keys |= {c["key"] for run in runs for r in run.adjustments for c in r["changes"]}
    return [k for k in HPARAM_KEYS if k in keys]


def hparams_figsize(n_panels: int) -> tuple[float, float]:
    """Size of hparams.png in inches for `n_panels` panels."""
    columns = min(n_panels, HPARAMS_COLUMNS)
    rows = math.ceil(n_panels / columns)
    width, height = HPARAMS_PANEL_SIZE
    return width * columns, height * rows + HPARAMS_EXTRA_HEIGHT


_LABEL_BOX = dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75)


def _phase_line(early: bool, n_runs: int, run: int | None) -> dict[str, Any]:
    """The style of a phase boundary: dashed grey at a planned end, dotted red after an early
    one; with several runs, in the run's colour (`run`; None: grey, for the legend)."""
    from matplotlib import colormaps

    color = "tab:red" if early else "0.35"
    if n_runs > 1:
        color = "0.35" if run is None else colormaps["tab10"](run % 10)
    return dict(color=color, lw=1.3 if early else 0.9, ls=":" if early else "--")


def _short_reason(reason: str) -> str:
    """'plateau: no improvement over ...' -> 'plateau'."""
    return reason.split(":")[0].strip()


def hparams_figure(runs: list[Run]) -> Figure:
    """hparams.png's `Figure`: each of `hparam_keys` over timesteps (one colour per run),
    phase boundaries as vertical lines (dashed: a planned end; dotted: an early one, with
    its reason), adjustments as triangles (up or down) labelled with their rule."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    keys = hparam_keys(runs)
    fig = Figure(figsize=hparams_figsize(len(keys)), layout="constrained")
    FigureCanvasAgg(fig)
    columns = min(len(keys), HPARAMS_COLUMNS)
    axes = fig.subplots(math.ceil(len(keys) / columns), columns, sharex=True, squeeze=False)
    colors = colormaps["tab10"]
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for n, (ax, key) in enumerate(zip(axes.flat, keys, strict=False)):
        drawn = []
        for i, run in enumerate(runs):
            xs, ys = series(run, Panel(key, key))
            if xs:
                # A row's values hold through its iteration, which starts one iteration's
                # steps before the row's timesteps: steps from there, so that a value that
                # changes at a phase boundary changes on its line.
                spi = float(run.rows[0]["timesteps"]) / max(int(run.rows[0]["iteration"]), 1)
                xs = [x - spi for x in xs] + [xs[-1]]
                ys = [*ys, ys[-1]]
                drawn.extend(ys)
                ax.plot(xs, ys, color=colors(i % 10), lw=1.3, drawstyle="steps-post")
            for change in (c | {"timestep": r["timestep"]} for r in run.adjustments
                           for c in r["changes"] if c["key"] == key):
                up = change["new"] > change["old"]
                ax.plot([change["timestep"]], [change["new"]], ls="", marker="^" if up else "v",
                        ms=7, color=colors(i % 10), mec="black", mew=0.6, zorder=4)
                ax.annotate(change["rule"], (change["timestep"], change["new"]),
                            xytext=(5, 4 if up else -11), textcoords="offset points",
                            fontsize=6.5, color="0.15", bbox=_LABEL_BOX, zorder=5)
                drawn.append(change["new"])
            for start in run.phases:
                ax.axvline(start.timestep, zorder=1, **_phase_line(start.early, len(runs), i))
                if n < columns:  # names along the top row only
                    label = start.name + (f" (early: {_short_reason(start.reason)})"
                                          if start.early else "")
                    ax.text(start.timestep, 0.98, label, transform=ax.get_xaxis_transform(),
                            rotation=90, va="top", ha="right", fontsize=6.5, color="0.15",
                            bbox=_LABEL_BOX, zorder=5)
        ax.set_title(key, fontsize=10)
        ax.margins(y=0.18)  # room for the labels of adjustments at the extremes
        _style_timesteps(ax)
        if _use_log(Panel(key, key, scale="auto"), drawn):
            ax.set_yscale("log", nonpositive="mask")
    for ax in axes[-1]:
        ax.set_xlabel("timesteps")
    for j in range(len(keys), axes.size):  # a short last row: the x labels go above the gap
        axes.flat[j - columns].set_xlabel("timesteps")
        axes.flat[j - columns].xaxis.set_tick_params(labelbottom=True)
    handles = [Line2D([], [], color=colors(i % 10), label=run.label) for i, run in enumerate(runs)]
    if any(run.phases for run in runs):
        handles += [Line2D([], [], **_phase_line(False, len(runs), None), label="phase start"),
                    Line2D([], [], **_phase_line(True, len(runs), None),
                           label="phase start (the one before ended early)")]
    if any(run.adjustments for run in runs):
        handles.append(Line2D([], [], ls="", marker="^", mec="black", color="0.6",
                              label="adjustment (--adjust rules), labelled by its rule"))
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 6),
               fontsize=9, frameon=False)
    return fig


def _labels(runs: list[Run], dirs: list[Path]) -> list[Run]:
    """Runs whose directory names collide are labelled by the path as given."""
    names = [r.label for r in runs]
    return [r if names.count(r.label) == 1 else dataclasses.replace(r, label=str(d))
            for r, d in zip(runs, dirs, strict=True)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxtrade.plot",
        description="Plot the training curves of one or more runs (metrics.jsonl), overlaid.",
        allow_abbrev=False,
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="training run directories (legend: each directory's name)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output directory [FIRST_RUN_DIR/plots]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = _plot(args.run_dirs, args.out)
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _plot(run_dirs: list[Path], out: Path | None) -> list[Path]:
    from jaxtrade import population_plot

    # A population run (population.jsonl, `python -m jaxtrade.population`) has no
    # metrics.jsonl: its figure is population.png (one per population run).
    pops = [d for d in run_dirs if (d / population_plot.POPULATION_FILE).is_file()]
    singles = [d for d in run_dirs if d not in pops or (d / METRICS_FILE).is_file()]
    runs = _labels([read_run(d) for d in singles], singles)
    out = out if out is not None else run_dirs[0] / "plots"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PlotError(f"{out}: cannot create the output directory ({e.strerror or e})") from None
    written = []
    for d in pops:
        name = "population.png" if len(pops) == 1 else f"population-{d.resolve().name}.png"
        try:
            written.append(population_plot.plot(d, out / name))
        except population_plot.PopulationPlotError as e:
            raise PlotError(str(e)) from None
        except OSError as e:
            raise PlotError(f"{out / name}: cannot write ({e.strerror or e})") from None
    if not runs:
        return written
    figures = [(out / "training.png", training_figure)]
    if any(action_mix(run)[0] for run in runs):
        figures.append((out / "actions.png", actions_figure))
    if hparam_keys(runs):
        figures.append((out / "hparams.png", hparams_figure))
    for path, figure in figures:
        try:
            figure(runs).savefig(path, dpi=DPI)
        except OSError as e:
            raise PlotError(f"{path}: cannot write ({e.strerror or e})") from None
    return written + [path for path, _ in figures]


if __name__ == "__main__":
    sys.exit(main())

"""population.png of a population run (`python -m jaxtrade.plot RUN_DIR`, host-only): the
members' validation scores over the intervals and one panel per perturbed hyperparameter,
from RUN_DIR/population.jsonl (`jaxtrade.population_run`).

One colour per slot; a slot's line breaks where a copy took it, and the copy is marked (a
triangle where it starts, a dashed line from the parent it copied, labelled with the new
id when there are few members). A member flagged non-finite is a cross. Matplotlib is
driven through `Figure` and the Agg canvas, never pyplot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

POPULATION_FILE = "population.jsonl"  # per interval, a lineage record per member
COLUMNS = 3
PANEL_SIZE = (4.6, 2.8)  # inches per hyperparameter panel
SCORE_HEIGHT = 3.6  # inches: the score panel, the whole width
EXTRA_HEIGHT = 0.8  # inches: the legend
LABELLED = 8  # copies are labelled with their new id up to this many members


class PopulationPlotError(ValueError):
    """population.jsonl cannot be read; one line."""


def read_records(path: Path) -> list[list[dict[str, Any]]]:
    """population.jsonl's records grouped by interval, in interval order, each by slot
    (an empty file: none)."""
    by_interval: dict[int, dict[int, dict]] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise PopulationPlotError(f"{path}: cannot read ({e.strerror or e})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            by_interval.setdefault(int(rec["interval"]), {})[int(rec["slot"])] = rec
        except (ValueError, KeyError, TypeError) as e:
            raise PopulationPlotError(f"{path}:{n}: not a population record ({e})") from None
    return [[recs[s] for s in sorted(recs)] for _, recs in sorted(by_interval.items())]


def perturbed_keys(intervals: list[list[dict]]) -> list[str]:
    """The hyperparameters that differ between members or intervals, in record order."""
    values: dict[str, set] = {}
    for recs in intervals:
        for r in recs:
            for k, v in r["hparams"].items():
                values.setdefault(k, set()).add(v)
    return [k for k, vs in values.items() if len(vs) > 1]


def population_figure(intervals: list[list[dict]], title: str = "") -> Figure:
    """population.png's `Figure` (module docstring). `intervals`: `read_records`'s."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    keys = perturbed_keys(intervals)
    columns = max(1, min(len(keys), COLUMNS))
    rows = math.ceil(len(keys) / columns) if keys else 0
    width = PANEL_SIZE[0] * max(columns, 2)
    fig = Figure(figsize=(width, SCORE_HEIGHT + PANEL_SIZE[1] * rows + EXTRA_HEIGHT),
                 layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(1 + rows, columns,
                            height_ratios=[SCORE_HEIGHT] + [PANEL_SIZE[1]] * rows)
    score_ax = fig.add_subplot(grid[0, :])
    hp_axes = [fig.add_subplot(grid[1 + i // columns, i % columns], sharex=score_ax)
               for i in range(len(keys))]
    n_slots = len(intervals[0])
    colors = colormaps["tab10" if n_slots <= 10 else "tab20"]
    color = lambda slot: colors(slot % colors.N)  # noqa: E731
    ends = [recs[0]["timesteps"] for recs in intervals]  # per member, end of each interval
    starts = [0, *ends[:-1]]

    # Scores: a point per member and interval at the interval's end, lines per model.
    for slot in range(n_slots):
        xs, ys, ident = [], [], None
        for t, recs in enumerate(intervals):
            if slot >= len(recs):
                continue
            r = recs[slot]
            if r["id"] != ident and xs:
                score_ax.plot(xs, ys, color=color(slot), lw=1.4, marker="o", ms=3.5)
                xs, ys = [], []
            ident = r["id"]
            score = r["score"]
            xs.append(ends[t])
            ys.append(math.nan if score is None else score)
            if r["nonfinite"]:
                score_ax.plot([ends[t]], [0.0 if score is None else score], ls="", marker="x",
                              ms=8, color="tab:red", mew=2, zorder=5)
        if xs:
            score_ax.plot(xs, ys, color=color(slot), lw=1.4, marker="o", ms=3.5)
    # Copies: from the parent's score where it was copied to the child's first score.
    for t, recs in enumerate(intervals[:-1]):
        nxt = intervals[t + 1]
        for r in recs:
            copy = r["replaced_by"]
            if copy is None:
                continue
            parent = recs[copy["source_slot"]]
            child = nxt[r["slot"]]
            if parent["score"] is None or child["score"] is None:
                continue
            score_ax.plot([ends[t], ends[t + 1]], [parent["score"], child["score"]],
                          color=color(r["slot"]), lw=1.0, ls="--", zorder=2)
            score_ax.plot([ends[t + 1]], [child["score"]], ls="", marker="^", ms=9,
                          color=color(r["slot"]), mec="black", mew=0.7, zorder=4)
            if n_slots <= LABELLED:
                score_ax.annotate(f"id {copy['id']} <- {copy['parent']}",
                                  (ends[t + 1], child["score"]), xytext=(5, -11),
                                  textcoords="offset points", fontsize=7, color="0.15")
    score_ax.set_title("validation score of each member (copies: triangles, dashed from "
                       "the parent)", fontsize=10)
    score_ax.set_ylabel("val score")
    score_ax.margins(y=0.12)  # room for the copies' labels at the extremes

    # Hyperparameters: each model's value over the intervals it trained with it.
    for ax, key in zip(hp_axes, keys, strict=True):
        values = []
        for t, recs in enumerate(intervals):
            for r in recs:
                v = r["hparams"][key]
                values.append(v)
                ax.plot([starts[t], ends[t]], [v, v], color=color(r["slot"]), lw=1.6,
                        solid_capstyle="butt")
                copy = r["replaced_by"]
                if copy is not None:  # after the last interval too: the copy to train next
                    parent_v = recs[copy["source_slot"]]["hparams"][key]
                    new_v = copy["hparams"][key]
                    values.append(new_v)
                    ax.plot([ends[t], ends[t]], [parent_v, new_v], color=color(r["slot"]),
                            lw=1.0, ls="--")
                    ax.plot([ends[t]], [new_v], ls="", marker="^", ms=7,
                            color=color(r["slot"]), mec="black", mew=0.6, zorder=4)
        positive = [v for v in values if v > 0]
        if positive and len(positive) == len(values) and max(positive) / min(positive) > 8:
            ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
    for ax in [score_ax, *hp_axes]:
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(alpha=0.3)
    for ax in hp_axes[-columns:] if hp_axes else [score_ax]:
        ax.set_xlabel("timesteps per member")
    handles = [Line2D([], [], color=color(s), lw=1.6, label=f"slot {s}") for s in range(n_slots)]
    handles += [Line2D([], [], ls="", marker="^", ms=8, color="0.6", mec="black",
                       label="copy (exploit/explore)")]
    if any(r["nonfinite"] for recs in intervals for r in recs):
        handles.append(Line2D([], [], ls="", marker="x", color="tab:red", mew=2,
                              label="non-finite"))
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 8),
               fontsize=9, frameon=False, title=title or None)
    return fig


def plot(run_dir: Path, path: Path) -> Path:
    """population.png of `run_dir` written to `path`."""
    intervals = read_records(Path(run_dir) / POPULATION_FILE)
    if not intervals:
        raise PopulationPlotError(f"{Path(run_dir) / POPULATION_FILE}: no records")
    population_figure(intervals, title=Path(run_dir).name).savefig(path, dpi=100)
    return path

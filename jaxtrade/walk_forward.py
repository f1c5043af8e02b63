"""Walk-forward folds: K members of one population, member k trained and validated on the bars
before fold k and tested on fold k (`python -m jaxtrade.population --walk-forward K`).

The layout (`layout`), on a market of T feature-complete bars split as any run's (train
[0, val_start), validation [val_start, test_start), test [test_start, T), by
--val-fraction/--test-fraction or --split-dates):

    the test range's S = T - 1 - test_start steps (the steps of evaluate's pass over it)
    are cut into K consecutive blocks: c_j = test_start + floor(j * S / K), j = 0..K,
    so c_0 = test_start and c_K = T - 1.
    fold k (k = 1..K):   test        trades at bars [c_{k-1}, c_k), marked up to bar c_k
                         validation  the V = test_start - val_start bars before it:
                                     [c_{k-1} - V, c_{k-1})
                         train       everything before that: [0, c_{k-1} - V)

Fold 1 is the run's own split (its test range cut to the first block); each later fold
moves forward by a block, its training range growing (an expanding window). The folds'
test blocks are consecutive and do not overlap, so their passes concatenate into one
out-of-sample series over the whole test range (`jaxtrade.walk_forward_report`).

What member k reads (the guarantee `tests/test_walk_forward.py` proves by poisoning bars):
its training episodes start in [1, train_hi - 1 - L] and end by `end = train_hi - 1`
(per-member `EnvParams` start bounds, vmapped over members: one compiled program), and its
validation walk trades at [c_{k-1} - V, c_{k-1} - 2] and marks at c_{k-1} - 1. So nothing
member k learns from or is chosen by touches a bar at or after its fold's start c_{k-1}.
The features are causal and normalised with statistics of fold 1's training range, which
lies before every fold. The run's devices hold the bars before the last fold's start; the
last test block is withheld as a single run's test range is.

Walk-forward members train independently: the folds' data differ, so comparing their
validation scores says nothing about whose weights are better, and PBT's exploit/explore
is off (no member is ever copied; population.jsonl records no `replaced_by`). Every member
trains with the config's hyperparameters (no sampling), so the concatenated series is one
recipe walked forward, each fold with its own seed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrade.data.panel import format_date
from jaxtrade.errors import UsageError

WALK_FORWARD_FILE = "walk_forward.json"  # in the run directory: the folds, bars and dates
MIN_TEST_STEPS = 2  # a fold's test pass: at least this many steps (a return to compare)


@dataclasses.dataclass(frozen=True)
class Fold:
    """One fold's bars, each range [lo, hi) of the whole market's bar indices."""

    index: int  # k, 1-based
    train: tuple[int, int]  # [0, validation lo)
    validation: tuple[int, int]  # the V bars before the fold's start
    test: tuple[int, int]  # the bars its test pass trades at; the pass marks up to `hi`

    @property
    def start(self) -> int:
        """The fold's first test bar: member k never reads this bar or a later one."""
        return self.test[0]


def layout(n_bars: int, val_start: int, test_start: int, k: int, episode_length: int
           ) -> tuple[Fold, ...]:
    """The K folds of a market of `n_bars` bars split at `val_start` and `test_start` (module
    docstring). Pure arithmetic.

    Raises:
      UsageError: k < 2, no validation range (V < 2 bars), a test block of fewer than
        `MIN_TEST_STEPS` steps, or a fold whose training range holds no episode.
    """
    if k < 2:
        raise UsageError(f"--walk-forward K needs K >= 2 folds, got {k}")
    v = test_start - val_start
    if v < 2:
        raise UsageError("--walk-forward chooses each fold's model on the validation bars "
                         "just before it, but this run has no validation range; give it one "
                         "with --val-fraction or --split-dates")
    steps = n_bars - 1 - test_start
    if steps // k < MIN_TEST_STEPS:
        raise UsageError(f"--walk-forward {k}: the test range has {steps} steps, fewer than "
                         f"{MIN_TEST_STEPS} per fold; use fewer folds or a larger "
                         f"--test-fraction")
    cuts = [test_start + (j * steps) // k for j in range(k + 1)]
    folds = tuple(Fold(j + 1, (0, cuts[j] - v), (cuts[j] - v, cuts[j]), (cuts[j], cuts[j + 1]))
                  for j in range(k))
    need = episode_length + 2  # as `build_market`: an episode's bars and its final mark
    if folds[0].train[1] < need:
        raise UsageError(f"--walk-forward: fold 1 trains on {folds[0].train[1]} bars, too few "
                         f"for one episode of {episode_length} steps (needs {need}); shorten "
                         f"--episode-length or hold out less")
    return folds


def folds_of_market(market, k: int, episode_length: int) -> tuple[Fold, ...]:
    """`layout` of a whole market (test range included: `load_run_market(cfg, test=True)`)."""
    return layout(market.n_bars, market.val_start, market.test_start, k, episode_length)


def held_market(market, folds: tuple[Fold, ...]):
    """What a walk-forward run's devices hold: the bars before the last fold's start (its
    test block withheld, as a single run's test range); train and validation ranges stay
    fold 1's (the env's defaults; each member's own are in its env params)."""
    return dataclasses.replace(market, test_start=folds[-1].start).without_test()


def member_params(env, env_config, folds: tuple[Fold, ...]):
    """Training env params with the members' start bounds, [K] where they differ (vmap with
    `member_axes`): member k's episodes start in [1, train_hi - 1 - L] and read no bar
    after `end = train_hi - 1`, as `PortfolioEnv.make_params("train")` bounds a single run
    whose training range is fold k's. Host-side.

    Raises:
      UsageError: the env's own training range is not fold 1's (a market split otherwise).
    """
    base = env.make_params("train", **env_config.params_kwargs())
    length = int(base.episode_length)
    hi = np.asarray([f.train[1] - 1 for f in folds], np.int32)
    if int(base.end) != hi[0] or int(base.start_max) != hi[0] - length:
        raise UsageError(f"walk-forward: the env trains on bars up to {int(base.end)}, fold 1 "
                         f"on bars up to {hi[0]}")
    n = len(folds)
    i32 = lambda x: jnp.asarray(x, jnp.int32)
    return base.replace(start_min=i32(np.full((n,), int(base.start_min))),
                        start_max=i32(hi - length), end=i32(hi))


def member_axes(params):
    """`vmap` in_axes of `member_params`' output: 0 for the start bounds, None elsewhere."""
    axes = jax.tree.map(lambda _: None, params)
    return axes.replace(start_min=0, start_max=0, end=0)


def validation_params(env, env_config, folds: tuple[Fold, ...]) -> list:
    """Per fold, the env params of its validation walk (`evaluation.pass_params`): trades at
    [lo, hi - 2], marks at hi - 1, the bar before the fold's start. Every fold's pass has
    V - 1 steps, so one compiled evaluator serves them all."""
    from jaxtrade.evaluation import pass_params

    return [pass_params(env, env_config, f.validation[0], f.validation[1] - 1) for f in folds]


def make_fold_evaluators(network, env, env_config, folds: tuple[Fold, ...],
                         bars_per_year: float, seed: int, params_like) -> list:
    """Per fold, `evaluate(params, health) -> metrics` of its validation walk: one program
    (`evaluation.make_evaluator` of fold 1's slice) run on each fold's pass params."""
    from jaxtrade.evaluation import make_evaluator

    lo, hi = folds[0].validation
    run = make_evaluator(network, env, env_config, lo, hi - 1, bars_per_year, seed,
                         params_like)
    passes = validation_params(env, env_config, folds)
    return [lambda params, health, p=p: run(params, health, p) for p in passes]


def _span(dates, lo: int, hi: int) -> dict:
    """Bars [lo, hi) as a range record (`Market.span`'s keys)."""
    first, last = dates[lo], dates[hi - 1]
    return {"start": format_date(first), "end": format_date(last), "bars": hi - lo,
            "first": first.isoformat(), "last": last.isoformat()}


def record(folds: tuple[Fold, ...], market) -> dict:
    """`walk_forward.json`: every fold's ranges as bars [lo, hi) and dates of the whole
    `market` (test range included); a test block's pass marks its last trade at bar hi
    (`marked_until`), the next block's first bar.
    Also, for the run's files and banner (not in walk_forward.json): `market`, the whole
    market's market.json record, and `market_line`, its description."""
    from jaxtrade.data.market import market_record

    dates = market.dates
    return {"folds": len(folds),
            "layout": "expanding window; K blocks of the test range's steps; validation: the "
                      "validation range's length of bars before each fold",
            "members": [{
                "fold": f.index, "slot": f.index - 1,
                "train": {**_span(dates, *f.train), "lo": f.train[0], "hi": f.train[1]},
                "validation": {**_span(dates, *f.validation), "lo": f.validation[0],
                               "hi": f.validation[1]},
                "test": {**_span(dates, *f.test), "lo": f.test[0], "hi": f.test[1],
                         "steps": f.test[1] - f.test[0],
                         "marked_until": format_date(dates[f.test[1]])},
            } for f in folds],
            "market": market_record(market), "market_line": market.describe()}


def read_folds(run_dir: Path) -> tuple[Fold, ...]:
    """The folds a run recorded in walk_forward.json (`record`)."""
    path = Path(run_dir) / WALK_FORWARD_FILE
    try:
        members = json.loads(path.read_text())["members"]
        return tuple(Fold(m["fold"], (m["train"]["lo"], m["train"]["hi"]),
                          (m["validation"]["lo"], m["validation"]["hi"]),
                          (m["test"]["lo"], m["test"]["hi"])) for m in members)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not a walk-forward record ({e})") from None


def banner_lines(fold_record: dict) -> list[str]:
    """The banner's walk-forward lines (from `record`): a line per fold with its dates."""
    lines = [f"walk-forward: {fold_record['folds']} folds, one member each, trained "
             f"independently (no exploit/explore) with the config's hyperparameters; member k "
             f"never reads a bar at or after its fold's first test bar"]
    for m in fold_record["members"]:
        tr, va, te = m["train"], m["validation"], m["test"]
        lines.append(f"  fold {m['fold']}: train {tr['start']} .. {tr['end']} ({tr['bars']} "
                     f"bars) | validation {va['start']} .. {va['end']} ({va['bars']}) | test "
                     f"{te['start']} .. {te['end']} ({te['steps']} steps)")
    return lines

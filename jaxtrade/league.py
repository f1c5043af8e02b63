"""`python -m jaxtrade.league`: one round of the weekly plan of explorers, refiners and a
champion, each category trained as a population, and the model archive updated (host-only).

The reference's plan (budgets in timesteps per member, all flags):

    explorers  15 new models, hyperparameters sampled around the config's   x 1.5M
    refiners    5 best archived models, continued at learning rate x 0.5    x 2M more
    champion    1 best archived model, continued at learning rate x 0.3     x 3M more

so 22.5M / 10M / 3M timesteps: the 64 / 28 / 8 % split, which the banner and the summary
report. Refiners and the champion are chosen from the archive as it stands when the
round starts (a first round, on an empty archive, has explorers only). Each category is a
`python -m jaxtrade.population` run (`jaxtrade.population_run`: one compiled program for
its members, PBT every --pbt-interval, validation scores) in the round's directory; a
continued category starts from the archived models' parameters and optimizer states
(`archive.read_learned`, `population.continue_population`; a model trained with other
shapes is a one-line error before anything trains), with fresh envs. Its learning rates
are its base rates (archived / the lr scale of the category it was archived from, so a
continuation continued again is not scaled twice) x the category's scale, and PBT within
the category keeps them within `population.BOUNDS` x that scale.

Each category of each round has its own seed, the config's with the round number and the
category's index folded in (`category_seed`; league.jsonl and the archived entries'
`league.seed` record it): new explorers' weights and sampled hyperparameters, continued
models' envs and RNG, PBT draws. The config's seed keeps seeding the validation walks, so
scores compare across rounds.

When a category completes, its final members are archived (`archive.add_population`),
the continued ones linked to the models they continue (generation + 1, timesteps
added). A continuation whose validation score falls more than --rollback (10%) below
its parent's archived score, `score < parent - 0.1 x |parent|`, is rolled back: not
archived, so the parent stays the entry; a line says so. After the round every model of
the league in the archive counts every member validation of the league so far as the
trials of its deflated Sharpe ratio (the champion is chosen among all of them again).
A category that diverges stops the round (exit status 1); what completed stays archived.

Data each round (`RoundData`):

* a market with a time axis (`--market fixed`, `--data`; the funding env's hours):
  `--window BARS` trains on a window of BARS bars of the training range, the bars its
  episodes reach: its last BARS bars (the latest data, which move on when the data file
  grows), or with `--window-step S` the window of round r ends BARS + S x (r - 1) bars
  into the range (history replayed round by round). Explorers train on the window;
  continued models spend --recent-mix (70%) of their iterations on it and the rest on
  the training bars before it, both as ranges of episode starts and a last bar (`end`,
  which bootstrap paths respect too; an episode started in the older bars may run on
  into the window). A full PBT interval is two calls of fixed lengths round(mix x k) and
  the rest (`mix_calls`: two compiled programs), a shorter last interval settles the
  drift. Without --window every category trains on the whole training range.
* procedural worlds: no time axis, so --window is refused. Round r trains on training
  pool generation r - 1 (fresh worlds: the round's "new data"; the validation and test
  worlds stay the run's); continued models spend --recent-mix of their iterations on it
  and the rest on the previous round's pool. Where a call's pool differs from the
  previous call's, every env starts a fresh episode (`FreshEpisodes`): no episode runs
  on across two worlds.

The validation range (worlds) is the same every round, so scores compare across rounds
as long as the data flags stay the same (the rollback and the trend assume it).

Asset subsets (`--explorer-assets K`; the portfolio env on a market with dates, the set
encoder): each explorer trains on its own K of the market's A assets, a uniformly random
K drawn per member from the category's seed (`asset_subsets`). Every category of the
round then reads the market with an asset mask (`Market.with_all_assets`: a flag per
asset in the observation, which the set encoder pools by), so that a refiner's
observation is shaped as the explorer's it continues; an explorer's env params carry its
own mask, `market.asset_mask` [N, T, A] vmapped over members (`subset_params`, the
members' `env_axes`; prices and features stay one shared copy), so the regimes never
weigh an asset outside its subset and its observation flags those as absent. A PBT copy
keeps its slot's envs and so its slot's assets. Refiners and the champion train on every
asset (an all-true mask). Every member, an explorer too, is validated on every asset:
the archive ranks all the league's models by one score (refiners and the champion are
chosen by it, the rollback compares a continuation with its parent by it, the deflated
Sharpe counts those validations as trials), and a model is continued and deployed on the
whole universe, so the score to choose by is the one on it; a score on an explorer's own
subset would compare K assets with A. league.jsonl records K (`explorer_assets`) and per
category the symbols of each slot (`assets`), an archived entry its slot's as
`league.assets`. A later round without the flag still reads the market with asset flags
when a model it continues was archived with them. Refused in one line: procedural worlds
(each world draws its own assets), other envs, the flat encoder (it reads every asset's
features, those outside a subset too), K outside [1, A - 1], and a model archived
without asset flags continued in a round with them (its observation is narrower).

Regime specialists (`--regime-specialists`; a market with dates, the portfolio env;
procedural worlds and the funding env are refused in one line): after the round, the
league's archived models (the best --regime-candidates M by overall validation score, or
all) are walked on the validation bars with the validation walk, their per-step returns
split by the market regime detected at each step from the bars before it
(`jaxtrade.regime_detector`: trend and volatility of the equal-weight index over
--regime-lookback bars, thresholds fitted on the training range), and per regime the best
validation Sharpe over its steps chooses the specialist (a regime with fewer than
--regime-min-steps steps keeps the overall champion; `jaxtrade.specialists`). The choice,
per-regime scores and step counts and the trials (candidates x regimes chosen for) go to
the round's record (`specialists`) and a table; `jaxtrade.load_policy("league:DIR")`
routes decisions by it.

A league directory (--league-dir, default ckpt/league) holds

    league.jsonl             one record per round: settings, data window, per category
                             members, seed, timesteps, wall seconds, archived ids,
                             rollbacks, parent -> child scores; the champion, the best
                             scores and the league's trial count; with
                             --regime-specialists the round's specialists
    league.png               best validation score by round, compute by category
    round-<R>/<category>/    the category's population run directory

and after each round the league prints generation over generation (do continued models
beat their parents, this round and all rounds), champion longevity (rounds the archive's
best model has held, and its lineage), the round-over-round best validation score and
its trend, and the compute spent per category (timesteps, share, wall seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtrade import config as cfgmod
from jaxtrade import population_run, train
from jaxtrade.data import DataError
from jaxtrade.errors import UsageError
from jaxtrade.regime_detector import DEFAULT_KIND, DEFAULT_LOOKBACK, KINDS, RegimeError
from jaxtrade.specialists import DEFAULT_MIN_STEPS

DEFAULT_DIR = "ckpt/league"
DEFAULT_ARCHIVE = "ckpt/archive"
RECORDS_FILE = "league.jsonl"
PLOT_FILE = "league.png"
DEFAULT_MIX = 0.7  # share of a continued model's iterations on the recent data
DEFAULT_ROLLBACK = 0.1  # a continuation more than 10% below its parent's score is dropped


@dataclasses.dataclass(frozen=True)
class Category:
    """One category of a round: how many members, their budget and learning rate."""

    name: str  # explorers | refiners | champion
    members: int  # explorers: new models; the others: the best archived models, at most
    timesteps: int  # per member, rounded to whole iterations
    lr_scale: float  # both learning rates of a continued model x this; 1 for explorers

    @property
    def continued(self) -> bool:
        return self.name != "explorers"


DEFAULTS = (Category("explorers", 15, 1_500_000, 1.0),
            Category("refiners", 5, 2_000_000, 0.5),
            Category("champion", 1, 3_000_000, 0.3))


def build_parser() -> argparse.ArgumentParser:
    """`jaxtrade.train`'s flags (the config of every category) with the PBT and league
    flags."""
    p = train.build_parser()
    p.prog = "python -m jaxtrade.league"
    p.description = ("One round of the league: explorers (new models), refiners (the best "
                     "archived models, continued) and a champion (the best, continued more "
                     "gently), each trained as a population; the archive is updated and the "
                     "round summarised.")
    g = p.add_argument_group("population-based training (within each category)")
    population_run.add_pbt_flags(g, "a category's members")
    g = p.add_argument_group("the league")
    g.add_argument("--league-dir", metavar="DIR", default=DEFAULT_DIR,
                   help=f"the league's records and round directories [{DEFAULT_DIR}]")
    g.add_argument("--archive", metavar="DIR", default=DEFAULT_ARCHIVE,
                   help=f"the model archive the round reads and updates [{DEFAULT_ARCHIVE}]")
    for c in DEFAULTS:
        one = c.name[:-1] if c.name.endswith("s") else c.name
        flag = "champions" if c.name == "champion" else c.name
        g.add_argument(f"--{flag}", type=int, metavar="N", dest=c.name,
                       help=f"{c.name}: members [{c.members}]" + (
                           "; the best N archived models" if c.continued else ""))
        g.add_argument(f"--{one}-timesteps", type=int, metavar="T", dest=f"{c.name}_timesteps",
                       help=f"timesteps per {one} [{c.timesteps:,}]")
        if c.continued:
            g.add_argument(f"--{one}-lr", type=float, metavar="X", dest=f"{c.name}_lr",
                           help=f"learning rates of a {one} x X [{c.lr_scale}]")
    g.add_argument("--window", type=int, metavar="BARS",
                   help="train on the last BARS bars of the training range (markets with "
                        "dates; not worlds, whose rounds take fresh worlds) [the whole range]")
    g.add_argument("--window-step", type=int, metavar="BARS", default=0,
                   help="with --window: round r's window ends BARS x (r - 1) bars after the "
                        "first window (history replayed round by round) [0: at the training "
                        "range's end]")
    g.add_argument("--recent-mix", type=float, metavar="F", default=DEFAULT_MIX,
                   help=f"share of a continued model's iterations on the recent data, the "
                        f"rest on older data [{DEFAULT_MIX}]")
    g.add_argument("--rollback", type=float, metavar="F", default=DEFAULT_ROLLBACK,
                   help=f"a continued model scoring below parent - F x |parent| on "
                        f"validation is not archived (its parent stays) [{DEFAULT_ROLLBACK}]")
    g.add_argument("--keep", type=int, metavar="K",
                   help="after the round, keep the K best models of the archive [all]")
    g.add_argument("--explorer-assets", type=int, metavar="K",
                   help="each explorer trains on its own random K of the market's assets "
                        "(drawn from the category's seed); refiners and the champion on all "
                        "of them; every member is validated on all of them (the portfolio "
                        "env on a market with dates, --encoder set) [all assets]")
    g = p.add_argument_group("regime specialists (markets with dates, the portfolio env)")
    g.add_argument("--regime-specialists", action="store_true",
                   help="after the round, choose per market regime (detected from recent "
                        "bars) the league model with the best validation Sharpe over that "
                        "regime's steps; load them with "
                        "jaxtrade.load_policy(\"league:LEAGUE_DIR\")")
    g.add_argument("--regime-kind", choices=tuple(KINDS), default=None,
                   help="four: bull, bear, high_vol, low_vol; trend: bull, bear; "
                        "volatility: high_vol, low_vol [four]")
    g.add_argument("--regime-lookback", type=int, metavar="BARS",
                   help=f"trailing bars of the regime detector [{DEFAULT_LOOKBACK}]")
    g.add_argument("--regime-min-steps", type=int, metavar="N",
                   help=f"validation steps a regime needs to choose its own specialist; "
                        f"fewer: the overall champion [{DEFAULT_MIN_STEPS}]")
    g.add_argument("--regime-candidates", type=int, metavar="M",
                   help="compare the M best league models by overall validation score "
                        "[all the league's archived models]")
    return p


# Flags of `python -m jaxtrade.train` a league round does not take, and why.
_REFUSED = {
    "run_dir": "--run-dir: a round's runs go under --league-dir",
    "resume": "--resume: a league round is not resumed; an interrupted round keeps what "
              "it archived, and the next round starts afresh",
    "timesteps": "--timesteps: each category has its budget (--explorer-timesteps, "
                 "--refiner-timesteps, --champion-timesteps)",
    "episodes": "--episodes: each category has its budget in timesteps",
    "iterations": "--iterations: each category has its budget in timesteps",
    "checkpoint": "--checkpoint: refiners and the champion start from the archive",
    "weights_only": "--weights-only is not supported by python -m jaxtrade.league",
    "use_recommendations": "--use-recommendations is not supported by a league round",
    "on_mismatch": "--on-mismatch: an archived model of other shapes is an error",
    "lr_multiplier": "--lr-multiplier: use --refiner-lr and --champion-lr",
    "reset_on_plateau": "--reset-optimizer-on-plateau is not supported by a league round",
    "coordinator": "--coordinator: a league round runs in one process",
    "num_processes": "--num-processes: a league round runs in one process",
    "process_id": "--process-id: a league round runs in one process",
    "eval_every": "--eval-every: members are validated at every --pbt-interval",
    "save_every": "--save-every: populations are saved at every --pbt-interval",
    "iterations_per_call": "--iterations-per-call: an interval is one call",
    "early_stop": "--early-stop is not supported by a league round",
}


def categories(args: argparse.Namespace) -> list[Category]:
    """The round's categories from the flags (refusing bad values in one line)."""
    out = []
    for c in DEFAULTS:
        one = c.name[:-1] if c.name.endswith("s") else c.name
        flag = "champions" if c.name == "champion" else c.name
        n = getattr(args, c.name)
        n = c.members if n is None else n
        if n < 0:
            raise UsageError(f"--{flag} must be at least 0, got {n}")
        t = getattr(args, f"{c.name}_timesteps")
        t = c.timesteps if t is None else t
        if t < 1:
            raise UsageError(f"--{one}-timesteps must be at least 1, got {t}")
        lr = getattr(args, f"{c.name}_lr", None) if c.continued else None
        lr = c.lr_scale if lr is None else lr
        if not lr > 0:
            raise UsageError(f"--{one}-lr must be > 0, got {lr}")
        out.append(Category(c.name, n, t, lr))
    if not any(c.members for c in out):
        raise UsageError("--explorers, --refiners and --champions are all 0: nothing to train")
    return out


def check_flags(args: argparse.Namespace) -> None:
    """Refuses flags a league round cannot honour, each in one line."""
    for name, why in _REFUSED.items():
        if getattr(args, name, None):
            raise UsageError(why)
    if args.pbt_interval is not None and args.pbt_interval < 1:
        raise UsageError(f"--pbt-interval must be at least 1 timestep, got {args.pbt_interval}")
    if args.pbt_fraction is not None and not 0 < args.pbt_fraction <= 0.5:
        raise UsageError(f"--pbt-fraction must be in (0, 0.5], got {args.pbt_fraction}")
    if args.window is not None and args.window < 2:
        raise UsageError(f"--window must be at least 2 bars, got {args.window}")
    if args.window_step < 0:
        raise UsageError(f"--window-step must be at least 0, got {args.window_step}")
    if args.window_step and args.window is None:
        raise UsageError("--window-step needs --window BARS")
    if not 0 < args.recent_mix <= 1:
        raise UsageError(f"--recent-mix must be in (0, 1], got {args.recent_mix}")
    if not 0 <= args.rollback < 1:
        raise UsageError(f"--rollback must be in [0, 1), got {args.rollback}")
    if args.keep is not None and args.keep < 1:
        raise UsageError(f"--keep must be at least 1, got {args.keep}")
    if args.explorer_assets is not None and args.explorer_assets < 1:
        raise UsageError(f"--explorer-assets must be at least 1, got {args.explorer_assets}")
    regime_flags = {"regime_kind": "--regime-kind", "regime_lookback": "--regime-lookback",
                    "regime_min_steps": "--regime-min-steps",
                    "regime_candidates": "--regime-candidates"}
    if not args.regime_specialists:
        for name, flag in regime_flags.items():
            if getattr(args, name) is not None:
                raise UsageError(f"{flag} needs --regime-specialists")
    if args.regime_lookback is not None and args.regime_lookback < 2:
        raise UsageError(f"--regime-lookback must be at least 2 bars, got {args.regime_lookback}")
    if args.regime_min_steps is not None and args.regime_min_steps < 1:
        raise UsageError(f"--regime-min-steps must be at least 1, got {args.regime_min_steps}")
    if args.regime_candidates is not None and args.regime_candidates < 1:
        raise UsageError(f"--regime-candidates must be at least 1, got "
                         f"{args.regime_candidates}")


def check_specialists(cfg, market) -> None:
    """Refuses --regime-specialists where regimes over time cannot be detected or a
    specialist cannot be deployed, in one line: procedural worlds (no time axis), an env
    other than the portfolio env (the routing policy decides its regimes)."""
    if cfg.data.market == "worlds" or market.worlds is not None:
        raise UsageError("--regime-specialists: procedural worlds have no time axis to detect "
                         "market regimes along; use a market with dates (--market fixed or "
                         "--data)")
    if cfg.env.name != "portfolio":
        raise UsageError(f"--regime-specialists: the {cfg.env.name} env is not supported; "
                         f"specialists are routed as portfolio env policies (the portfolio "
                         f"env on a market with dates)")


def split(cats: Sequence[Category]) -> dict[str, float]:
    """Each category's share of the round's planned timesteps (all categories run)."""
    total = sum(c.members * c.timesteps for c in cats)
    return {c.name: c.members * c.timesteps / total for c in cats}


# -------------------------------------------------------------------------- records
def read_records(league_dir: Path) -> list[dict]:
    """league.jsonl's rounds, oldest first.

    Raises:
      UsageError: a line that is not a round record (named with its line number).
    """
    path = league_dir / RECORDS_FILE
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            int(rec["round"])
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"{path}:{i}: not a league round record") from None
        out.append(rec)
    return out


def rolled_back(child: float | None, parent: float | None, tolerance: float) -> bool:
    """Whether a continuation scoring `child` falls more than `tolerance` below its
    parent's `parent` (relative to |parent|): child < parent - tolerance x |parent|. A
    child without a score is rolled back; a parent without one never rolls back a child
    that has one."""
    if child is None:
        return True
    if parent is None:
        return False
    return child < parent - tolerance * abs(parent)


# ------------------------------------------------------------------------------ data
def mix_calls(k: int, interval: int, spent: Mapping[str, int], mix: float
              ) -> list[tuple[int, str]]:
    """The calls of one interval of k iterations of a continued model that mixes recent
    and older data: [(iterations, "recent" | "older")], in order (a 0-iteration call is
    skipped by the run).

    A full interval (k = `interval`) is always two calls of the same lengths, a = round(mix
    x k) and k - a, so that a category compiles two programs: which data each call trains
    on is the choice (recent/older, older/recent, both recent, both older) that brings the
    run's share of recent iterations (`spent` so far) closest to `mix`; round(mix x k) on
    every full interval, except where it drifts by half a call (e.g. intervals of 1
    iteration alternate). A shorter last interval settles the drift: its recent share is
    what makes the run's round(mix x its iterations).
    """
    done = spent["recent"] + spent["older"]
    if k != interval:
        r = min(k, max(0, math.floor(mix * (done + k) + 0.5) - spent["recent"]))
        return [(r, "recent"), (k - r, "older")]
    a = math.floor(mix * k + 0.5)
    target = mix * (done + k)
    options = ((a, ("recent", "older")), (k - a, ("older", "recent")),
               (k, ("recent", "recent")), (0, ("older", "older")))
    _, (first, second) = min(options, key=lambda o: abs(spent["recent"] + o[0] - target))
    return [(a, first), (k - a, second)]


class RoundData:
    """The training data of one round's categories (host-only): episode start ranges of
    a market with dates, or training pools of worlds; see the module docstring.

    `segments(name, continued, interval)` is `PopulationRun`'s hook: `fn(trainer, k) ->
    [(k_i, env_params_i)]`; `iterations` counts what each category spent on recent and
    older data. `fresh_episodes`: the carry must start fresh episodes when the data of a
    call differs from the previous call's (worlds: another pool's bars under the same
    env states).
    """

    def __init__(self, p, round_no: int, window: int | None, step: int, mix: float):
        self.plan, self.round, self.mix = p, round_no, mix
        self.worlds = p.market.worlds
        self.fresh_episodes = self.worlds is not None
        self.window = None
        self.iterations: dict[str, dict[str, int]] = {}
        self._pools: dict[int, Any] = {}
        if self.worlds is not None:
            if window is not None:
                raise UsageError("--window: procedural worlds have no time axis; each round "
                                 "trains on fresh worlds instead (training pool generation "
                                 "round - 1), so drop --window")
            self.recent, self.older = round_no - 1, (round_no - 2 if round_no > 1 else None)
            return
        params = p.env.make_params("train", **p.cfg.env.params_kwargs())
        if not hasattr(params, "start_min"):
            if window is not None:
                raise UsageError(f"--window: the {p.cfg.env.name} env has no episode start "
                                 f"range to restrict")
            self.recent = self.older = None
            return
        lo, latest = int(params.start_min), int(params.start_max)
        self.episode = episode = p.cfg.env.steps_per_episode()
        end = latest + episode  # the last bar an episode may reach
        if window is None:  # the trainer's own start range, for every category
            self.recent, self.older = None, None
            return
        if window <= episode:
            raise UsageError(f"--window {window} must be longer than an episode "
                             f"({episode} steps)")
        if window > end - lo + 1:
            raise UsageError(f"--window {window}: the training range has {end - lo + 1} "
                             f"bars an episode may reach")
        # The window: bars [w_lo, w_last], BARS of them, the last ones episodes reach.
        w_last = min(lo + window - 1 + step * (round_no - 1), end) if step else end
        w_lo = w_last - window + 1
        self.recent = (w_lo, w_last - episode)
        self.older = (lo, w_lo - 1) if w_lo - 1 >= lo else None
        self.window = (w_lo, w_last)

    def describe(self) -> dict:
        """The round's data, for league.jsonl and the banner."""
        if self.worlds is not None:
            w = self.worlds
            gen = lambda g: None if g is None else {  # noqa: E731
                "generation": g, "train_worlds": [int(g * w.n_worlds),
                                                  int((g + 1) * w.n_worlds - 1)]}
            return {"kind": "worlds", "seed": w.seed, "recent": gen(self.recent),
                    "older": gen(self.older), "mix": self.mix}
        if self.recent is None:
            return {"kind": "whole training range", "mix": None}
        # A market without dates (the funding env's hours) is described by bar numbers.
        dates = getattr(self.plan.market, "dates", None)
        day = (lambda i: None) if dates is None else (lambda i: str(dates[i].date()))  # noqa: E731

        def span(r):
            if r is None:
                return None
            a, b = r
            return {"first_start": int(a), "last_start": int(b), "start": day(a), "end": day(b)}

        out = {"kind": "window" if self.window else "whole training range",
               "recent": span(self.recent), "older": span(self.older), "mix": self.mix}
        if self.window:
            a, b = self.window
            out["window"] = {"first": int(a), "last": int(b), "bars": int(b - a + 1),
                             "unit": getattr(self.plan.market, "unit", "bars"),
                             "start": day(a), "end": day(b)}
        return out

    def line(self) -> str:
        d = self.describe()
        if d["kind"] == "worlds":
            r, o = d["recent"], d["older"]
            text = (f"data: worlds, training pool {r['generation']} (train worlds "
                    f"{r['train_worlds'][0]}..{r['train_worlds'][1]}) for this round")
            return text + (f"; continued models {self.mix:.0%} on it, {1 - self.mix:.0%} on "
                           f"pool {o['generation']}" if o else "; no older pool yet")
        if d["kind"] != "window":
            return "data: the whole training range for every category"
        w, o = d["window"], d["older"]

        def when(a, b):
            return f"{a} .. {b}" if isinstance(a, str) else None

        where = when(w["start"], w["end"]) or f"{w['unit']} {w['first']} .. {w['last']}"
        older = o and (when(o["start"], o["end"])
                       or f"{w['unit']} {o['first_start']} .. {o['last_start']}")
        return (f"data: window of {w['bars']} {w['unit']} ({where}); continued models "
                f"{self.mix:.0%} on it" + (
                    f", {1 - self.mix:.0%} on the older {w['unit']} ({older} as episode "
                    f"starts)" if o else f" (no older {w['unit']} before it: 100%)"))

    def trained(self, continued: bool) -> dict | None:
        """The bars a category trained on, as an archive entry's `window.train` (start and
        end dates, bars): the window, and for continued models the older bars before it;
        None: the whole training range, or worlds (`describe` says which pools)."""
        if self.window is None:
            return None
        d = self.describe()
        first = self.older[0] if continued and self.older is not None else self.window[0]
        last = self.window[1]
        start = (d["older"] if first != self.window[0] else d["window"])["start"]
        return {"start": start, "end": d["window"]["end"], "bars": int(last - first + 1)}

    def _pool(self, generation: int):
        """Training pool `generation`'s env params, placed (cached for the round)."""
        if generation not in self._pools:
            from jaxtrade import parallel
            from jaxtrade.envs import make_env

            p = self.plan
            pool, _ = self.worlds.pool("train", generation, stats=p.market.stats)
            params = make_env(p.cfg.env.name, pool).make_params(
                "train", **p.cfg.env.params_kwargs())
            self._pools[generation] = parallel.put_replicated(params, p.mesh)
        return self._pools[generation]

    def params(self, base, which):
        """The env params `base` (the trainer's) of start range (or pool) `which`: episodes
        start in [lo, hi] and read no bar after hi + an episode (`end`, where the params
        have one: a bootstrap path's jumps stay in the range too)."""
        import jax

        if self.worlds is not None:
            return base if which == 0 else self._pool(which)
        lo, hi = which
        put = lambda x, like: jax.device_put(np.int32(x), like.sharding)  # noqa: E731
        out = base.replace(start_min=put(lo, base.start_min), start_max=put(hi, base.start_max))
        if hasattr(base, "end"):
            out = out.replace(end=put(min(hi + self.episode, int(base.end)), base.end))
        return out

    def segments(self, name: str, continued: bool, interval: int) -> Callable | None:
        """The `PopulationRun` hook of category `name` (PBT intervals of `interval`
        iterations), or None (the trainer's data)."""
        if self.recent is None:
            return None
        spent = self.iterations.setdefault(name, {"recent": 0, "older": 0})
        placed: dict[str, Any] = {}

        def fn(trainer, k: int):
            if not placed:
                placed["recent"] = self.params(trainer.env_params, self.recent)
                if continued and self.older is not None:
                    placed["older"] = self.params(trainer.env_params, self.older)
            if "older" not in placed:
                spent["recent"] += k
                return [(k, placed["recent"])]
            calls = mix_calls(k, interval, spent, self.mix)
            for k_i, which in calls:
                spent[which] += k_i
            return [(k_i, placed[which]) for k_i, which in calls]

        return fn


# --------------------------------------------------------------------- asset subsets
SUBSET_STREAM = 0x5E7  # folded into the category seed's key: the explorers' asset draws


def check_subsets(cfg, market, k: int) -> None:
    """Refuses `--explorer-assets k` where a member's subset cannot mean what it says, in
    one line: procedural worlds (each world draws its own assets), an env other than the
    portfolio env (the funding env's one instrument), the flat encoder (it reads every
    asset's features, those outside the subset too, and ties each input to an asset's
    position), and k outside [1, A - 1] for `market`'s A assets."""
    if cfg.data.market == "worlds":
        raise UsageError("--explorer-assets: procedural worlds draw their own assets world "
                         "by world; asset subsets need a market with dates (--market fixed "
                         "or --data)")
    if cfg.env.name != "portfolio":
        raise UsageError(f"--explorer-assets: the {cfg.env.name} env has no universe of "
                         f"assets to draw from; subsets need the portfolio env")
    if cfg.network.encoder != "set":
        raise UsageError(f"--explorer-assets needs --encoder set: the {cfg.network.encoder} "
                         f"encoder reads every asset's features, those outside a member's "
                         f"subset too (the set encoder pools over the assets that exist)")
    n_assets = market.n_assets
    if not 1 <= k < n_assets:
        raise UsageError(f"--explorer-assets {k}: the market has {n_assets} assets; choose "
                         f"K from 1 to {n_assets - 1} (all {n_assets}: drop the flag)")


def asset_subsets(seed: int, n_members: int, n_assets: int, k: int) -> np.ndarray:
    """bool [n_members, n_assets]: member i's assets, a uniformly random k of n_assets drawn
    from `seed` (a category's seed, `SUBSET_STREAM` folded in), each member independently
    (two members may draw the same subset when few exist)."""
    import jax

    key = jax.random.fold_in(jax.random.key(seed), SUBSET_STREAM)
    order = jax.vmap(lambda key: jax.random.permutation(key, n_assets))(
        jax.random.split(key, n_members))
    masks = np.zeros((n_members, n_assets), bool)
    np.put_along_axis(masks, np.asarray(order)[:, :k], True, axis=1)
    return masks


def subset_params(base, masks: np.ndarray):
    """Env params `base` (of a market with an asset mask, `Market.with_all_assets`) with
    member i's assets only: `market.asset_mask` [N, T, A], the base mask and member i's
    `masks[i]`, placed as the base mask is (vmap with `subset_axes`). The other arrays,
    the market's prices and features included, stay one shared copy."""
    import jax

    like = base.market.asset_mask
    exists = np.asarray(like)[None] & np.asarray(masks, bool)[:, None, :]
    return base.replace(market=base.market.replace(
        asset_mask=jax.device_put(exists, like.sharding)))


def subset_axes(params):
    """`vmap` in_axes of `subset_params`' output: 0 for the asset mask, None elsewhere."""
    import jax

    axes = jax.tree.map(lambda _: None, params)
    return axes.replace(market=axes.market.replace(asset_mask=0))


class AssetSubsets:
    """A category's per-member assets (host-only): `masks` bool [N, A] over `symbols`, and
    the members' env params with them, built once per base params (so that a segment's
    params stay one object from call to call)."""

    def __init__(self, masks: np.ndarray, symbols: Sequence[str]):
        self.masks, self.symbols = np.asarray(masks, bool), tuple(symbols)
        self._params: dict[int, tuple[Any, Any]] = {}

    def params(self, base):
        """`subset_params` of `base`, cached."""
        hit = self._params.get(id(base))
        if hit is None or hit[0] is not base:
            hit = self._params[id(base)] = (base, subset_params(base, self.masks))
        return hit[1]

    def names(self, slot: int) -> list[str]:
        """The symbols of slot `slot`'s assets, in the market's order."""
        return [s for s, m in zip(self.symbols, self.masks[slot], strict=True) if m]

    def segments(self, fn: Callable | None) -> Callable | None:
        """A `PopulationRun` segments hook `fn` with each call's params the members'."""
        if fn is None:
            return None
        return lambda trainer, k: [(k_i, self.params(params)) for k_i, params in fn(trainer, k)]


# ----------------------------------------------------------------------------- round
def _category_args(args: argparse.Namespace, cat: Category, members: int,
                   run_dir: Path) -> argparse.Namespace:
    ns = argparse.Namespace(**vars(args))
    ns.population, ns.timesteps, ns.iterations, ns.episodes = members, cat.timesteps, None, None
    ns.run_dir, ns.resume, ns.archive = str(run_dir), False, None
    return ns


def league_groups(args: argparse.Namespace, members: Sequence[int]) -> int:
    """The member groups of every category of a round (`population_run`'s 2-D mesh): the
    categories share one plan (market, env, shapes, mesh), so the groups divide every
    category's members and the devices: 1 (each member's envs over all the devices)
    whenever a single champion trains."""
    from jaxtrade import parallel

    return math.gcd(len(parallel.select_devices(args.devices)), *[n for n in members if n])


def category_seed(seed: int, round_no: int, index: int) -> int:
    """The seed of a round's category: the config's seed with the round number and the
    category's index (`DEFAULTS` order: explorers 0, refiners 1, champion 2) folded in, so
    that no two rounds or categories start alike (new explorers' weights and sampled
    hyperparameters, continued models' envs and RNG, PBT draws). The config's seed itself
    keeps seeding the validation walks, which every round shares."""
    import jax

    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), round_no), index)
    return int(jax.random.randint(key, (), 0, np.iinfo(np.int32).max))


def _fresh_founders(n: int, seed: int, subsets: AssetSubsets | None = None) -> Callable:
    """`PopulationRun`'s founders hook of new models: `population.init_population` of the
    category's seed (hyperparameters sampled around the config's); with `subsets`, each
    member's envs on its own assets."""

    def build(trainer):
        import jax

        from jaxtrade.population import init_population

        if subsets is None:
            return init_population(trainer, jax.random.key(seed), n)
        params = subsets.params(trainer.env_params)
        return init_population(trainer, jax.random.key(seed), n, env_params=params,
                               env_axes=subset_axes(params))

    return build


def base_learning_rates(hparams: Mapping[str, float], entry: Mapping[str, Any]
                        ) -> dict[str, float]:
    """An archived model's learning rates before its league category scaled them: its
    archived rates / its `league.lr_scale` (1 for an explorer or a model archived outside
    the league), so that continuing a continuation scales its base once, not again."""
    scale = float((entry.get("league") or {}).get("lr_scale") or 1.0)
    return {k: float(hparams[k]) / scale for k in ("actor_lr", "critic_lr")}


def _learned_founders(learned: Sequence[Mapping], entries: Sequence[Mapping],
                      lr_scale: float, seed: int) -> Callable:
    """`PopulationRun`'s founders hook: the archived models' learned state, learning rates
    their base (`base_learning_rates`) x `lr_scale`; envs, RNG and PBT key of `seed`."""
    from jaxtrade.trainer import HPARAM_NAMES

    hp = {k: np.array([float(getattr(m["hparams"], k)) for m in learned], np.float32)
          for k in HPARAM_NAMES}
    for k in ("actor_lr", "critic_lr"):
        base = [base_learning_rates({n: float(getattr(m["hparams"], n)) for n in
                                     ("actor_lr", "critic_lr")}, e)[k]
                for m, e in zip(learned, entries, strict=True)]
        hp[k] = (np.array(base, np.float64) * lr_scale).astype(np.float32)

    def build(trainer):
        import jax

        from jaxtrade.population import continue_population

        stack = lambda *xs: np.stack(xs)  # noqa: E731
        parts = {part: jax.tree.map(stack, *[m[part] for m in learned])
                 for part in ("params", "actor_opt", "critic_opt")}
        return continue_population(trainer, jax.random.key(seed), parts, hp)

    build.hparams = hp  # what the founders start at (read by tests)
    return build


def scaled_bounds(lr_scale: float) -> dict[str, tuple[float, float]]:
    """PBT's bounds (`population.BOUNDS`) with both learning rates' x `lr_scale`: within a
    continued category, perturbations and resamples stay at the category's scale."""
    from jaxtrade.population import BOUNDS

    return {**BOUNDS, **{k: (BOUNDS[k][0] * lr_scale, BOUNDS[k][1] * lr_scale)
                         for k in ("actor_lr", "critic_lr")}}


class FreshEpisodes:
    """Between the calls of a population run: when a call's env params are not the ones
    the carry ran on last (another pool of worlds), every env of every member starts a
    fresh episode of the new data (`trainer.init`'s carry for them, staggered), so that
    no episode runs on across two worlds. Host-only; the fresh carries are one jitted
    function."""

    def __init__(self, trainer, seed: int):
        import jax

        from jaxtrade.population import shardings

        self.current = trainer.env_params  # what the founders' carries were built on
        self.key = jax.random.key(seed)
        self.resets = 0
        # placed as the population's carry (over the member groups on several devices)
        self._fresh = jax.jit(
            lambda keys, env_params: jax.vmap(lambda k: trainer.init(k, env_params).carry)(keys),
            out_shardings=shardings(trainer).members.carry)

    def __call__(self, pop, env_params):
        """`pop` with fresh episodes of `env_params` if they differ from the last call's."""
        import jax

        if env_params is self.current:
            return pop
        self.current = env_params
        self.resets += 1
        keys = jax.random.split(jax.random.fold_in(self.key, self.resets), pop.size)
        return pop.replace(members=pop.members.replace(carry=self._fresh(keys, env_params)))


class LeagueRun(population_run.PopulationRun):
    """A category's population run: PBT within the category's learning-rate bounds
    (`bounds`), fresh episodes where the data changes between calls (`fresh`), and each
    member's envs on its own assets (`subsets`: per-member asset masks, vmapped)."""

    def __init__(self, *a, bounds: Mapping | None = None, fresh: bool = False,
                 seed: int = 0, subsets: AssetSubsets | None = None, **kw):
        super().__init__(*a, **kw)
        self.bounds, self.fresh, self.seed, self.subsets = bounds, fresh, seed, subsets
        self.episodes: FreshEpisodes | None = None
        # One member at a time: the round's categories (of other sizes) share one evaluator.
        self.batch_evaluation = False

    def build(self) -> None:
        from jaxtrade.population import make_exploit_explore

        super().build()
        if self.subsets is not None:  # each member's envs on its own assets
            self.env_params = self.subsets.params(self.trainer.env_params)
            self.env_axes = subset_axes(self.env_params)
            self.segments = self.subsets.segments(self.segments)
        if self.bounds is not None:
            self.exploit_explore = make_exploit_explore(self.pbt.fraction, bounds=self.bounds,
                                                        placement=self.placement)
        if self.fresh:
            self.episodes = FreshEpisodes(self.trainer, self.seed)

    def program(self, k: int):
        fn = super().program(k)
        if self.episodes is None:
            return fn
        return lambda pop, env_params: fn(self.episodes(pop, env_params), env_params)


class Round:
    """One league round (host-only): plans, trains and archives each category in turn."""

    def __init__(self, args: argparse.Namespace, cats: list[Category]):
        from jaxtrade import archive

        self.args, self.cats = args, cats
        self.league_dir = Path(args.league_dir)
        self.previous = read_records(self.league_dir)
        self.round = (self.previous[-1]["round"] + 1) if self.previous else 1
        self.dir = self.league_dir / f"round-{self.round:03d}"
        if self.dir.exists():
            raise UsageError(f"{self.dir} exists but {self.league_dir / RECORDS_FILE} has no "
                             f"record of round {self.round} (a round that crashed?); remove "
                             f"it, or choose another --league-dir")
        self.archive = archive.Archive(args.archive)
        self.archive._index()  # refuses a directory that is not an archive, in one line
        stale = [e["id"] for e in self.league_entries() if e["league"].get("round") == self.round]
        if stale:
            raise UsageError(
                f"{self.archive.path} holds {', '.join(stale)} from round {self.round} of "
                f"{self.league_dir}, which has no record of that round (it crashed after "
                f"archiving them?): to redo the round, delete their directories "
                f"({self.archive.models}/{stale[0]} ...); or choose another --archive")
        ranked = [e for e in self.archive.entries() if e.get("val_score") is not None]
        self.chosen = {c.name: ranked[:c.members] if c.continued else [] for c in cats}
        self.results: dict[str, dict] = {}
        self.evaluator = None  # the first category's, compiled once for the round
        self.status = "completed"
        self.trials: int | None = None  # the league's validations so far, after the round
        self.specialists: dict | None = None  # --regime-specialists' choice, after the round
        self.t0 = time.perf_counter()
        self.started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def league_entries(self) -> list[dict]:
        """The archive's entries of this league's models (archived from its rounds)."""
        home = self.league_dir.resolve()
        return [e for e in self.archive.entries() if isinstance(e.get("league"), Mapping)
                and Path(e["source"]["run"]).resolve().is_relative_to(home)]

    def seed(self, cat: Category) -> int:
        """Category `cat`'s seed this round (`category_seed` of the config's seed)."""
        index = next(i for i, c in enumerate(DEFAULTS) if c.name == cat.name)
        return category_seed(self.first_plan[0].cfg.run.seed, self.round, index)

    # ------------------------------------------------------------------ start
    def prepare(self) -> None:
        """Plans the first category (the market, env and shapes every category shares),
        the round's data, and reads every chosen archived model: one that does not fit
        is an error before anything trains."""
        import jax

        from jaxtrade import archive
        from jaxtrade.trainer import make_train

        if not any(self._members(c) for c in self.cats):
            raise UsageError(f"nothing to train in round {self.round}: no explorers, and "
                             f"{self.archive.path} holds no scored model to continue")
        first = self._first()
        args = _category_args(self.args, first, self._members(first), self.dir / first.name)
        counts = [self._members(c) for c in self.cats]
        args.member_groups = league_groups(args, counts)
        # every category shares this plan's n_envs: sized for the largest one's members
        args.members_per_device = max(counts) // args.member_groups
        p, pbt, _ = population_run.plan(args)
        if self.args.regime_specialists:
            check_specialists(p.cfg, p.market)
        p = self._with_asset_flags(p)
        self.first_plan = (p, pbt)
        self.data = RoundData(p, self.round, self.args.window, self.args.window_step,
                              self.args.recent_mix)
        self.learned: dict[str, dict] = {}
        ids = {e["id"] for chosen in self.chosen.values() for e in chosen}
        if ids:
            from jaxtrade.trainer import HParams, hparam_values

            trainer = make_train(p.cfg, p.market, p.mesh)
            like = jax.eval_shape(trainer.init, jax.random.key(0), trainer.env_params)
            like = like.replace(hparams=HParams.create(**hparam_values(p.cfg)))
            for i in sorted(ids):
                self.learned[i] = archive.read_learned(self.archive, i, like)
            del trainer, like

    def _with_asset_flags(self, p):
        """The plan `p` on its market with an asset mask in which every asset exists
        (`Market.with_all_assets`: the observation gains a flag per asset) when explorers
        train on asset subsets (--explorer-assets, checked here), or when a chosen archived
        model read such flags (an earlier round's); else `p` itself. Every category of the
        round shares the market, so a refiner reads what the explorer it continues read."""
        import dataclasses as dc

        from jaxtrade.engine.run import reads_asset_flags

        k = self.args.explorer_assets
        flags = {e["id"]: reads_asset_flags(self.archive.models / e["id"])
                 for chosen in self.chosen.values() for e in chosen}
        if k is not None:
            check_subsets(p.cfg, p.market, k)
        elif not any(flags.values()):
            return p
        if p.market.data.asset_mask is not None:
            return p
        if without := [i for i, flagged in flags.items() if not flagged]:
            raise UsageError(
                f"archived model {without[0]} reads no flag per asset (trained without "
                f"--explorer-assets), this round's models read one ("
                + ("--explorer-assets" if k is not None else
                   f"{next(i for i, flagged in flags.items() if flagged)} was archived with "
                   f"them") + "): continue it in a round without asset flags, or use "
                "another --archive")
        from jaxtrade.envs import make_env
        from jaxtrade.trainer import build_network

        market = p.market.with_all_assets()
        env = make_env(p.cfg.env.name, market)
        return dc.replace(p, market=market, env=env, network=build_network(p.cfg, env))

    def _members(self, cat: Category) -> int:
        return len(self.chosen[cat.name]) if cat.continued else cat.members

    def banner(self) -> None:
        shares = split(self.cats)
        print(f"league round {self.round} -> {self.dir}; archive {self.archive.path} "
              f"({len(self.archive.entries())} models)")
        for c in self.cats:
            chosen = self.chosen[c.name]
            what = (f"{c.members} new models" if not c.continued else
                    f"{len(chosen)} of the best {c.members} archived, lr x{c.lr_scale:g}"
                    + (": " + ", ".join(f"{e['id']} {e['val_score']:+.2f}" for e in chosen)
                       if chosen else " (none archived yet: skipped)"))
            print(f"  {c.name:<9} {what}; {c.timesteps:,} timesteps each "
                  f"({shares[c.name]:.1%} of the planned round)")
        print(f"  {self.data.line()}")
        if (k := self.args.explorer_assets) is not None:
            a = self.first_plan[0].market.n_assets
            print(f"  assets: each explorer on its own {k} of the {a} assets (drawn from the "
                  f"category's seed); refiners and the champion on all {a}; every member "
                  f"validated on all {a}")
        sys.stdout.flush()

    # ------------------------------------------------------------------ a category
    def train(self, cat: Category, interrupts) -> dict | None:
        """Trains category `cat` as a population and archives it; its record (None: it
        has no members this round)."""
        import dataclasses as dc

        from jaxtrade.engine.console import Console
        from jaxtrade.engine.run import print_banner

        n = self._members(cat)
        if n == 0:
            return None
        run_dir = self.dir / cat.name
        t0 = time.perf_counter()
        p, pbt = self.first_plan
        if cat is not self._first():  # the same market, env and shapes: another budget
            from jaxtrade.population import quantile_size

            cfg = cfgmod.with_values(p.cfg, timesteps=cat.timesteps, run_dir=str(run_dir))
            p = dc.replace(p, cfg=cfg, run_dir=run_dir)
            pbt = population_run.pbt_settings(_category_args(self.args, cat, n, run_dir),
                                              p.steps_per_iter, None)
            quantile_size(pbt.members, pbt.fraction)
        p = dc.replace(p, eval_every=pbt.interval)
        console = Console(p.cfg.run.verbosity, True)
        print(f"== round {self.round}: {cat.name} ({n} member{'s' if n > 1 else ''}, "
              f"{p.total_iters * p.steps_per_iter:,} timesteps each"
              + (f", lr x{cat.lr_scale:g}" if cat.continued else "") + ")", flush=True)
        if cat is self._first():
            print_banner(p, population_run._BannerConsole(console))
        population_run.print_population_banner(p, pbt, console)
        chosen = self.chosen[cat.name]
        seed = self.seed(cat)
        subsets, assets = None, None
        if self.args.explorer_assets is not None:  # what each slot trains on, recorded
            symbols = p.market.symbols
            if not cat.continued:
                subsets = AssetSubsets(asset_subsets(seed, n, len(symbols),
                                                     self.args.explorer_assets), symbols)
            assets = [subsets.names(i) if subsets else list(symbols) for i in range(n)]
            if subsets is not None:
                print(f"explorer assets ({self.args.explorer_assets} of {len(symbols)} each):")
                for i, names in enumerate(assets):
                    print(f"  member {i}: {', '.join(names)}")
        founders = (_learned_founders([self.learned[e["id"]] for e in chosen], chosen,
                                      cat.lr_scale, seed) if cat.continued
                    else _fresh_founders(n, seed, subsets))
        run = LeagueRun(
            p, pbt, False, console, founders=founders,
            segments=self.data.segments(cat.name, cat.continued, pbt.interval),
            exploit_last=False, bounds=scaled_bounds(cat.lr_scale) if cat.continued else None,
            fresh=self.data.fresh_episodes, seed=seed, subsets=subsets)
        run.build()
        run.evaluator = self.evaluator  # the round's categories share the validation data
        run.record_start()
        summary = run.run(interrupts)
        self.evaluator = run.evaluator
        result = {"members": n, "run_dir": str(run_dir), "status": summary["status"],
                  "timesteps_per_member": summary["timesteps_per_member"],
                  "timesteps": summary["timesteps"], "wall_s": time.perf_counter() - t0,
                  "train_s": summary["train_s"], "compile_s": summary["compile_s"],
                  "lr_scale": cat.lr_scale, "seed": seed, "archived": [], "rolled_back": [],
                  "continued": [], "from": [e["id"] for e in chosen],
                  "iterations": self.data.iterations.get(cat.name)}
        if assets is not None:
            result["assets"] = assets  # per slot, the symbols it trained on
        if summary["status"] == "completed":
            self.archive_category(cat, run, result)
        elif summary["status"] == "interrupted":
            print(f"{cat.name}: interrupted after {summary['iterations']:,} of "
                  f"{p.total_iters:,} iterations; nothing of it archived (its population "
                  f"checkpoint: {summary['checkpoint']})")
        else:
            print(f"{cat.name}: {summary['message']}; nothing of it archived", file=sys.stderr)
        result["wall_s"] = time.perf_counter() - t0
        return result

    def _first(self) -> Category:
        return next(c for c in self.cats if self._members(c))

    def archive_category(self, cat: Category, run, result: dict) -> None:
        """The category's final members into the archive; continued ones below their
        parent's score by more than --rollback are rolled back (not archived)."""
        from jaxtrade import archive as arc
        from jaxtrade.population_plot import read_records as population_records

        run_dir = Path(result["run_dir"])
        records = population_records(run_dir / population_run.POPULATION_FILE)
        final = arc.final_members(records)
        founder = arc._founder_of(records)
        chosen = self.chosen[cat.name]
        founders = {i: e for i, e in enumerate(chosen)}  # continue_population's ids 0..N-1
        window = arc.data_window(run_dir, json.loads((run_dir / "config.json").read_text()))
        here = validation_data(window)
        for e in chosen:
            if validation_data(e.get("window") or {}) != here:
                print(f"warning: {e['id']} was validated on other data than this round's "
                      f"(market, source, symbols or validation range/worlds differ): its "
                      f"score and its continuation's are compared as they are",
                      file=sys.stderr)
        kept = []
        for m in final:
            parent = founders.get(founder(m["id"])) if cat.continued else None
            if parent is None:
                kept.append(m)
                continue
            back = rolled_back(m["score"], parent["val_score"], self.args.rollback)
            change = {"parent": parent["id"], "parent_score": parent["val_score"],
                      "member": m["id"], "score": m["score"], "rolled_back": back,
                      "beat": m["score"] is not None and m["score"] > parent["val_score"]}
            result["continued"].append(change)
            if back:
                result["rolled_back"].append(change)
                score = "n/a" if m["score"] is None else f"{m['score']:+.2f}"
                print(f"rollback: {cat.name} member {m['id']} continuing {parent['id']} "
                      f"scored {score} on validation, more than {self.args.rollback:.0%} "
                      f"below {parent['id']}'s {parent['val_score']:+.2f}: not archived, "
                      f"{parent['id']} stays")
            else:
                kept.append(m)
        if not kept:
            return
        trained = self.data.trained(cat.continued)
        if trained is not None:  # the bars it trained on, not the whole training range
            window["train"] = trained
        extra = {"league": {"round": self.round, "category": cat.name,
                            "lr_scale": cat.lr_scale, "seed": result["seed"],
                            "data": self.data.describe()}, "window": window}
        extra_of = None
        if (assets := result.get("assets")) is not None:  # the assets of the model's slot
            extra_of = lambda m: {"league": {**extra["league"],  # noqa: E731
                                             "assets": assets[m["slot"]]}}
        try:
            entries = arc.add_population(self.archive, run_dir, members=kept,
                                         states=run.pop.members, founders=founders,
                                         extra=extra, earlier_trials=self.earlier_trials(),
                                         extra_of=extra_of)
        except arc.ArchiveError as e:
            print(f"warning: {cat.name}: nothing archived: {e}", file=sys.stderr)
            return
        by_member = {e["source"]["member"]: e for e in entries}
        for change in result["continued"]:
            child = by_member.get(change["member"])
            # `parent` is the model it continues; its archived parent is that, or a
            # continuation of this round it is a PBT copy of
            change["child"] = child and child["id"]
            change["child_parent"] = child and child["parent"]
        result["archived"] = [e["id"] for e in entries]
        for e in entries:
            print(f"archived {e['id']}: {cat.name} member {e['source']['member']}, val score "
                  f"{e['val_score']:+.2f}"
                  + (f", parent {e['parent']} (generation {e['generation']})"
                     if e["parent"] else ""))

    def earlier_trials(self) -> list[float | None]:
        """The validation Sharpe ratios of every member validation of the league before
        the category being archived (earlier rounds, and this round's earlier
        categories): the champion is chosen among all of them, so an archived model's
        deflated Sharpe counts them as trials."""
        dirs = [self.league_dir / f"round-{r['round']:03d}" / name for r in self.previous
                for name in r["categories"]]
        dirs += [self.dir / name for name in self.results]
        return [x for d in dirs for x in validation_sharpes(d)]

    def update_trials(self) -> int:
        """Every archived model of the league gets as deflated-Sharpe trials every member
        validation of the league so far (this round's included): the champion is chosen
        among all of them after each round, so a model archived in an earlier round has
        been compared with more candidates since. Returns the count."""
        from jaxtrade import archive as arc

        trials = self.earlier_trials()
        for e in self.league_entries():
            arc.set_selection_trials(self.archive, e["id"], trials)
        return len(trials)

    def choose_specialists(self) -> dict:
        """--regime-specialists: per market regime, the league model with the best
        validation Sharpe over the regime's steps (`specialists.choose_specialists` on the
        round's market, which holds no test bars)."""
        from jaxtrade import specialists

        a = self.args
        p = self.first_plan[0]
        return specialists.choose_specialists(
            p.market, p.cfg, self.league_entries(), self.archive.models,
            a.regime_kind or DEFAULT_KIND,
            DEFAULT_LOOKBACK if a.regime_lookback is None else a.regime_lookback,
            DEFAULT_MIN_STEPS if a.regime_min_steps is None else a.regime_min_steps,
            a.regime_candidates)

    # ------------------------------------------------------------------ the record
    def record(self) -> dict:
        """The round's league.jsonl record (after the archive's update)."""
        entries = self.archive.entries()
        ranked = [e for e in entries if e.get("val_score") is not None]
        champion = ranked[0] if ranked else None
        mine = [e for e in entries if (e.get("league") or {}).get("round") == self.round
                and e.get("val_score") is not None
                and Path(e["source"]["run"]).resolve().is_relative_to(self.dir.resolve())]
        best = max(mine, key=lambda e: e["val_score"]) if mine else None
        out = {
            "round": self.round,
            "status": self.status,
            "started": self.started,
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - self.t0,
            "archive": str(self.archive.path),
            "data": self.data.describe(),
            "planned_split": split(self.cats),
            "trials": self.trials,
            "rollback": self.args.rollback,
            "categories": self.results,
            "champion": None if champion is None else {
                "id": champion["id"], "score": champion["val_score"],
                "lineage": _ancestors(self.archive, champion["id"])},
            "round_best": None if best is None else {"id": best["id"],
                                                     "score": best["val_score"]},
        }
        if self.args.explorer_assets is not None:
            out["explorer_assets"] = self.args.explorer_assets
        if self.specialists is not None:
            out["specialists"] = self.specialists
        return out


def validation_sharpes(run_dir: Path) -> list[float | None]:
    """The validation Sharpe ratio of every scored member of every interval of the
    population run in `run_dir` (none if it has no records)."""
    from jaxtrade.population_plot import read_records as population_records

    path = Path(run_dir) / population_run.POPULATION_FILE
    if not path.exists():
        return []
    return [(r.get("val") or {}).get("sharpe") for interval in population_records(path)
            for r in interval if r["score"] is not None]


def validation_data(window: Mapping[str, Any]) -> dict:
    """What a model's validation score was measured on, from its archived data window
    (`archive.data_window`): scores compare when these are equal."""
    keys = ("market", "path", "source", "symbols", "validation", "worlds", "synthetic_seed")
    return {k: window.get(k) for k in keys}


def _ancestors(archive, model_id: str) -> list[str]:
    """`model_id` and its ancestors, itself first (pruned ones included)."""
    chain = [model_id]
    while (p := archive.parent_of(chain[-1])) is not None and p not in chain:
        chain.append(p)
    return chain


# --------------------------------------------------------------------------- summary
def longevity(records: Sequence[Mapping]) -> tuple[int, int]:
    """(rounds the last record's champion has held, by id; rounds it or an ancestor has
    held), counted back from the last round."""
    if not records or records[-1].get("champion") is None:
        return 0, 0
    last = records[-1]["champion"]
    same = lineage = 0
    for r in reversed(records):
        c = r.get("champion")
        if c is None:
            break
        if c["id"] == last["id"] and same == lineage:
            same += 1
        if c["id"] in last["lineage"]:
            lineage += 1
        else:
            break
    return same, lineage


def trend(values: Sequence[float]) -> float | None:
    """Least-squares slope per round of `values` (None for fewer than 2)."""
    if len(values) < 2:
        return None
    x = np.arange(len(values), dtype=np.float64)
    return float(np.polyfit(x, np.asarray(values, np.float64), 1)[0])


def summary_lines(records: Sequence[Mapping]) -> list[str]:
    """What the league prints after a round, from league.jsonl's records (this round last)."""
    rec = records[-1]
    lines = [f"league round {rec['round']} {rec['status']} in {rec['wall_s']:.1f}s; archive "
             f"{rec['archive']}"]

    def beats(rs):
        changes = [c for r in rs for cat in r["categories"].values()
                   for c in cat.get("continued", ())]
        won = [c for c in changes if c["beat"]]
        deltas = [c["score"] - c["parent_score"] for c in changes if c["score"] is not None]
        return changes, won, deltas

    changes, won, deltas = beats([rec])
    all_changes, all_won, _ = beats(records)
    if changes:
        back = sum(c["rolled_back"] for c in changes)
        lines.append(f"generations: {len(won)} of {len(changes)} continued models beat their "
                     f"parent this round (mean change {np.mean(deltas):+.2f}; {back} rolled "
                     f"back); all rounds: {len(all_won)} of {len(all_changes)}")
        for c in changes:
            score = "n/a" if c["score"] is None else f"{c['score']:+.2f}"
            lines.append(f"  {c['parent']} {c['parent_score']:+.2f} -> "
                         + (f"{c.get('child')} " if c.get("child") else "")
                         + f"{score}" + (" (rolled back)" if c["rolled_back"]
                                         else " (beat it)" if c["beat"] else ""))
    else:
        lines.append("generations: no continued model this round (nothing archived before "
                     "it)" + (f"; all rounds: {len(all_won)} of {len(all_changes)} beat "
                              f"their parent" if all_changes else ""))
    champ = rec.get("champion")
    if champ is not None:
        held, by_lineage = longevity(records)
        chain = " <- ".join(champ["lineage"])
        lines.append(f"champion: {champ['id']} (val {champ['score']:+.2f}), held {held} "
                     f"round{'s' if held != 1 else ''}; its lineage ({chain}) "
                     f"{by_lineage} round{'s' if by_lineage != 1 else ''}")
    bests = [(r["round"], r["round_best"]) for r in records if r.get("round_best")]
    if bests:
        slope = trend([b["score"] for _, b in bests])
        lines.append("best validation score by round: " + ", ".join(
            f"{n}: {b['score']:+.2f} ({b['id']})" for n, b in bests)
            + ("" if slope is None else f"; trend {slope:+.2f} per round"))
    cats = rec["categories"]
    total = sum(c["timesteps"] for c in cats.values()) or 1
    planned = rec["planned_split"]
    lines.append("compute: " + ("; ".join(
        f"{name} {c['members']} x {c['timesteps_per_member']:,} = {c['timesteps']:,} "
        f"timesteps ({c['timesteps'] / total:.0%}), {c['wall_s']:.1f}s"
        for name, c in cats.items()) or "nothing trained") + " (planned split "
        + " / ".join(f"{100 * v:.1f}" for v in planned.values()) + " %)")
    return lines


def plot(records: Sequence[Mapping], path: Path) -> None:
    """league.png: the best validation score by round (the round's best and the
    champion's) and the timesteps by category per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    rounds = [r["round"] for r in records]
    for key, label, marker in (("round_best", "best of the round", "o"),
                               ("champion", "champion (archive's best)", "s")):
        pts = [(r["round"], r[key]["score"]) for r in records if r.get(key)]
        if pts:
            a.plot(*zip(*pts, strict=True), marker=marker, label=label)
    a.set_xlabel("round")
    a.set_ylabel("validation score")
    if a.get_lines():
        a.legend(fontsize=8)
    bottom = np.zeros(len(rounds))
    for name in ("explorers", "refiners", "champion"):
        vals = np.array([(r["categories"].get(name) or {}).get("timesteps", 0)
                         for r in records], np.float64)
        b.bar(rounds, vals, bottom=bottom, label=name)
        bottom += vals
    b.set_xlabel("round")
    b.set_ylabel("timesteps")
    b.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- command
def main(argv: list[str] | None = None) -> int:
    from jaxtrade import archive
    from jaxtrade import checkpoint as ckpt
    from jaxtrade.engine.signals import Interrupts

    args = build_parser().parse_args(argv)
    try:
        check_flags(args)
        cats = categories(args)
        rnd = Round(args, cats)
        rnd.prepare()
        rnd.banner()
    except (cfgmod.ConfigError, DataError, UsageError, ckpt.CheckpointError,
            archive.ArchiveError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rnd.league_dir.mkdir(parents=True, exist_ok=True)
    interrupted = None
    try:
        with Interrupts("stopping after the current interval; what completed stays "
                        "archived; press Ctrl+C again to exit now") as interrupts:
            for cat in cats:
                if interrupts.requested:
                    break
                result = rnd.train(cat, interrupts)
                if result is None:
                    continue
                rnd.results[cat.name] = result
                if result["status"] != "completed":
                    rnd.status = result["status"]
                    break
            interrupted = interrupts.signal_name
            if interrupted and rnd.status == "completed" and len(rnd.results) < sum(
                    1 for c in cats if rnd._members(c)):
                rnd.status = "interrupted"
    except (cfgmod.ConfigError, DataError, UsageError, ckpt.CheckpointError,
            archive.ArchiveError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        rnd.status = "failed"
        if not rnd.results:
            return 2
    if args.keep is not None and rnd.archive.exists():
        removed = rnd.archive.prune(args.keep)
        if removed:
            print(f"pruned {len(removed)} model(s) from {rnd.archive.path}: "
                  f"{', '.join(removed)}")
    if rnd.archive.exists():
        try:
            rnd.trials = rnd.update_trials()
        except (archive.ArchiveError, ckpt.CheckpointError, OSError) as e:
            print(f"warning: the league's models keep their earlier trial counts: {e}",
                  file=sys.stderr)
    if args.regime_specialists and rnd.status != "failed" and rnd.archive.exists():
        try:
            rnd.specialists = rnd.choose_specialists()
        except (UsageError, RegimeError, archive.ArchiveError, ckpt.CheckpointError,
                OSError) as e:
            print(f"warning: no regime specialists this round: {e}", file=sys.stderr)
    rec = rnd.record()
    with open(rnd.league_dir / RECORDS_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")
    records = [*rnd.previous, rec]
    print("\n".join(summary_lines(records)))
    try:
        plot(records, rnd.league_dir / PLOT_FILE)
        print(f"plot: {rnd.league_dir / PLOT_FILE}")
    except Exception as e:  # noqa: BLE001 - a plot is a courtesy; the round is recorded
        print(f"warning: no plot: {e}", file=sys.stderr)
    champ = rec.get("champion")
    if champ is not None:
        where = "" if os.path.normpath(str(args.archive)) == DEFAULT_ARCHIVE else \
            f"{args.archive}:"
        print(f"load the champion: jaxtrade.load_policy(\"archive:{where}{champ['id']}\"); "
              f"test it: python -m jaxtrade.evaluate --run-dir "
              f"{rnd.archive.path / 'models' / champ['id']}")
    if rnd.specialists is not None:
        from jaxtrade.specialists import table_lines

        print("\n".join(table_lines(rnd.specialists)))
        print(f"load the specialists: jaxtrade.load_policy(\"league:{args.league_dir}\")")
    if rnd.status == "interrupted":
        print(f"interrupted ({interrupted}): round {rnd.round} recorded with what completed; "
              f"the next run of this command starts round {rnd.round + 1}")
    if rnd.status == "diverged":
        print(f"round {rnd.round} stopped: a category diverged (see above); what completed "
              f"before it stays archived", file=sys.stderr)
    return 1 if rnd.status in ("failed", "diverged") else 0


if __name__ == "__main__":
    from jaxtrade.watchdog import enable_stack_dumps

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    enable_stack_dumps()
    sys.exit(main())

"""What `python -m jaxtrade.evaluate` computes. For an env with the trading report
(`Environment.trading`): a trained policy and the baselines in one continuous pass of a date
range (the run's test range by default), compared with the baseline chosen on validation,
with statistics that count the candidates compared (`Assessment`). For any other env: the
policy's episodes on one of the env's params (the "test" ones by default) against a
uniformly random policy's on the same keys (`EpisodeAssessment`). An env that names its
own report (`Environment.evaluation`, e.g. the funding env's `jaxtrade.funding_report`)
gets that instead. The CLI
(`jaxtrade.evaluate`) turns either into files and a table. Host-side.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from jaxtrade import __version__
from jaxtrade.data import features as feats
from jaxtrade.data.panel import format_date, parse_date
from jaxtrade.errors import UsageError

WHAT = {  # how the report describes each of the run's ranges
    "test": "the run's test range, never read in training",
    "validation": "the run's validation range, which chose the checkpoint: optimistic",
    "train": "the run's training range: in-sample",
}


@dataclasses.dataclass(frozen=True)
class AssessRequest:
    """The evaluate CLI's flags."""

    run_dir: str
    checkpoint: str = "best"
    data: str | None = None
    range: str | None = None  # test | validation | train | all (None: test, or the dates)
    start: str | None = None
    end: str | None = None
    sample: bool = False
    seed: int | None = None
    # The user's fixed trading configs for an env that takes one (funding: tuples of
    # leverage, utilisation, max positions, buffer); None: the env's reference configs.
    settings: tuple | None = None


@dataclasses.dataclass(frozen=True)
class Assessment:
    """One pass of the policy and every baseline, and the honest comparison."""

    report: dict  # report.json
    dates: Any  # pd.DatetimeIndex of the pass's marks [T + 1]
    strategies: Any  # evaluation.Walk, leaves [S, ...] in `STRATEGIES` order
    table: dict[str, dict]  # strategy -> its metrics (report["strategies"])
    baseline: str  # the strategy compared with the policy
    chosen: str | None  # the baseline chosen on validation (None: the run has no validation)
    choice: dict | None  # how it was chosen
    notes: list[str]  # about the requested range
    symbols: list[str]  # the pass's assets, then cash


@dataclasses.dataclass(frozen=True)
class EpisodeAssessment:
    """The policy's episodes and a uniformly random policy's on the same keys (`report`:
    report.json)."""

    report: dict


def _date(text: str, flag: str) -> pd.Timestamp:
    stamp = parse_date(text)
    if stamp is None:
        raise UsageError(f"{flag} {text!r} is not a date (expected YYYY-MM-DD[ HH:MM])")
    return stamp


def select_range(dates: pd.DatetimeIndex, start: str | None, end: str | None,
                 default: tuple[str, str] | None) -> tuple[int, int, list[str]]:
    """Bars [first, last] of the pass and notes for the user.

    `start`/`end` as given (an `end` at midnight includes its whole day), else `default`
    (dates), else the whole market. The first bar is at least 1: the first decision reads
    the features of the bar before it.
    """
    notes = []
    if start is None and end is None and default is not None:
        start, end = default
    lo = _date(start, "--start") if start is not None else None
    hi = _date(end, "--end") if end is not None else None
    if lo is not None and hi is not None and lo > hi:
        raise UsageError(f"--start {start} is after --end {end}")
    first = 1 if lo is None else int(dates.searchsorted(lo, "left"))
    if hi is None:
        last = len(dates) - 1
    else:
        bound = hi + pd.Timedelta(days=1) if hi == hi.normalize() else hi
        last = int(dates.searchsorted(bound, "left" if hi == hi.normalize() else "right")) - 1
    if first < 1:
        first = 1
        if lo is not None:
            notes.append(f"the pass starts at {format_date(dates[1])}: the bars before feed the "
                         f"{feats.WINDOW}-bar feature window and the first decision")
    span = (f"{format_date(dates[1])} .. {format_date(dates[-1])}")
    if first >= len(dates) or last < 1 or last - first < 1:
        raise UsageError(
            f"the range {start or 'start'} .. {end or 'end'} holds fewer than 2 bars with "
            f"features; the data's bars with features are {span}"
        )
    return first, last, notes


def check_run(request: AssessRequest) -> None:
    """Refuses what cannot be evaluated, before anything is loaded."""
    from jaxtrade.data.market import MARKET_FILE

    if not Path(request.run_dir).is_dir():
        raise UsageError(f"{request.run_dir}: no such run directory")
    custom = request.start is not None or request.end is not None
    if request.range and (custom or request.data):
        raise UsageError("--range picks one of the run's own ranges; for a range of your choosing "
                         "give --start/--end (and --data for other data) instead")
    record_path = Path(request.run_dir) / MARKET_FILE
    if record_path.exists() and json.loads(record_path.read_text()).get("format", 1) < 2:
        raise UsageError(f"{request.run_dir} was trained before train, validation and test "
                         f"ranges existed: its best checkpoint was chosen on the range it "
                         f"would report, and its config uses older keys; train it again")


def own_market(policy):
    """The run's own data, all of it, normalised with the run's training statistics."""
    from jaxtrade.data.market import load_market

    d = policy.config.data
    return policy.observed(load_market(
        d.path, symbols=d.symbols, start=d.start, end=d.end, max_fill=d.max_fill,
        synthetic=d.synthetic(), stats=policy.stats, episode_length=1, val_fraction=0.0,
        test_fraction=0.0))


def choose_range(request: AssessRequest, policy, own):
    """-> (market, range name or None, first bar, last bar, what it is, notes)."""
    from jaxtrade.data.loader import load_panel
    from jaxtrade.data.market import span_bounds

    custom = request.start is not None or request.end is not None
    d, default, range_name = policy.config.data, None, None
    if request.data:
        panel = load_panel(request.data, max_fill=d.max_fill)
        chosen = policy.choose_symbols(panel.symbols, request.data)
        if chosen is not None and list(panel.symbols) != chosen:
            panel = load_panel(request.data, symbols=chosen, max_fill=d.max_fill)
        market = policy.market(panel)
        what = "the whole data" if not custom else "the requested range"
    else:
        market = own
        range_name = None if custom else (request.range or "test")
        if range_name in (None, "all"):
            what = "the requested range" if custom else "all of the run's data"
        else:
            default = policy.record.get(range_name)
            if default is None:
                raise UsageError(
                    f"{request.run_dir} has no {range_name} range ({_fractions(policy.config)}); "
                    f"choose another with --range, or dates with --start/--end")
            what = WHAT[range_name]
    if default is not None:  # one of the run's ranges, matched on its exact bars
        first, last = span_bounds(market.dates, default)
        return market, range_name, max(first, 1), last, what, []
    first, last, notes = select_range(market.dates, request.start, request.end, None)
    return market, range_name, first, last, what, notes


def _fractions(cfg) -> str:
    d = cfg.data
    if d.split_dates:
        return f"split_dates={','.join(d.split_dates)}"
    return f"val_fraction={d.val_fraction:g}, test_fraction={d.test_fraction:g}"


def walk(policy, market, first: int, last: int, sample: bool):
    """The policy and every baseline through bars first..last -> (Walk, metrics)."""
    import jax
    import jax.numpy as jnp

    from jaxtrade.envs import make_env
    from jaxtrade.evaluation import make_strategy_walk, pass_params, walk_key

    env = make_env(policy.config.env.name, market)
    env_params = pass_params(env, policy.config.env, first, last)
    network = policy.network_for(env.n_assets)
    program = jax.jit(make_strategy_walk(network, env, last - first, greedy=not sample))
    return jax.device_get(program(policy.params, env_params, walk_key(policy.seed),
                                  jnp.float32(market.bars_per_year)))


def _plain(x: Any) -> Any:
    x = np.asarray(x)
    return x.tolist() if x.ndim else x.item()


def strategy_table(strategies, metrics, statistics, action_names) -> dict[str, dict]:
    from jaxtrade.evaluation import STRATEGIES

    table = {}
    for i, name in enumerate(STRATEGIES):
        m = {k: _plain(v[i]) for k, v in metrics.items()}
        m["action_freq"] = dict(zip(action_names, m["action_freq"], strict=True))
        m["final_value"] = float(strategies.values[i, -1])
        stats_of = statistics["strategies"].get(name, {})
        m["psr"], m["dsr"] = stats_of.get("psr", math.nan), stats_of.get("dsr", math.nan)
        table[name] = m
    return table


def model_score(metrics, health: dict) -> float | None:
    """The policy's model score on this pass with its checkpoint's training health."""
    from jaxtrade.evaluation import HEALTH_KEYS, score

    if not all(k in health for k in HEALTH_KEYS):
        return None
    return float(score({k: v[0] for k, v in metrics.items()}, health))


def assess(request: AssessRequest):
    """The whole comparison (see the module docstring)."""
    from jaxtrade import checkpoint as ckpt
    from jaxtrade import envs
    from jaxtrade import report as comparison
    from jaxtrade.engine.start import load_run_market
    from jaxtrade.envs import NAMES, make_env
    from jaxtrade.evaluation import STRATEGIES, pass_settings
    from jaxtrade.policy import CASH, load_policy

    check_run(request)
    saved = ckpt.select(request.run_dir, request.checkpoint)
    if saved.config.data.market == "worlds":  # a portfolio run on procedural worlds
        if not request.data:  # its test worlds
            from jaxtrade.engine.worlds_report import assess_worlds

            return assess_worlds(request)
        action_names = NAMES  # on the user's data: the trading report below
    else:
        env_class = envs.env_class(saved.config.env.name)
        if env_class.evaluation is not None:  # the env's own report
            module, function = env_class.evaluation.split(":")
            return getattr(importlib.import_module(module), function)(request, saved)
        if request.settings:
            raise UsageError(f"--leverage, --utilisation, --max-positions and --buffer set a "
                             f"funding run's trading config; this run trained the "
                             f"{saved.config.env.name} env")
        env = make_env(saved.config.env.name, load_run_market(saved.config, test=True))
        if not env.trading:  # the env's own report: its episodes against chance
            return assess_episodes(request, saved, env)
        action_names = env.action_names
    policy = load_policy(request.run_dir, request.checkpoint, seed=request.seed)
    cfg, record, source, seed = policy.config, policy.record, policy.checkpoint, policy.seed
    own = own_market(policy)
    market, range_name, first, last, what, notes = choose_range(request, policy, own)
    # The baseline to beat, chosen on the run's validation range (as a user without RL would).
    if cfg.data.market == "worlds":
        from jaxtrade.engine.worlds_report import choose_on_validation_worlds

        choice = choose_on_validation_worlds(policy)
    else:
        choice = comparison.choose_on_validation(own, record, cfg.env, seed)
    strategies, metrics = walk(policy, market, first, last, request.sample)
    health = source.meta.get("metrics") or {}
    selection = comparison.checkpoint_selection(
        request.run_dir, request.checkpoint,
        where="validation worlds" if cfg.data.market == "worlds" else "validation range")
    chosen = choice["name"] if choice else None
    baseline = chosen or "buy_and_hold"
    statistics = comparison.honest_statistics(
        {name: strategies.values[i] for i, name in enumerate(STRATEGIES)}, baseline,
        market.bars_per_year, selection, choice, record["bars_per_year"], seed)
    dates = market.dates[first:last + 1]
    table = strategy_table(strategies, metrics, statistics, action_names)
    report = {
        **report_header(request, source, selection),
        "data": {"source": market.source, "symbols": list(market.symbols),
                 "trained_symbols": list(policy.symbols), "bars_per_year": market.bars_per_year},
        "range": {"name": range_name, "start": format_date(dates[0]),
                  "end": format_date(dates[-1]), "bars": len(dates), "steps": last - first,
                  "what": what},
        "ranges": {name: record.get(name) for name in ("train", "validation", "test")},
        "actions": "sampled" if request.sample else "greedy",
        "seed": seed,
        # The run's settings the pass used (frictions, penalties, decide_every).
        "env": pass_settings(cfg.env),
        "model_score": model_score(metrics, health),
        "baseline": choice or {"name": baseline, "chosen_on": None,
                               "why": "the run has no validation range to choose one on"},
        "statistics": statistics,
        "verdict": comparison.verdict(statistics, baseline, range_name),
        "strategies": table,
    }
    return Assessment(report, dates, strategies, table, baseline, chosen, choice, notes,
                      [*market.symbols, CASH])


def report_header(request: AssessRequest, source, selection: dict) -> dict:
    """The first keys of every report.json: version, time, run, checkpoint, selection."""
    return {
        "jaxtrade_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_dir": str(Path(request.run_dir)),
        "checkpoint": checkpoint_record(request, source),
        "selection": selection,
    }


def checkpoint_record(request: AssessRequest, source) -> dict:
    """The evaluated checkpoint, as report.json names it."""
    health = source.meta.get("metrics") or {}
    return {"requested": str(request.checkpoint), "iteration": source.step,
            "path": str(source.path), "timesteps": source.meta.get("timesteps"),
            "val_score": health.get("val_score")}


RANDOM = "random"  # the episode report's baseline: uniformly random among the valid actions
LEVEL = 0.9  # of the episode report's interval of the difference of mean returns


def assess_episodes(request: AssessRequest, source, env) -> EpisodeAssessment:
    """The episode report of an env without the trading report (`env`, over the run's data
    split as in training, test range included): the policy of checkpoint `source` (greedy,
    or sampled) and a uniformly random policy in `EPISODE_ENVS` envs of one of the env's
    params ("test" by default, `--range`), stepped `episode_length` steps from the same key;
    the first episode of each env (`jaxtrade.evaluation.episode_metrics`, the numbers
    training's validation evaluation logs), and the difference of the mean returns with a
    normal interval."""
    from statistics import NormalDist

    from jaxtrade import checkpoint as ckpt
    from jaxtrade import report as comparison
    from jaxtrade.evaluation import EPISODE_ENVS, POLICY
    from jaxtrade.trainer import build_network

    cfg, name = source.model_config, source.config.env.name
    seed = cfg.run.seed if request.seed is None else request.seed
    if request.data or request.start is not None or request.end is not None:
        raise UsageError(f"--data, --start and --end choose the bars of a trading report; the "
                         f"{name} env is reported on its own params (choose them with --range)")
    split = request.range or "test"
    if split == "all":
        raise UsageError(f"--range all is a trading report's; the {name} env is reported on "
                         f"one of its params: test, validation or train")
    try:
        env_params = env.make_params(split, **cfg.env.params_kwargs())
    except ValueError as e:
        raise UsageError(f"{request.run_dir}: the {name} env has no {split} params: {e}") from None
    n_steps, network = cfg.env.episode_length, build_network(cfg, env)
    params = ckpt.read_params(source)
    table = {strategy: episodes(network, params, env, env_params, n_steps, seed,
                                greedy=not request.sample, uniform=strategy == RANDOM)
             for strategy in (POLICY, RANDOM)}
    p, r = table[POLICY], table[RANDOM]
    diff = p["return_mean"] - r["return_mean"]
    # A normal interval of the difference of two means, each of the episodes that ended
    # (of every env's return so far when none did: `episode_metrics`).
    se = math.sqrt(sum(m["return_std"] ** 2 / (m["episodes"] or EPISODE_ENVS) for m in (p, r)))
    low, high = (diff + z * se for z in (NormalDist().inv_cdf((1 - LEVEL) / 2),
                                         NormalDist().inv_cdf((1 + LEVEL) / 2)))
    verdict = (f"the policy beat the uniformly random policy with {LEVEL:.0%} confidence: its "
               f"mean episode return is higher by {diff:+.4f}, interval [{low:+.4f}, "
               f"{high:+.4f}]" if low > 0 else
               f"the policy did not beat the uniformly random policy with {LEVEL:.0%} "
               f"confidence (the interval of the difference of mean episode returns reaches "
               f"{low:+.4f})")
    return EpisodeAssessment({
        "jaxtrade_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "run_dir": str(Path(request.run_dir)),
        "report": "episodes",
        "env": name,
        "checkpoint": checkpoint_record(request, source),
        "selection": comparison.checkpoint_selection(request.run_dir, request.checkpoint),
        "range": {"name": split, "envs": EPISODE_ENVS, "steps": n_steps,
                  "what": f"the first episode of each of {EPISODE_ENVS} envs of the {name} "
                          f"env's {split} params, at most {n_steps} steps"},
        "actions": "sampled" if request.sample else "greedy",
        "seed": seed,
        "strategies": table,
        "difference": {"return_mean": diff, "ci_low": low, "ci_high": high, "level": LEVEL,
                       "beat_with_confidence": low > 0},
        "verdict": verdict,
    })


def episodes(network, params, env, env_params, n_steps: int, seed: int, *, greedy: bool,
             uniform: bool) -> dict:
    """`episode_metrics` of one policy's first episodes (`make_episode_walk` from the key of
    `seed`) as plain numbers."""
    import jax

    from jaxtrade.evaluation import EPISODE_ENVS, episode_metrics, make_episode_walk, walk_key

    walk = make_episode_walk(network, env, EPISODE_ENVS, n_steps, greedy=greedy,
                             uniform=uniform)
    run = jax.jit(lambda params, env_params, key: episode_metrics(walk(params, env_params, key)))
    out = jax.device_get(run(params, env_params, walk_key(seed)))
    return {k: _plain(v) for k, v in out.items()}

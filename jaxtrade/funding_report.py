"""The funding env's evaluation: a policy and three rule-based baselines, day by day
through a range of hours, for fixed trading configs (`python -m jaxtrade.evaluate` on a
funding run; `FundingEnv.evaluation` names `assess`).

    python -m jaxtrade.evaluate --run-dir RUN [--range test|validation|train] [--data FILE]
        [--leverage 3 --utilisation 0.6 --max-positions 3 [--buffer 0.01]]

Each strategy trades every day of the range as one episode of `episode_length` hours
(the days back to back, each from cash 1.0, as training's episodes), under a fixed
config (max leverage, target utilisation, max positions; liquidation buffer 0 unless
given). A day ends flat: the env closes what is open at its last hour, with fees and
slippage, so a day's result is cash in hand (`info["exit_cost"]`, the cost of closing what
is still open, is subtracted too, for a walk cut short by the end of the range).
Strategies:

* policy: the run's best checkpoint (chosen on validation), greedy;
* never: holds cash (its return is 0 by construction);
* greedy: opens the best opportunity by fund_apr at the full position budget whenever a
  slot is free, closes a position when its pair's fund_apr turns negative;
* threshold: in the style of open-source funding-rate bots: enters the best opportunity
  when its fund_apr is at least `ENTER_APR` (30% a year), closes when it falls below
  `EXIT_APR` (10%: the stop on the funding spread) or when the position's funding plus
  unrealised PnL reaches `TAKE_PROFIT` (0.2%) of its notional. The rule's levels are
  fixed here, not tuned on any range.

Per strategy and config: total return (days compounded), daily Sharpe annualised with
sqrt(365), max drawdown of the compounded days, funding earned, fees and slippage paid
(percent of the starting equity, summed over days), legs liquidated, positions opened, the
mean hours a position was held, and the mean margin used over equity.

Statistics, per config (the days are the observations, annualised with 365 days a
year; `jaxtrade.stats`): the policy's probabilistic Sharpe ratio and its deflated Sharpe
ratio for the checkpoint candidates its run compared on validation (the trial variance
is that of a skill-less candidate's Sharpe estimate over as many days, 1 / days: the run
records the candidates' scores, not their daily Sharpe ratios), and against each
baseline the paired stationary-bootstrap interval of the Sharpe difference. The three
configs are all reported, none chosen. The verdict names the baselines the policy beat
after all costs (higher total return) and whether with confidence (the Sharpe
difference's interval above 0).

Outputs (`FundingAssessment.write`): report.json, equity.csv (every strategy's equity
hour by hour through the range, the days compounded, per config, with the legs
liquidated at each hour) and equity.png (those curves, one panel per config,
liquidations marked).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrade.envs.funding import HOLD, N_OPEN, SIZES, TOP_K, FundingEnv

ENTER_APR = 30.0  # percent a year
EXIT_APR = 10.0
TAKE_PROFIT = 0.002  # of a position's notional
FULL = SIZES.index(1.0)
CONFIGS = ((1.0, 0.4, 2), (3.0, 0.6, 3), (8.0, 0.75, 5))  # the issue's three fixed configs
STRATEGIES = ("policy", "never", "greedy", "threshold")


def _first(mask_row):
    """Index of the first True of `mask_row` and whether there is one."""
    return jnp.argmax(mask_row), jnp.any(mask_row)


def rule_action(name: str, env: FundingEnv, state, params) -> jax.Array:
    """The action of baseline `name` ("never", "greedy", "threshold") in `state`."""
    if name == "never":
        return jnp.int32(HOLD)
    data, t, s = params.data, state.t, state.slots
    mask = env.action_mask(state, params)
    apr_now = env.pair_apr(data, t, s.symbol, s.long_ex, s.short_ex)
    top = data.top[t]
    offered = env.pair_apr(data, t, top[:, 0], top[:, 1], top[:, 2])
    opens = mask[1:N_OPEN + 1].reshape(TOP_K, len(SIZES))[:, FULL]
    if name == "greedy":
        leave = s.open & (apr_now < 0)
    elif name == "threshold":
        m_long = data.price[t, s.symbol, s.long_ex]
        m_short = data.price[t, s.symbol, s.short_ex]
        gain = s.funding + s.size * (jnp.where(s.alive_long, m_long - s.entry_long, 0.0)
                                     + jnp.where(s.alive_short, s.entry_short - m_short, 0.0))
        notional = s.size * s.entry_long
        leave = s.open & ((apr_now < EXIT_APR) | (gain >= TAKE_PROFIT * notional))
        opens = opens & (offered >= ENTER_APR)
    else:
        raise ValueError(f"unknown baseline {name!r}")
    slot, closing = _first(leave)
    k, opening = _first(opens)
    return jnp.where(closing, 1 + N_OPEN + slot,
                     jnp.where(opening, 1 + k * len(SIZES) + FULL, HOLD)).astype(jnp.int32)


def day_params(env: FundingEnv, split: str, episode_length: int, config, settings: dict):
    """Params of each day of `split` (leaves [D] where days differ: the start hour) and the
    vmap axes; `config` = (leverage, utilisation, max positions[, buffer])."""
    leverage, utilisation, positions, *rest = config
    buffer = rest[0] if rest else 0.0
    fixed = dict(settings, leverage_min=leverage, leverage_max=leverage,
                 utilisation_min=utilisation, utilisation_max=utilisation,
                 positions_min=int(positions), positions_max=int(positions),
                 buffer_min=buffer, buffer_max=buffer)
    lo, hi = env.market.ranges[split]
    starts = np.arange(lo, hi - 1 - episode_length + 1, episode_length)
    if len(starts) == 0:
        raise ValueError(f"the {split} range has no whole day of {episode_length} hours")
    one = env.make_params(split, episode_length=episode_length, start=int(starts[0]), **fixed)
    days = one.replace(start_min=jnp.asarray(starts, jnp.int32),
                       start_max=jnp.asarray(starts, jnp.int32))
    axes = jax.tree.map(lambda _: None, one).replace(start_min=0, start_max=0)
    return days, axes, starts


RULES = STRATEGIES[1:]  # the rule baselines


def rule_walk(env: FundingEnv, n_steps: int):
    """`walk(day params, key) -> info [len(RULES), n_steps]`: every rule baseline through
    one day, as one program (the env step compiles once for all of them: each step picks
    the rule's action from all of theirs)."""

    def one(params, key, which):
        _, state = env.reset(key, params)

        def body(state, k):
            action = jnp.stack([rule_action(n, env, state, params) for n in RULES])[which]
            _, new, _, _, info = env.step_env(k, state, action, params)
            return new, info

        return jax.lax.scan(body, state, jax.random.split(key, n_steps))[1]

    def walk(params, key):
        return jax.vmap(one, in_axes=(None, None, 0))(params, key, jnp.arange(len(RULES)))

    return walk


def day_metrics(info: dict, episode_hours: int) -> dict:
    """The report's numbers from per-day info leaves [D, T] (numpy)."""
    final = info["equity"][:, -1] - info["exit_cost"][:, -1]
    days = final - 1.0
    curve = np.cumprod(1.0 + days)
    peak = np.maximum.accumulate(np.concatenate([[1.0], curve]))
    drawdown = float(np.max(1.0 - np.concatenate([[1.0], curve]) / peak))
    std = float(np.std(days, ddof=1)) if len(days) > 1 else 0.0
    opened = float(info["opened"].sum())
    position_hours = float(info["positions"].sum())
    equity = np.maximum(info["equity"], 1e-9)
    return {
        "days": int(len(days)),
        "total_return": float(curve[-1] - 1.0),
        "sharpe": float(np.mean(days) / std * np.sqrt(365.0)) if std > 0 else 0.0,
        "max_drawdown": drawdown,
        "funding": float(info["funding"].sum()),
        "fees": float(info["fees"].sum() + info["slippage"].sum()
                      + info["exit_cost"][:, -1].sum()),
        "liquidations": int(info["liquidations"].sum()),
        "positions_opened": int(opened),
        "mean_hours_held": position_hours / opened if opened else 0.0,
        "utilisation": float(np.mean(info["margin_used"] / equity)),
        "daily_returns": days.tolist(),
    }


def config_label(config) -> str:
    """"3x / 60% / 3 positions" (and the buffer when there is one)."""
    leverage, utilisation, positions, *rest = config
    label = f"{leverage:g}x / {utilisation:.0%} / {int(positions)} positions"
    return label + (f" / buffer {rest[0]:g}" if rest and rest[0] else "")


def hourly_curve(info: dict, times, starts: np.ndarray) -> tuple[list, np.ndarray, np.ndarray]:
    """One strategy's equity hour by hour through the days, compounded (start 1.0), and the
    legs liquidated at each hour: (times [D x T + 1], equity, liquidations)."""
    days, hours = info["equity"].shape
    final = info["equity"][:, -1] - info["exit_cost"][:, -1]
    base = np.concatenate([[1.0], np.cumprod(final)[:-1]])  # each day's starting equity
    within = info["equity"].copy()
    within[:, -1] = final
    equity = np.concatenate([[1.0], (base[:, None] * within).reshape(-1)])
    liquidations = np.concatenate([[0], info["liquidations"].reshape(-1).astype(int)])
    at = [times[int(starts[0])]] + [times[int(s) + h + 1] for s in starts for h in range(hours)]
    return at, equity, liquidations


def config_statistics(table: dict, n_trials: int, seed: int) -> dict:
    """The policy's PSR / DSR and its Sharpe difference with each baseline (see the module
    docstring), from the strategies' daily returns; None where a series does not vary."""
    from jaxtrade import stats

    returns = {name: np.asarray(m["daily_returns"]) for name, m in table.items()}
    policy = returns["policy"]
    days = len(policy)
    out = {"policy": None, "versus": {}, "days": days, "n_trials": n_trials}
    if days < stats.MIN_OBS or np.std(policy) <= stats.CONSTANT_STD:
        out["note"] = ("the policy's daily returns do not vary (it never traded)"
                       if days >= stats.MIN_OBS else f"{days} days: too few for statistics")
        return out
    out["policy"] = stats.strategy_stats(policy, 365.0, n_trials, 1.0 / days).to_dict()
    for name, r in returns.items():
        if name != "policy":
            out["versus"][name] = stats.compare_sharpe(policy, r, 365.0, seed=seed).to_dict()
    return out


def config_verdict(table: dict, statistics: dict) -> str:
    """Which baselines the policy beat after all costs, and with what confidence, in words."""
    mine = table["policy"]["total_return"]
    beat = [n for n in ("never", "greedy", "threshold") if mine > table[n]["total_return"]]
    lost = [n for n in ("never", "greedy", "threshold") if n not in beat]
    words = (f"beat {', '.join(beat)} after all costs" if beat else "beat no baseline")
    words += f" ({mine:+.2%} total)" + (f"; not {', '.join(lost)}" if lost and beat else "")
    sure = [n for n, c in statistics["versus"].items() if c["beat_with_confidence"]]
    if statistics["policy"] is None:
        return words + f"; {statistics['note']}"
    level = next(iter(statistics["versus"].values()))["level"]
    words += (f"; with {level:.0%} confidence (Sharpe difference interval above 0) against "
              f"{', '.join(sure)}" if sure else
              f"; against none with {level:.0%} confidence (no Sharpe difference interval "
              f"lies above 0)")
    dsr = statistics["policy"]
    return words + (f"; deflated Sharpe ratio {dsr['dsr']:.2f} after {int(dsr['n_trials'])} "
                    f"candidates" if dsr["n_trials"] > 1 else
                    f"; probabilistic Sharpe ratio {dsr['psr']:.2f}")


@dataclasses.dataclass(frozen=True)
class FundingAssessment:
    """The funding evaluation: report.json's content and the hourly curves it plots."""

    report: dict
    curves: dict  # config label -> {"times": [...], strategy: (equity, liquidations)}

    def write(self, out: Path) -> list[str]:
        """report.json, equity.csv and equity.png under `out`; the names written."""
        import pandas as pd

        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(self.report, indent=2) + "\n")
        frames = []
        for label, curve in self.curves.items():
            frame = {"config": label, "time": [t.isoformat() for t in curve["times"]]}
            for name in STRATEGIES:
                equity, liquidations = curve[name]
                frame[name] = equity
                frame[f"{name}_liquidations"] = liquidations
            frames.append(pd.DataFrame(frame))
        pd.concat(frames).to_csv(out / "equity.csv", index=False, float_format="%.10g")
        plot_curves(out / "equity.png", self.curves,
                    f"{self.report['run_dir']} @ {self.report['checkpoint']['iteration']} | "
                    f"{self.report['range']['what']}")
        return ["report.json", "equity.csv", "equity.png"]

    def lines(self, show_all: bool = False) -> list[str]:
        """The terminal report: policy and range, then a table and a verdict per config."""
        r, sel = self.report["range"], self.report["selection"]
        out = [f"policy: {self.report['checkpoint']['path']} ({sel['chosen_by']}; "
               f"{self.report['actions']}, seed {self.report['seed']})",
               f"range: {r['what']} of {self.report['data']['source']}",
               "each day from cash 1.0, ending flat; figures after fees, slippage and funding; "
               "Sharpe of the daily returns, annualised (365)"]
        header = (f"{'strategy':<10} {'return':>8} {'Sharpe':>7} {'max DD':>7} {'funding':>8} "
                  f"{'costs':>7} {'liq':>4} {'opened':>6} {'hours':>6} {'util':>5} "
                  f"{'vs policy: Sharpe diff, interval':>34}")
        for label, block in self.report["configs"].items():
            out += ["", f"config {label}", header, "-" * len(header)]
            versus = block["statistics"]["versus"]
            for name, m in block["strategies"].items():
                c = versus.get(name)
                diff = ("" if c is None else f"{c['sharpe_diff']:+.2f} [{c['ci_low']:+.2f}, "
                        f"{c['ci_high']:+.2f}]")
                out.append(
                    f"{name:<10} {100 * m['total_return']:>+7.2f}% {m['sharpe']:>+7.2f} "
                    f"{100 * m['max_drawdown']:>6.2f}% {100 * m['funding']:>+7.3f}% "
                    f"{100 * m['fees']:>6.3f}% {m['liquidations']:>4d} "
                    f"{m['positions_opened']:>6d} {m['mean_hours_held']:>6.1f} "
                    f"{m['utilisation']:>5.2f} {diff:>34}")
            out.append(f"verdict: {block['verdict']}")
        return out


def plot_curves(path: Path, curves: dict, title: str) -> None:
    """Each config's equity curves (policy bold), liquidations marked (red x), as a PNG."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.2 * len(curves) + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(curves), 1, sharex=True))
    colors = {"policy": "black", "never": "#7f7f7f", "greedy": "#d62728",
              "threshold": "#1f77b4"}
    for ax, (label, curve) in zip(axes, curves.items(), strict=True):
        times = curve["times"]
        marked = False
        for name in STRATEGIES:
            equity, liquidations = curve[name]
            bold = name == "policy"
            n_liq = int(liquidations.sum())
            ax.plot(times, equity, color=colors[name], lw=2.0 if bold else 1.0,
                    zorder=3 if bold else 2, label=f"{name} ({n_liq} liquidated)")
            hit = np.flatnonzero(liquidations)
            if hit.size:
                ax.scatter([times[i] for i in hit], equity[hit], marker="x", s=40,
                           color="red", zorder=4, label=None if marked else "liquidation")
                marked = True
        ax.axhline(1.0, color="grey", lw=0.6, ls="--")
        ax.set_ylabel("equity (start = 1)")
        ax.set_title(f"config {label}", fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)


def _market(request, cfg):
    """The market of the report: the run's (test hours included), or `--data`'s table as
    one range of all its hours (named test)."""
    from jaxtrade.data.funding import load_funding
    from jaxtrade.engine.start import load_run_market
    from jaxtrade.envs.funding import FundingMarket

    if request.data:
        panel = load_funding(request.data)
        return FundingMarket(panel, 0, 0), "all hours of the given data"
    return load_run_market(cfg, test=True), None


def assess(request, source) -> FundingAssessment:
    """`python -m jaxtrade.evaluate` on a funding run (request: `AssessRequest`; `source`
    its checkpoint): every strategy under every config through the
    whole days of the range (see the module docstring)."""
    from jaxtrade import checkpoint as ckpt
    from jaxtrade import report as comparison
    from jaxtrade.engine.assess import report_header
    from jaxtrade.errors import UsageError
    from jaxtrade.evaluation import make_policy_walk, walk_key
    from jaxtrade.trainer import build_network

    cfg = source.model_config
    if request.start is not None or request.end is not None:
        raise UsageError("--start and --end choose bars of a trading report; a funding run is "
                         "reported on whole days of --range (or of --data's table)")
    split = request.range or "test"
    if split == "all":
        raise UsageError("--range all: a funding run is reported on one range: test, "
                         "validation or train")
    if request.data and request.range not in (None, "test"):
        raise UsageError("--data is reported whole: leave out --range")
    market, what = _market(request, cfg)
    env = FundingEnv(market)
    hours = cfg.env.episode_length
    settings = {k: v for k, v in cfg.env.params_kwargs().items() if k != "episode_length"}
    configs = request.settings or CONFIGS
    seed = cfg.run.seed if request.seed is None else request.seed
    network = build_network(cfg, env)
    params = ckpt.read_params(source)
    walk = make_policy_walk(network, env, hours, greedy=not request.sample)
    key = walk_key(seed)
    rules = rule_walk(env, hours)
    selection = comparison.checkpoint_selection(request.run_dir, request.checkpoint)
    fns, out, curves = {}, {}, {}  # compiled once: every config's days share their shapes
    for config in configs:
        try:
            days, axes, starts = day_params(env, split, hours, config, settings)
        except ValueError as e:
            raise UsageError(f"config {config_label(config)}: {e}") from None
        if not fns:
            fns["policy"] = jax.jit(jax.vmap(lambda p: jax.tree.map(
                lambda x: x[:, 0], walk(params, p, key)[1].info), in_axes=(axes,)))
            fns["rules"] = jax.jit(jax.vmap(lambda p: rules(p, key), in_axes=(axes,)))
        infos = {"policy": fns["policy"](days)}
        both = fns["rules"](days)  # leaves [D, len(RULES), T]
        infos.update({name: jax.tree.map(lambda x, i=i: x[:, i], both)
                      for i, name in enumerate(RULES)})
        table, curve = {}, {"times": None}
        for name in STRATEGIES:
            info = {k: np.asarray(v, np.float64) for k, v in jax.device_get(infos[name]).items()}
            table[name] = day_metrics(info, hours)
            times, equity, liquidations = hourly_curve(info, market.panel.times, starts)
            curve["times"], curve[name] = times, (equity, liquidations)
        statistics = config_statistics(table, selection["candidates"], seed)
        label = config_label(config)
        leverage, utilisation, positions, *rest = config
        out[label] = {"config": {"leverage": leverage, "utilisation": utilisation,
                                 "max_positions": int(positions),
                                 "buffer": rest[0] if rest else 0.0},
                      "strategies": table, "statistics": statistics,
                      "verdict": config_verdict(table, statistics)}
        curves[label] = curve
    lo, hi = market.ranges[split]
    n_days = len(starts)
    what = (f"{n_days} whole days of {hours} hours of the {split} range "
            f"({market.panel.times[lo]} .. {market.panel.times[hi - 1]})"
            if what is None else f"{n_days} whole days of {hours} hours: {what}")
    report = {
        **report_header(request, source, selection),
        "report": "funding",
        "data": {"source": market.source, "symbols": list(market.panel.symbols),
                 "exchanges": list(market.panel.exchanges)},
        "range": {"name": None if request.data else split, "days": n_days,
                  "hours_per_day": hours, "what": what,
                  "start": str(market.panel.times[lo]), "end": str(market.panel.times[hi - 1])},
        "actions": "sampled" if request.sample else "greedy",
        "seed": seed,
        "env": settings,
        "rules": {"threshold_enter_apr": ENTER_APR, "threshold_exit_apr": EXIT_APR,
                  "threshold_take_profit": TAKE_PROFIT},
        "configs": out,
    }
    return FundingAssessment(report, curves)

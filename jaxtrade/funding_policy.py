"""A trained funding-env policy for deployment: today's opportunity table, your open positions,
account and trading config in; the action for this hour out (host-side orchestration around
one jitted program per number of hours).

    from jaxtrade import load_policy
    from jaxtrade.funding_policy import Account, TradingConfig

    policy = load_policy("runs/funding1")               # a funding run: a FundingPolicy
    decision = policy("today.csv", positions=[],        # or a DataFrame of the same table
                      account=Account(equity=10_000.0, cash=10_000.0),
                      config=TradingConfig(leverage=3, utilisation=0.6, max_positions=3))
    decision.description      # 'open BTC long binance short bybit at 0.5 of a position: ...'
    decision.probabilities    # action name -> probability (masked actions 0)

Inputs:

* the table: the hours of today so far, from the day's first hour (the episode's first
  step) to now, in `jaxtrade.data.funding.load_funding`'s format (a path or a DataFrame),
  at most `episode_length` hours. Any symbols and exchanges: the observation never names
  one (opportunities are ranked by fund_apr, positions described by their numbers).
* positions: a list of dicts, one per open position, in slot order (`close{p}` closes the
  p-th; None marks an empty slot, so that a bot can keep the slot numbers it has been
  using, as the env does when a position between two others closes): `POSITION_KEYS`
  (symbol, long_exchange, short_exchange, size in base units, entry_long_price,
  entry_short_price, margin_long, margin_short: each leg's isolated margin balance with
  its funding, leverage) and optionally funding (collected, net, 0),
  hours_held (0), alive_long and alive_short (True: a liquidated leg is not alive).
* account (`Account`): equity now, free cash, equity at the day's first hour (default:
  equity now) and legs liquidated today (0).
* config (`TradingConfig`): max leverage, target utilisation, max positions and the
  liquidation buffer, each inside the range the run trained on (its [env.funding]
  ranges: the observation shows the config, and the model knows only those).

Units: the env counts money in units of the day's starting equity. Every amount you give
(equity, cash, margins, funding, and size, a notional over price) is divided by
`day_start_equity` before it reaches the env; prices and leverage are unitless. Amounts in
the decision (margin per leg, notional) are in your units again.

How a decision is made, so that it equals what the env would do (the evaluation's greedy
walk of a day, `jaxtrade.funding_report`):

* the table's hours become a funding market (`build_data` of its `FundingPanel`, one flat
  hour appended so that the env may step into the last real one);
* the policy walks the day greedily from its first hour as one episode, from cash 1.0
  under your config, with the run's fees and margin rules (ruin off: the walk never leaves
  the episode), through the hours before the last. That warms the GRU state (reset at the
  day's first hour, as in training) and sets the episode's progress;
* at the last hour the walked state's positions, cash, equity and liquidations are
  replaced by yours (scaled as above; hours_held sets each position's opening step), the
  observation and the action mask are computed from that state and the table's last hour,
  and the action is the argmax of the masked logits. With a one-hour table there is no
  walk: the decision is the episode's first step.

Each number of hours compiles the program once (jit keyed by the walk's length and the
table's shape: its symbols and exchanges); later calls with the same shape reuse it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from jaxtrade import checkpoint as ckpt
from jaxtrade.config import Config, FundingConfig
from jaxtrade.data.funding import FundingPanel, fund_apr, load_funding
from jaxtrade.envs.funding import (
    ACCOUNT_FEATURES,
    CONFIG_FEATURES,
    N_ACTIONS,
    N_OPEN,
    N_SLOTS,
    OPP_FEATURES,
    SIZES,
    SLOT_FEATURES,
    TOP_K,
    FundingEnv,
    FundingMarket,
    Slots,
)
from jaxtrade.evaluation import EvaluationError, make_policy_walk, walk_key
from jaxtrade.networks import make_network
from jaxtrade.policy import check_params_fit, read_env_record
from jaxtrade.rollout import masked_logits

OBS_DIM = TOP_K * OPP_FEATURES + N_SLOTS * SLOT_FEATURES + ACCOUNT_FEATURES + CONFIG_FEATURES
ACTION_NAMES = ("hold", *(f"open{k}x{s:g}" for k in range(TOP_K) for s in SIZES),
                *(f"close{p}" for p in range(N_SLOTS)))  # the env's `action_names`
# A position's keys: required, then optional with their defaults.
POSITION_KEYS = ("symbol", "long_exchange", "short_exchange", "size", "entry_long_price",
                 "entry_short_price", "margin_long", "margin_short", "leverage")
POSITION_DEFAULTS = {"funding": 0.0, "hours_held": 0, "alive_long": True, "alive_short": True}


@dataclasses.dataclass(frozen=True)
class TradingConfig:
    """Your trading config (the env's per-episode `Config`)."""

    leverage: float  # max leverage of a new position
    utilisation: float  # target share of equity posted as margin
    max_positions: int  # positions held at once, 1 .. N_SLOTS
    buffer: float = 0.0  # close a position when a leg's mark comes this near (a fraction of
    # its entry) its liquidation price


@dataclasses.dataclass(frozen=True)
class Account:
    """Your account now, in your money units."""

    equity: float  # free cash + each open leg's margin balance and unrealised PnL
    cash: float  # free cash, not posted as margin
    day_start_equity: float | None = None  # equity at the day's first hour; None: equity
    liquidations: int = 0  # legs liquidated today


@dataclasses.dataclass(frozen=True)
class Opportunity:
    """One of the hour's best pairs by fund_apr (what `open{rank}x...` opens)."""

    rank: int
    symbol: str
    long_exchange: str
    short_exchange: str
    fund_apr: float  # percent a year


@dataclasses.dataclass(frozen=True)
class FundingDecision:
    """What the policy does at the table's last hour (trading at its prices)."""

    as_of: pd.Timestamp  # the table's last hour
    action: int  # index into ACTION_NAMES: 0 hold, 1 + 3k + j open, 31 + p close
    name: str  # ACTION_NAMES[action]
    description: str  # one readable line
    probabilities: dict[str, float]  # action name -> probability (masked ones 0, sum 1)
    mask: dict[str, bool]  # action name -> valid now
    opportunities: tuple[Opportunity, ...]  # the hour's top pairs, rank order
    opportunity: Opportunity | None = None  # an open: the pair
    size_fraction: float | None = None  # an open: of a position's margin budget
    margin: float | None = None  # an open: margin per leg, your units
    notional: float | None = None  # an open: notional per leg, your units
    slot: int | None = None  # a close: which position (index into your positions)
    position: Mapping[str, Any] | None = None  # a close: that position, as given

    def __str__(self) -> str:
        return (f"at {self.as_of:%Y-%m-%d %H:%M}: {self.description} "
                f"(p={self.probabilities[self.name]:.2f})")


def _config_error(name: str, value, lo, hi, key: str) -> EvaluationError:
    return EvaluationError(
        f"config.{name}={value!r}: expected a number in [{lo:g}, {hi:g}], the range this run "
        f"trained on ([env.funding] {key}_min .. {key}_max)")


def _number(where: str, value, *, positive=False, nonnegative=False) -> float:
    """`value` as a finite float, else a one-line EvaluationError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise EvaluationError(f"{where}={value!r}: expected a number")
    x = float(value)
    if not math.isfinite(x) or (positive and x <= 0) or (nonnegative and x < 0):
        need = "> 0" if positive else ">= 0" if nonnegative else "finite"
        raise EvaluationError(f"{where}={value!r}: expected a finite number {need}")
    return x


class FundingPolicy:
    """A trained funding policy and its run's rules (load with `jaxtrade.load_policy`)."""

    def __init__(self, run_dir: str | os.PathLike, source: ckpt.Source, params: Any,
                 seed: int | None = None):
        self.run_dir = Path(run_dir)
        self.checkpoint = source  # the checkpoint the weights come from
        self.config: Config = source.model_config  # the run's (fees, margin rules, network)
        self.params = params
        self.seed = self.config.run.seed if seed is None else seed
        if self.config.env.name != FundingEnv.name:
            raise EvaluationError(f"{source.path}: trained on env {self.config.env.name!r}; "
                                  f"a FundingPolicy loads {FundingEnv.name} runs only")
        record = read_env_record(self.run_dir)
        obs_dim, n_actions, layout = record if record is not None else (OBS_DIM, N_ACTIONS, None)
        if (obs_dim, n_actions) != (OBS_DIM, N_ACTIONS):
            raise EvaluationError(
                f"{self.run_dir}: the run recorded obs {obs_dim} and {n_actions} actions; this "
                f"jaxtrade's funding env has obs {OBS_DIM} and {N_ACTIONS} actions")
        self.network = make_network(self.config.network, obs_dim, n_actions, layout=layout)
        check_params_fit(source, params, self.network, obs_dim, n_actions)
        self.rules: FundingConfig = self.config.env.funding  # fees, margin, config ranges
        self.episode_length = self.config.env.episode_length
        self._programs: dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"FundingPolicy({str(self.checkpoint.path)!r})"

    # ---------------------------------------------------------------------- inputs
    def check_config(self, config: TradingConfig | Mapping) -> TradingConfig:
        """`config` as a TradingConfig inside the run's trained ranges.

        Raises:
          EvaluationError: an unknown key, a value out of its range, or a leverage whose
            initial margin leaves no room above the maintenance rate and the buffer.
        """
        config = _as(TradingConfig, config, "config")
        r = self.rules
        for name, key in (("leverage", "leverage"), ("utilisation", "utilisation"),
                          ("buffer", "buffer")):
            value = getattr(config, name)
            lo, hi = getattr(r, f"{key}_min"), getattr(r, f"{key}_max")
            if not lo <= _number(f"config.{name}", value) <= hi:
                raise _config_error(name, value, lo, hi, key)
        lo, hi = r.positions_min, min(r.positions_max, N_SLOTS)
        m = config.max_positions
        if (isinstance(m, bool) or not isinstance(m, int | np.integer)) or not lo <= m <= hi:
            raise EvaluationError(
                f"config.max_positions={m!r}: expected a whole number in [{lo}, {hi}], the "
                f"range this run trained on ([env.funding] positions_min .. positions_max)")
        if not 1.0 / config.leverage > r.maintenance_rate + config.buffer:
            raise EvaluationError(
                f"config: leverage {config.leverage:g} leaves no room above the maintenance "
                f"rate {r.maintenance_rate:g} and the liquidation buffer {config.buffer:g} "
                f"(1 / leverage must exceed their sum)")
        return config

    def _check_account(self, account: Account | Mapping) -> tuple[Account, float]:
        account = _as(Account, account, "account")
        equity = _number("account.equity", account.equity, positive=True)
        _number("account.cash", account.cash, nonnegative=True)
        start = (equity if account.day_start_equity is None
                 else _number("account.day_start_equity", account.day_start_equity,
                              positive=True))
        n = account.liquidations
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise EvaluationError(f"account.liquidations={n!r}: expected a whole number >= 0")
        return account, start

    def _slots(self, positions: Sequence[Mapping], panel: FundingPanel, scale: float,
               hour: int) -> Slots:
        """`positions` as the env's slots, money divided by `scale` (numpy leaves)."""
        if isinstance(positions, Mapping) or not isinstance(positions, Sequence):
            raise EvaluationError(f"positions: expected a list of dicts (one per open "
                                  f"position), got {type(positions).__name__}")
        if len(positions) > N_SLOTS:
            raise EvaluationError(f"positions: {len(positions)} given; the env holds at most "
                                  f"{N_SLOTS}")
        f = np.zeros(N_SLOTS, np.float32)
        s = {k: f.copy() for k in ("size", "entry_long", "entry_short", "margin_long",
                                   "margin_short", "leverage", "funding")}
        i = {k: np.zeros(N_SLOTS, np.int32) for k in ("symbol", "long_ex", "short_ex",
                                                      "opened")}
        b = {k: np.zeros(N_SLOTS, bool) for k in ("open", "alive_long", "alive_short")}
        for p, pos in enumerate(positions):
            where = f"positions[{p}]"
            if pos is None:  # an empty slot: the ones after it keep their numbers
                continue
            if not isinstance(pos, Mapping):
                raise EvaluationError(f"{where}: expected a dict, got {type(pos).__name__}")
            missing = [k for k in POSITION_KEYS if k not in pos]
            unknown = sorted(set(pos) - set(POSITION_KEYS) - set(POSITION_DEFAULTS))
            if missing or unknown:
                raise EvaluationError(
                    f"{where}: " + (f"missing {', '.join(missing)}" if missing else
                                    f"unknown key(s) {', '.join(map(str, unknown))}")
                    + f"; expected {', '.join(POSITION_KEYS)} and optionally "
                    f"{', '.join(POSITION_DEFAULTS)}")
            pos = {**POSITION_DEFAULTS, **pos}
            sym, lx, sx = pos["symbol"], pos["long_exchange"], pos["short_exchange"]
            if sym not in panel.symbols:
                raise EvaluationError(f"{where}.symbol={sym!r} is not in the table (symbols: "
                                      f"{', '.join(panel.symbols)})")
            for key, ex in (("long_exchange", lx), ("short_exchange", sx)):
                if ex not in panel.exchanges:
                    raise EvaluationError(f"{where}.{key}={ex!r} is not in the table "
                                          f"(exchanges: {', '.join(panel.exchanges)})")
            if lx == sx:
                raise EvaluationError(f"{where}: long_exchange and short_exchange are both "
                                      f"{lx!r}; a pair is two exchanges")
            k, e_l, e_s = (panel.symbols.index(sym), panel.exchanges.index(lx),
                           panel.exchanges.index(sx))
            alive = {}
            for leg in ("long", "short"):
                flag = pos[f"alive_{leg}"]
                if not isinstance(flag, bool | np.bool_):
                    raise EvaluationError(f"{where}.alive_{leg}={flag!r}: expected True or "
                                          f"False")
                alive[leg] = bool(flag)
            if not (alive["long"] or alive["short"]):
                raise EvaluationError(f"{where}: neither leg is alive; a closed position is "
                                      f"not an open one: leave it out")
            for leg, e in (("long", e_l), ("short", e_s)):
                if alive[leg] and not panel.listed[:, k, e].any():
                    raise EvaluationError(
                        f"{where}: {sym} on {panel.exchanges[e]} has no row in the table (its "
                        f"{leg} leg is priced from it); add its hours to the table")
            size = _number(f"{where}.size", pos["size"], positive=True)
            lev = _number(f"{where}.leverage", pos["leverage"], positive=True)
            if lev < 1:
                raise EvaluationError(f"{where}.leverage={pos['leverage']!r}: expected >= 1")
            held = pos["hours_held"]
            if isinstance(held, bool) or not isinstance(held, int | np.integer) or held < 0:
                raise EvaluationError(f"{where}.hours_held={held!r}: expected a whole number "
                                      f">= 0")
            i["symbol"][p], i["long_ex"][p], i["short_ex"][p] = k, e_l, e_s
            i["opened"][p] = hour - int(held)
            b["open"][p], b["alive_long"][p], b["alive_short"][p] = (True, alive["long"],
                                                                    alive["short"])
            s["size"][p] = size / scale
            s["entry_long"][p] = _number(f"{where}.entry_long_price", pos["entry_long_price"],
                                         positive=True)
            s["entry_short"][p] = _number(f"{where}.entry_short_price",
                                          pos["entry_short_price"], positive=True)
            s["margin_long"][p] = _number(f"{where}.margin_long", pos["margin_long"]) / scale
            s["margin_short"][p] = _number(f"{where}.margin_short", pos["margin_short"]) / scale
            s["leverage"][p] = lev
            s["funding"][p] = _number(f"{where}.funding", pos["funding"]) / scale
        return Slots(**s, **i, **b)

    def panel(self, table: str | os.PathLike | pd.DataFrame) -> FundingPanel:
        """The table's hours as a panel (checked: at most `episode_length` hours).

        Raises:
          DataError: a bad table (one line, as `load_funding`'s).
          EvaluationError: more hours than a day.
        """
        panel = load_funding(table if isinstance(table, pd.DataFrame) else Path(table))
        if panel.n_hours > self.episode_length:
            raise EvaluationError(
                f"table: {panel.n_hours} hours ({panel.times[0]:%Y-%m-%d %H:%M} .. "
                f"{panel.times[-1]:%Y-%m-%d %H:%M}) is more than a day of {self.episode_length}; "
                f"give today's hours only, from the day's first hour to now")
        return panel

    # -------------------------------------------------------------------- decisions
    def __call__(self, table: str | os.PathLike | pd.DataFrame,
                 positions: Sequence[Mapping[str, Any]] = (), *,
                 account: Account | Mapping, config: TradingConfig | Mapping
                 ) -> FundingDecision:
        """The action at the table's last hour (see the module docstring).

        Args:
          table: today's opportunity table so far (a path or a DataFrame, as
            `load_funding` reads), from the day's first hour to now.
          positions: your open positions (dicts of `POSITION_KEYS`), slot order.
          account: your equity, free cash, day-start equity and liquidations today.
          config: your trading config, inside the run's trained ranges.

        Raises:
          DataError: a bad table. EvaluationError: a table longer than a day, a config out
            of range, a bad account or position (one line each).
        """
        config = self.check_config(config)
        account, start = self._check_account(account)
        panel = self.panel(table)
        n = panel.n_hours - 1  # the walk's steps; the decision is at hour n
        slots = self._slots(positions, panel, start, n)
        env = FundingEnv(FundingMarket(_pad(panel), panel.n_hours + 1, panel.n_hours + 1))
        env_params = self.env_params(env, config)
        action, probs, mask = jax.device_get(self._program(env, n)(
            self.params, env_params, walk_key(self.seed), slots,
            np.float32(account.cash / start), np.float32(account.equity / start),
            np.int32(account.liquidations)))
        return self._decision(env, panel, int(action), probs, mask, config, account, positions)

    decide = __call__

    def env_params(self, env: FundingEnv, config: TradingConfig):
        """Params of the day's episode from its first hour: the run's fees and margin rules,
        your config as a point range, ruin off (the walk stays one episode)."""
        fixed = dict(leverage_min=config.leverage, leverage_max=config.leverage,
                     utilisation_min=config.utilisation, utilisation_max=config.utilisation,
                     positions_min=int(config.max_positions),
                     positions_max=int(config.max_positions),
                     buffer_min=config.buffer, buffer_max=config.buffer)
        settings = {**dataclasses.asdict(self.rules), **fixed, "ruin_equity": 0.0}
        return env.make_params("train", episode_length=self.episode_length, start=0,
                               **settings)

    def _program(self, env: FundingEnv, n_steps: int):
        """jit: the walk of `n_steps` hours, then the decision on your state; one per walk
        length (jit itself keys on the table's shape)."""
        if n_steps not in self._programs:
            network = self.network
            walk = make_policy_walk(network, env, n_steps)

            def decide(params, env_params, key, slots, cash, equity, liquidations):
                carry, _ = walk(params, env_params, key)  # leaves [1, ...], at hour n_steps
                yours = dict(slots=slots, cash=cash, equity=equity, liquidations=liquidations)
                state = carry.env_state.replace(**jax.tree.map(lambda x: jnp.asarray(x)[None],
                                                               yours))
                obs = jax.vmap(env.get_obs, in_axes=(0, None))(state, env_params)
                mask = jax.vmap(env.action_mask, in_axes=(0, None))(state, env_params)
                logits = network.apply({"params": params}, carry.hidden, obs,
                                       carry.reset).logits
                logits = masked_logits(logits.astype(jnp.float32), mask)[0]
                return jnp.argmax(logits).astype(jnp.int32), jax.nn.softmax(logits), mask[0]

            self._programs[n_steps] = jax.jit(decide)
        return self._programs[n_steps]

    def _decision(self, env: FundingEnv, panel: FundingPanel, action: int, probs, mask,
                  config: TradingConfig, account: Account, positions) -> FundingDecision:
        data, t = env._data, panel.n_hours - 1
        opportunities = []
        for k in range(TOP_K):
            if not data.top_present[t, k]:
                break
            sym, lx, sx = (int(x) for x in data.top[t, k])
            apr = fund_apr(data.rate[t, sym, lx], data.rate[t, sym, sx], data.interval[lx],
                           data.interval[sx])
            opportunities.append(Opportunity(k, panel.symbols[sym], panel.exchanges[lx],
                                             panel.exchanges[sx], float(apr)))
        extra: dict[str, Any] = {}
        if action == 0:
            description = "hold"
        elif action <= N_OPEN:
            k, j = divmod(action - 1, len(SIZES))
            o = opportunities[k]
            size = SIZES[j]
            margin = 0.5 * size * config.utilisation * account.equity / config.max_positions
            notional = margin * config.leverage
            extra = dict(opportunity=o, size_fraction=size, margin=margin, notional=notional)
            description = (f"open {o.symbol} long {o.long_exchange} short {o.short_exchange} "
                           f"(fund_apr {o.fund_apr:.1f}%) at {size:g} of a position: margin "
                           f"{margin:,.2f} and notional {notional:,.2f} per leg "
                           f"({config.leverage:g}x)")
        else:
            p = action - 1 - N_OPEN
            pos = positions[p]
            extra = dict(slot=p, position=pos)
            description = (f"close slot {p}: {pos['symbol']} long {pos['long_exchange']} "
                           f"short {pos['short_exchange']}")
        return FundingDecision(
            as_of=panel.times[-1], action=action, name=ACTION_NAMES[action],
            description=description,
            probabilities={a: float(x) for a, x in zip(ACTION_NAMES, probs, strict=True)},
            mask={a: bool(x) for a, x in zip(ACTION_NAMES, mask, strict=True)},
            opportunities=tuple(opportunities), **extra)


def _as(cls, value, what: str):
    """`value` (a `cls` or a mapping of its fields) as a `cls`."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise EvaluationError(f"{what}: expected a {cls.__name__} or a dict of its fields, got "
                              f"{type(value).__name__}")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(fields))
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.name not in value]
    if unknown or required:
        raise EvaluationError(
            f"{what}: " + (f"unknown key(s) {', '.join(map(str, unknown))}" if unknown
                           else f"missing {', '.join(required)}")
            + f"; expected {', '.join(fields)}")
    return cls(**value)


def _pad(panel: FundingPanel) -> FundingPanel:
    """`panel` with its last hour repeated once after it: the env's params need an hour after
    the last one a step may trade at (the decision reads nothing of it)."""
    grow = {name: np.concatenate([getattr(panel, name), getattr(panel, name)[-1:]])
            for name in ("price", "rate", "volume", "listed")}
    times = panel.times.append(pd.DatetimeIndex([panel.times[-1] + pd.Timedelta(hours=1)]))
    return dataclasses.replace(panel, times=times, **grow)

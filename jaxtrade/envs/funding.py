"""Cross-exchange funding-rate arbitrage on perpetual futures (pure JAX, gymnax-style API).

The agent holds up to `N_SLOTS` hedged positions: each is long a perpetual of one symbol on
one exchange and short the same symbol on another, and earns the short leg's funding
rate minus the long leg's while the two prices, which co-move, roughly cancel.

Market mechanics (the exchanges' documentation these follow):

* Funding (Binance, "Introduction to Binance Futures Funding Rates"; Bybit, "Funding
  Fee Calculation"): funding fee = position value x funding rate, position value = size
  x mark price at the settlement; a positive rate is paid by longs to shorts, a negative
  one by shorts to longs. Each exchange settles at its own interval: here exchange e
  settles at the hours whose hour of day is a multiple of its `interval_hours` (00:00,
  08:00, 16:00 UTC on 8 h venues, every hour on 1 h venues), with the rate published
  in the hour before (`rate[t - 1]` settles at hour t).
* Isolated margin (Bybit, "Liquidation Price (USDT Contract)", isolated margin mode):
  initial margin IM = position value at entry / leverage; maintenance margin MM =
  position value at entry x MMR (no maintenance-margin deduction: one risk tier);
  liquidation price, long: entry - (IM - MM) / size - extra margin / size, short: entry
  + (IM - MM) / size + extra margin / size. Funding paid or received is the "extra
  margin" here: it changes the leg's margin balance M, so the liquidation price is
  entry + (MM - M) / size for a long and entry - (MM - M) / size for a short, which with
  M = IM is entry x (1 - 1/L + MMR) and entry x (1 + 1/L - MMR). A leg whose mark price
  reaches its liquidation price is closed and its margin balance is lost (settled at the
  bankruptcy price, the remainder to the insurance fund); the other leg stays open and
  unhedged.
* Fees: a taker fee on the traded value of each leg at entry and at exit
  (`taker_fee`, 0.05% by default: Binance's and Bybit's base taker rate), and slippage:
  buys fill at mark x (1 + slippage), sells at mark x (1 - slippage).

Money is in units of the initial equity (1.0). Equity = free cash + the margin balance
of each open leg + its unrealised PnL (long: size x (mark - entry), short: size x
(entry - mark)); every change of it is accounted for by `info`'s flows (funding, price
PnL, fees, slippage, liquidation losses: `tests/envs/test_funding.py` checks the
identity at every step).

Timeline of one step (state.t = t, an hour):

1. The agent has seen the opportunity table of hour t (prices and rates published at
   t) and its positions marked at t. It acts at once, at hour t's prices with slippage
   (a bot that polls the table and trades within the hour).
2. Over hour t -> t+1: prices move to t+1; exchanges that settle at t+1 pay or charge
   funding at rate[t]; legs whose mark crossed their liquidation price are liquidated;
   positions with a leg within `liquidation_buffer` (a fraction of its entry) of its
   liquidation price are closed by the env at t+1's prices (the user's stop). An
   episode is a trading day that ends flat: its last step closes every open position at
   t+1's prices, with fees and slippage, and ends the episode as a terminal state (the
   task is done; nothing is bootstrapped). Ruin (equity below `ruin_fraction`) is
   terminal too; the end of the range truncates.
3. reward = `REWARD_SCALE` x (equity[t+1] - equity[t]), i.e. percent of the initial
   equity: opening a full position at 10x costs about half a percent in fees and
   slippage, a day's funding on it earns a few hundredths, and an episode's return stays
   of order 1, where the value function is well scaled. It is summed from the step's
   flows (float32 keeps their digits; the identity test holds them equal to the change
   of the marked equity), minus `liquidation_penalty` per liquidated leg (0 by
   default).

Actions (`N_ACTIONS` = 36, as the reference): 0 hold; 1 + 3k + j opens the k-th best
current opportunity (by fund_apr, k < `TOP_K` = 10) at size `SIZES[j]` of a position's
margin budget; 31 + p closes position slot p (< `N_SLOTS` = 5). Masked: opening beyond
the config's max positions, beyond the margin its target utilisation allows or the free
cash, an opportunity absent at that rank, or a pair already held; closing an empty slot.
A position's margin budget is utilisation x equity / max positions, split equally
between its two legs; its notional per leg is the leg's margin x leverage.

Config-aware: every episode draws a trading config (max leverage, target utilisation,
max positions, liquidation buffer) from the ranges in `EnvParams`; the config is part
of the observation, so one model serves any config in the ranges. Evaluation and
deployment set the ranges to a point (the user's config).

Observation, float32 [`obs_dim`]:
  TOP_K x OPP_FEATURES: per opportunity k of hour t: present, fund_apr / 100, the short
    and the long leg's annualised rate, basis (short price / long price - 1) x 100,
    log10 volume - 7, hours to each leg's next settlement / its interval, held
  N_SLOTS x SLOT_FEATURES: per slot: open, long alive, short alive, notional / equity,
    leverage / 10, entry basis x 100, basis now x 100, each leg's maintenance margin /
    (margin balance + unrealised PnL) (1 at liquidation), unrealised PnL / equity x 100,
    funding collected / equity x 100, hours held / 24, the pair's fund_apr now / 100
  5 account values: free cash / equity, equity - 1, margin used / equity, episode
    progress, liquidations this episode / 5
  4 config values: max leverage / 10, target utilisation, max positions / 5,
    liquidation buffer x 20
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxtrade.config import FundingConfig, broken_rule
from jaxtrade.data.funding import (
    HOURS_PER_YEAR,
    FundingPanel,
    FundingSynthConfig,
    fund_apr,
    load_funding,
    settlement_mask,
    split_hours,
    synthetic_funding,
)
from jaxtrade.data.market import MARKET_FORMAT
from jaxtrade.envs.base import Environment, register

TOP_K = 10  # opportunities offered each hour
SIZES = (0.25, 0.5, 1.0)  # an open's margin as a fraction of a position's budget
N_SLOTS = 5  # position slots (the largest max_positions)
N_OPEN = TOP_K * len(SIZES)
N_ACTIONS = 1 + N_OPEN + N_SLOTS
HOLD = 0
OPP_FEATURES = 9
SLOT_FEATURES = 13
ACCOUNT_FEATURES = 5
CONFIG_FEATURES = 4
REWARD_SCALE = 100.0  # reward in percent of the initial equity


@struct.dataclass
class FundingData:
    """The hourly arrays the env reads (one copy shared by every env; host numpy until a
    program places them). T hours, S symbols, E exchanges."""

    price: jax.Array  # float32 [T, S, E] mark price; carried forward where not listed
    rate: jax.Array  # float32 [T, S, E] funding rate per settlement; 0 where not listed
    log_volume: jax.Array  # float32 [T, S, E] log10 24 h volume; 0 where not listed
    listed: jax.Array  # bool [T, S, E]
    settles: jax.Array  # bool [T, E] exchange e settles at hour t
    to_settle: jax.Array  # float32 [T, E] hours to e's next settlement / its interval
    interval: jax.Array  # float32 [E] funding interval, hours
    # The hour's opportunities, best fund_apr first: (symbol, long exchange, short
    # exchange) int32 [T, K, 3], present bool [T, K] (fewer than K pairs with apr > 0).
    top: jax.Array
    top_present: jax.Array


@struct.dataclass
class Slots:
    """The position slots of one env (leaves [N_SLOTS])."""

    open: jax.Array  # bool
    symbol: jax.Array  # int32
    long_ex: jax.Array  # int32
    short_ex: jax.Array  # int32
    size: jax.Array  # float32, base units held by each leg
    entry_long: jax.Array  # float32, fill prices (slippage included)
    entry_short: jax.Array
    margin_long: jax.Array  # float32, isolated margin balance of each leg (funding included)
    margin_short: jax.Array
    alive_long: jax.Array  # bool, the leg is open (not liquidated)
    alive_short: jax.Array
    leverage: jax.Array  # float32, at entry
    funding: jax.Array  # float32, funding collected by the position (both legs, net)
    opened: jax.Array  # int32, the episode step it was opened at


@struct.dataclass
class Config:
    """One episode's trading config (drawn at reset from `EnvParams`' ranges)."""

    leverage: jax.Array  # float32 [], max leverage of a new position
    utilisation: jax.Array  # float32 [], target share of equity used as margin
    max_positions: jax.Array  # int32 [], in 1 .. N_SLOTS
    buffer: jax.Array  # float32 [], close a position when a leg gets this near liquidation


@struct.dataclass
class EnvState:
    t: jax.Array  # int32 [], the hour the next action trades at
    step: jax.Array  # int32 [], steps taken in this episode
    cash: jax.Array  # float32 [], free cash
    equity: jax.Array  # float32 [], equity marked at hour t
    slots: Slots
    config: Config
    liquidations: jax.Array  # int32 [], legs liquidated this episode


@struct.dataclass
class EnvParams:
    data: FundingData
    start_min: jax.Array  # int32 [], first hour an episode may start at
    start_max: jax.Array  # int32 [], last one
    end: jax.Array  # int32 [], last hour whose prices a step may read
    episode_length: jax.Array  # int32 []
    taker_fee: jax.Array  # float32 [], fee per leg on traded value, entry and exit
    slippage: jax.Array  # float32 [], fraction of the mark a fill moves against the trade
    mmr: jax.Array  # float32 [], maintenance margin rate
    liquidation_penalty: jax.Array  # float32 [], reward penalty per liquidated leg
    ruin_fraction: jax.Array  # float32 [], equity that ends an episode (terminated)
    # Config ranges, [lo, hi] each (float32 [2]; max_positions int32 [2]).
    leverage: jax.Array
    utilisation: jax.Array
    max_positions: jax.Array
    buffer: jax.Array


def liquidation_prices(entry_long, entry_short, size, margin_long, margin_short, mmr):
    """Each leg's liquidation price: where margin balance + unrealised PnL falls to the
    maintenance margin (size x entry x MMR). Long: entry + (MM - M) / size; short:
    entry - (MM - M) / size."""
    safe = jnp.where(size > 0, size, 1.0)
    long = entry_long + (size * entry_long * mmr - margin_long) / safe
    short = entry_short - (size * entry_short * mmr - margin_short) / safe
    return long, short


def build_data(panel) -> FundingData:
    """`FundingData` (numpy) of a `jaxtrade.data.funding.FundingPanel`: prices carried
    forward over hours a leg is not listed (and back from its first listing), rates and
    volumes 0 there, settlement hours from each exchange's interval, and each hour's
    best `TOP_K` opportunities by fund_apr (apr > 0 only)."""
    listed = np.asarray(panel.listed, bool)
    price = np.asarray(panel.price, np.float64).copy()
    T, S, E = price.shape
    # Carry prices forward, then backward, per (symbol, exchange); 1.0 where never listed.
    for s in range(S):
        for e in range(E):
            col = price[:, s, e]
            ok = listed[:, s, e] & np.isfinite(col)
            if not ok.any():
                col[:] = 1.0
                continue
            idx = np.where(ok, np.arange(T), 0)
            np.maximum.accumulate(idx, out=idx)
            first = int(np.argmax(ok))
            idx[:first] = first
            price[:, s, e] = col[idx]
    rate = np.where(listed, np.nan_to_num(np.asarray(panel.rate, np.float64)), 0.0)
    volume = np.asarray(panel.volume, np.float64)
    log_volume = np.where(listed & (volume > 0), np.log10(np.where(volume > 0, volume, 1.0)),
                          0.0)
    interval = np.asarray(panel.interval_hours, np.float64)
    hour = np.asarray(panel.times.hour)
    settles = settlement_mask(panel.times, panel.interval_hours)
    to_settle = ((interval[None, :] - hour[:, None] % interval[None, :]) % interval[None, :])
    to_settle = np.where(to_settle == 0, interval[None, :], to_settle) / interval[None, :]
    # Every ordered pair (long a, short b), a != b, both listed: apr [T, S, E, E].
    ann = rate * HOURS_PER_YEAR / interval[None, None, :]
    apr = 100.0 * (ann[:, :, None, :] - ann[:, :, :, None])  # [T, S, long, short]
    both = listed[:, :, :, None] & listed[:, :, None, :]
    both &= ~np.eye(E, dtype=bool)[None, None]
    apr = np.where(both & (apr > 0), apr, -np.inf).reshape(T, -1)
    order = np.argsort(-apr, axis=1, kind="stable")[:, :TOP_K]
    best = np.take_along_axis(apr, order, axis=1)
    k = order.shape[1]
    top = np.zeros((T, TOP_K, 3), np.int32)
    top[:, :k, 0] = order // (E * E)
    top[:, :k, 1] = (order // E) % E
    top[:, :k, 2] = order % E
    present = np.zeros((T, TOP_K), bool)
    present[:, :k] = np.isfinite(best)
    return FundingData(
        price=price.astype(np.float32), rate=rate.astype(np.float32),
        log_volume=log_volume.astype(np.float32), listed=listed, settles=settles,
        to_settle=to_settle.astype(np.float32), interval=interval.astype(np.float32),
        top=top, top_present=present)


def _empty_slots() -> Slots:
    f = jnp.zeros(N_SLOTS, jnp.float32)
    i = jnp.zeros(N_SLOTS, jnp.int32)
    b = jnp.zeros(N_SLOTS, bool)
    return Slots(open=b, symbol=i, long_ex=i, short_ex=i, size=f, entry_long=f,
                 entry_short=f, margin_long=f, margin_short=f, alive_long=b, alive_short=b,
                 leverage=f, funding=f, opened=i)


_DEFAULTS = FundingConfig()  # [env.funding]: fees, margin, config ranges (and rules)


@dataclasses.dataclass(frozen=True)
class FundingMarket:
    """A `jaxtrade.data.funding.FundingPanel` split by time: train hours [0, val_start),
    validation [val_start, test_start), test [test_start, n_hours). A training run holds
    it `without_test()`: the panel cut before the test hours, which it knows by their
    times alone (`withheld_test`). The engine reads it as it reads a portfolio `Market`
    (`describe`, `report`, `span`, `record` for market.json)."""

    panel: FundingPanel
    val_start: int
    test_start: int
    withheld_test: dict | None = None
    unit: str = "hours"  # what a span's "bars" count, for the banner
    worlds: None = None  # no procedural worlds, no validation pool: one market
    validation_pool: None = None
    world_bars: None = None

    @property
    def ranges(self) -> dict[str, tuple[int, int]]:
        n = self.panel.n_hours
        return {"train": (0, self.val_start), "validation": (self.val_start, self.test_start),
                "test": (self.test_start, n)}

    @property
    def source(self) -> str:
        return self.panel.source

    @property
    def report(self) -> tuple[str, ...]:
        p = self.panel
        venues = ", ".join(f"{e} ({h} h)" for e, h in zip(p.exchanges, p.interval_hours,
                                                          strict=True))
        return (f"{p.n_symbols} symbols on {p.n_exchanges} exchanges: {venues}",)

    def span(self, name: str) -> dict | None:
        """Range `name` as {"start", "end", "bars" (hours), "first", "last"}, or None."""
        if name == "test" and self.withheld_test is not None:
            return dict(self.withheld_test)
        lo, hi = self.ranges[name]
        if hi <= lo:
            return None
        first, last = self.panel.times[lo], self.panel.times[hi - 1]
        return {"start": str(first), "end": str(last), "bars": hi - lo,
                "first": first.isoformat(), "last": last.isoformat()}

    def describe(self) -> str:
        def part(name):
            span = self.span(name)
            return (f"{name} none" if span is None
                    else f"{name} {span['bars']} hours ({span['start']} .. {span['end']})")

        n = self.panel.n_hours + (self.withheld_test or {}).get("bars", 0)
        return f"{self.source}: {n} hours; " + ", ".join(part(r) for r in self.ranges)

    def without_test(self) -> FundingMarket:
        if self.test_start == self.panel.n_hours:
            return self
        return dataclasses.replace(self, panel=self.panel.slice(0, self.test_start),
                                   withheld_test=self.span("test"))

    def with_all_assets(self) -> FundingMarket:
        return self

    def record(self) -> dict:
        """market.json: where the data came from, its symbols, venues and ranges."""
        p = self.panel
        return {"format": MARKET_FORMAT, "kind": "funding", "source": self.source,
                "symbols": list(p.symbols), "exchanges": list(p.exchanges),
                "interval_hours": [int(h) for h in p.interval_hours],
                **{name: self.span(name) for name in self.ranges}}


def load_funding_market(cfg, test: bool = False) -> FundingMarket:
    """The run's funding market (`--data` an opportunity table, else the synthetic one of
    `FundingSynthConfig`), split by `--val-fraction` / `--test-fraction`; without its test
    hours unless `test`."""
    data = cfg.data
    panel = (load_funding(data.path) if data.path is not None
             else synthetic_funding(FundingSynthConfig()))
    val_start, test_start = split_hours(panel.n_hours, data.val_fraction, data.test_fraction)
    market = FundingMarket(panel, val_start, test_start)
    return market if test else market.without_test()


class FundingEnv(Environment[EnvState, EnvParams]):
    """Funding-rate arbitrage over a `FundingMarket` (see the module docstring)."""

    name = "funding"
    num_actions = N_ACTIONS
    default_episode_length = 24  # hourly steps: an episode is one trading day
    load_market = staticmethod(load_funding_market)  # its data is its own (`--data`)
    evaluation = "jaxtrade.funding_report:assess"  # `python -m jaxtrade.evaluate`

    def __init__(self, market):
        self.market = market
        self.n_symbols = market.panel.n_symbols
        self.n_exchanges = market.panel.n_exchanges
        self.n_hours = market.panel.n_hours
        self._ranges = market.ranges
        self._data = build_data(market.panel)

    # ----------------------------------------------------------------- spaces, params
    @property
    def obs_dim(self) -> int:
        return (TOP_K * OPP_FEATURES + N_SLOTS * SLOT_FEATURES + ACCOUNT_FEATURES
                + CONFIG_FEATURES)

    @property
    def action_names(self) -> tuple[str, ...]:
        opens = tuple(f"open{k}x{s:g}" for k in range(TOP_K) for s in SIZES)
        return ("hold", *opens, *(f"close{p}" for p in range(N_SLOTS)))

    def make_params(self, split: str = "train", *, episode_length: int = default_episode_length,
                    start: int | None = None, **settings) -> EnvParams:
        """Params of episodes inside hours [lo, hi) of `split` (host-side): starts leave room
        for a whole episode; `start` fixes the first hour. `settings` override the fields of
        `jaxtrade.config.FundingConfig` ([env.funding]), each checked against its rule.

        Raises:
          ValueError: unknown split or setting, a range too short for the episode, or a
            config range outside its bounds.
        """
        if split not in self._ranges:
            raise ValueError(f"split must be one of {', '.join(self._ranges)}, got {split!r}")
        unknown = set(settings) - {f.name for f in dataclasses.fields(FundingConfig)}
        if unknown:
            raise ValueError(f"unknown funding env settings: {', '.join(sorted(unknown))}")
        s = dataclasses.replace(_DEFAULTS, **settings)
        for name, value in settings.items():
            if (rule := broken_rule(name, value)) is not None:
                raise ValueError(f"{name} must be {rule}, got {value}")
        lo, hi = self._ranges[split]
        last = hi - 1  # the last hour a step may mark at
        if start is not None:
            if not lo <= start < last:
                raise ValueError(f"start {start} is outside the {split} hours [{lo}, {last})")
            start_min = start_max = start
        elif last - episode_length < lo:
            raise ValueError(f"the {split} range has {hi - lo} hours, too few for an "
                             f"episode of {episode_length} steps (needs {episode_length + 1})")
        else:
            start_min, start_max = lo, last - episode_length

        if not s.positions_min <= s.positions_max:
            raise ValueError(f"max positions: positions_min must be <= positions_max, got "
                             f"{s.positions_min} > {s.positions_max}")
        for name in ("leverage", "utilisation", "buffer"):
            a, b = getattr(s, f"{name}_min"), getattr(s, f"{name}_max")
            if not a <= b:
                raise ValueError(f"{name}_min must be <= {name}_max, got {a} > {b}")
        if not 1.0 / s.leverage_max > s.maintenance_rate + s.buffer_max:
            raise ValueError(f"leverage {s.leverage_max} leaves no room above the maintenance "
                             f"rate {s.maintenance_rate} and the liquidation buffer "
                             f"{s.buffer_max}")

        def pair(name, dtype):
            return jnp.asarray((getattr(s, f"{name}_min"), getattr(s, f"{name}_max")), dtype)

        f32 = jnp.float32
        return EnvParams(
            data=jax.device_put(self._data),  # host arrays onto the device (no compile)
            start_min=jnp.int32(start_min), start_max=jnp.int32(start_max),
            end=jnp.int32(last), episode_length=jnp.int32(episode_length),
            taker_fee=f32(s.taker_fee), slippage=f32(s.fill_slippage),
            mmr=f32(s.maintenance_rate), liquidation_penalty=f32(s.liquidation_penalty),
            ruin_fraction=f32(s.ruin_equity),
            leverage=pair("leverage", f32), utilisation=pair("utilisation", f32),
            max_positions=pair("positions", jnp.int32), buffer=pair("buffer", f32))

    # ------------------------------------------------------------------ dynamics
    def reset_env(self, key: jax.Array, params: EnvParams):
        k_t, k_l, k_u, k_m, k_b = jax.random.split(key, 5)
        t = jax.random.randint(k_t, (), params.start_min, params.start_max + 1, jnp.int32)

        def uniform(k, r):
            return jax.random.uniform(k, (), jnp.float32, r[0], r[1])

        config = Config(
            leverage=uniform(k_l, params.leverage),
            utilisation=uniform(k_u, params.utilisation),
            max_positions=jax.random.randint(k_m, (), params.max_positions[0],
                                             params.max_positions[1] + 1, jnp.int32),
            buffer=uniform(k_b, params.buffer))
        one = jnp.ones((), jnp.float32)
        state = EnvState(t=t, step=jnp.zeros((), jnp.int32), cash=one, equity=one,
                         slots=_empty_slots(), config=config,
                         liquidations=jnp.zeros((), jnp.int32))
        return self.get_obs(state, params), state

    def _marks(self, slots: Slots, data: FundingData, t):
        """Each slot's long and short mark price at hour t."""
        return (data.price[t, slots.symbol, slots.long_ex],
                data.price[t, slots.symbol, slots.short_ex])

    def _leg_values(self, slots: Slots, mark_long, mark_short):
        """Margin balance + unrealised PnL of each alive leg (0 for a dead one)."""
        long = slots.margin_long + slots.size * (mark_long - slots.entry_long)
        short = slots.margin_short + slots.size * (slots.entry_short - mark_short)
        return (jnp.where(slots.open & slots.alive_long, long, 0.0),
                jnp.where(slots.open & slots.alive_short, short, 0.0))

    def _equity(self, cash, slots: Slots, data: FundingData, t):
        long, short = self._leg_values(slots, *self._marks(slots, data, t))
        return cash + jnp.sum(long) + jnp.sum(short)

    def _open_cost(self, state: EnvState, params: EnvParams, size_fraction):
        """Margin of each leg of a new position and its fees, at hour t."""
        c = state.config
        budget = c.utilisation * state.equity / c.max_positions.astype(jnp.float32)
        margin = 0.5 * size_fraction * budget
        notional = margin * c.leverage
        fee = 2.0 * notional * params.taker_fee
        return margin, notional, fee

    @staticmethod
    def margin_used(slots: Slots) -> jax.Array:
        """Margin balance of the open legs, summed."""
        return jnp.sum(jnp.where(slots.open, slots.margin_long * slots.alive_long
                                 + slots.margin_short * slots.alive_short, 0.0))

    @staticmethod
    def held(slots: Slots, pairs: jax.Array) -> jax.Array:
        """bool [K]: which of `pairs` (int32 [K, 3]: symbol, long, short exchange) an open
        slot holds."""
        return jnp.any(slots.open[None, :] & (slots.symbol[None, :] == pairs[:, None, 0])
                       & (slots.long_ex[None, :] == pairs[:, None, 1])
                       & (slots.short_ex[None, :] == pairs[:, None, 2]), axis=1)

    @staticmethod
    def pair_apr(data: FundingData, t, symbol, long_ex, short_ex) -> jax.Array:
        """fund_apr of pairs at hour t (percent a year; arrays of any matching shape)."""
        return fund_apr(data.rate[t, symbol, long_ex], data.rate[t, symbol, short_ex],
                        data.interval[long_ex], data.interval[short_ex])

    def action_mask(self, state: EnvState, params: EnvParams) -> jax.Array:
        data, s = params.data, state.slots
        top, present = data.top[state.t], data.top_present[state.t]  # [K, 3], [K]
        n_open = jnp.sum(s.open)
        used = self.margin_used(s)
        held = self.held(s, top)  # [K]
        margin, _, fee = self._open_cost(state, params, jnp.asarray(SIZES, jnp.float32))
        fits = ((used + 2.0 * margin <= state.config.utilisation * state.equity * (1 + 1e-6))
                & (2.0 * margin + fee <= state.cash))  # [len(SIZES)]
        can_open = (present & ~held)[:, None] & fits[None, :] & (
            n_open < state.config.max_positions)
        return jnp.concatenate([jnp.ones(1, bool), can_open.reshape(-1), s.open])

    def step_env(self, key: jax.Array, state: EnvState, action, params: EnvParams):
        data, t = params.data, state.t
        slots, cash = state.slots, state.cash
        fee_rate, slip = params.taker_fee, params.slippage
        # 1. The action at hour t's prices. Open: the first free slot.
        is_open = (action >= 1) & (action <= N_OPEN)
        k = jnp.clip((action - 1) // len(SIZES), 0, TOP_K - 1)
        j = jnp.clip((action - 1) % len(SIZES), 0, len(SIZES) - 1)
        sym, lx, sx = data.top[t, k, 0], data.top[t, k, 1], data.top[t, k, 2]
        margin, notional, _ = self._open_cost(state, params,
                                              jnp.asarray(SIZES, jnp.float32)[j])
        p_long, p_short = data.price[t, sym, lx], data.price[t, sym, sx]
        fill_long, fill_short = p_long * (1 + slip), p_short * (1 - slip)
        size = notional / fill_long
        open_fee = fee_rate * size * (fill_long + fill_short)
        open_slip = size * (fill_long - p_long) + size * (p_short - fill_short)
        slot = jnp.argmin(slots.open)  # the first free one (the mask ensures there is one)
        new = jnp.arange(N_SLOTS) == slot
        at = is_open & new

        def put(old, value):
            return jnp.where(at, value, old)

        slots = slots.replace(
            open=slots.open | at, symbol=put(slots.symbol, sym), long_ex=put(slots.long_ex, lx),
            short_ex=put(slots.short_ex, sx), size=put(slots.size, size),
            entry_long=put(slots.entry_long, fill_long),
            entry_short=put(slots.entry_short, fill_short),
            margin_long=put(slots.margin_long, margin),
            margin_short=put(slots.margin_short, margin),
            alive_long=slots.alive_long | at, alive_short=slots.alive_short | at,
            leverage=put(slots.leverage, state.config.leverage),
            funding=put(slots.funding, 0.0), opened=put(slots.opened, state.step))
        cash = cash - jnp.where(is_open, 2.0 * margin + open_fee, 0.0)
        # Close: slot p, every alive leg at t's prices with slippage and fees.
        close = jnp.where(action > N_OPEN, action - 1 - N_OPEN, -1)
        closing = jnp.arange(N_SLOTS) == close
        cash, slots, close_fee, close_slip = self._close(slots, closing, cash, data, t,
                                                         fee_rate, slip)
        # 2. Hour t -> t + 1: prices, funding, liquidations, the buffer's stops.
        t1 = t + 1
        m_long, m_short = self._marks(slots, data, t1)
        before_long, before_short = self._marks(slots, data, t)
        price_pnl = jnp.sum(slots.size * (
            jnp.where(slots.open & slots.alive_long, m_long - before_long, 0.0)
            + jnp.where(slots.open & slots.alive_short, before_short - m_short, 0.0)))
        settle_long = data.settles[t1, slots.long_ex] & slots.open & slots.alive_long
        settle_short = data.settles[t1, slots.short_ex] & slots.open & slots.alive_short
        pay_long = jnp.where(settle_long, slots.size * m_long
                             * data.rate[t, slots.symbol, slots.long_ex], 0.0)
        get_short = jnp.where(settle_short, slots.size * m_short
                              * data.rate[t, slots.symbol, slots.short_ex], 0.0)
        slots = slots.replace(margin_long=slots.margin_long - pay_long,
                              margin_short=slots.margin_short + get_short,
                              funding=slots.funding - pay_long + get_short)
        funding = jnp.sum(get_short - pay_long)
        liq_long, liq_short = liquidation_prices(slots.entry_long, slots.entry_short,
                                                 slots.size, slots.margin_long,
                                                 slots.margin_short, params.mmr)
        dead_long = slots.open & slots.alive_long & (m_long <= liq_long)
        dead_short = slots.open & slots.alive_short & (m_short >= liq_short)
        v_long, v_short = self._leg_values(slots, m_long, m_short)
        liq_loss = jnp.sum(jnp.where(dead_long, v_long, 0.0) + jnp.where(dead_short, v_short,
                                                                           0.0))
        n_liq = jnp.sum(dead_long) + jnp.sum(dead_short)
        slots = slots.replace(alive_long=slots.alive_long & ~dead_long,
                              alive_short=slots.alive_short & ~dead_short)
        slots = slots.replace(open=slots.open & (slots.alive_long | slots.alive_short))
        # The user's stop: a leg within `buffer` x entry of its liquidation price.
        b = state.config.buffer
        near = slots.open & (
            (slots.alive_long & (m_long <= liq_long + b * slots.entry_long))
            | (slots.alive_short & (m_short >= liq_short - b * slots.entry_short)))
        cash, slots, stop_fee, stop_slip = self._close(slots, near, cash, data, t1, fee_rate,
                                                       slip)
        # An episode is a trading day that ends flat: its last step closes what is open.
        step = state.step + 1
        day_end = step >= params.episode_length
        cash, slots, end_fee, end_slip = self._close(slots, slots.open & day_end, cash, data,
                                                     t1, fee_rate, slip)
        stop_fee, stop_slip = stop_fee + end_fee, stop_slip + end_slip
        equity = self._equity(cash, slots, data, t1)
        new_state = state.replace(t=t1, step=step, cash=cash, equity=equity, slots=slots,
                                  liquidations=state.liquidations + n_liq)
        fees = open_fee * is_open + close_fee + stop_fee
        slippage = open_slip * is_open + close_slip + stop_slip
        # The equity change, summed from its parts: in float32 a difference of two equities
        # near 1 would keep only about three digits of a few basis points.
        change = funding + price_pnl - fees - slippage - liq_loss
        reward = (REWARD_SCALE * change
                  - params.liquidation_penalty * n_liq.astype(jnp.float32))
        # The day's end is the task's end (flat, nothing to bootstrap), as is ruin; the end
        # of the range cuts an episode short (truncated: its value is bootstrapped).
        terminated = (equity < params.ruin_fraction) | day_end
        truncated = (t1 >= params.end) & ~terminated
        # What closing every open leg at t+1 would cost: a walk that ends here is worth
        # equity - exit_cost in cash.
        _, _, exit_fee, exit_slip = self._close(slots, slots.open, 0.0, data, t1, fee_rate, slip)
        info = {
            "terminated": terminated,
            "truncated": truncated,
            "equity": equity,
            "funding": funding,
            "price_pnl": price_pnl,
            "fees": fees,
            "slippage": slippage,
            "liquidation_loss": liq_loss,
            "liquidations": n_liq,
            "stops": jnp.sum(near),
            "positions": jnp.sum(slots.open),
            "margin_used": self.margin_used(slots),
            "exit_cost": exit_fee + exit_slip,
            "opened": is_open,
        }
        return (self.get_obs(new_state, params), new_state, reward.astype(jnp.float32),
                terminated | truncated, info)

    def _close(self, slots: Slots, which, cash, data: FundingData, t, fee_rate, slip):
        """Close every alive leg of the slots `which` at hour t's prices: cash gets each
        leg's margin balance + realised PnL - fee; the slots are emptied. Returns (cash,
        slots, fees, slippage cost)."""
        m_long, m_short = self._marks(slots, data, t)
        x_long, x_short = m_long * (1 - slip), m_short * (1 + slip)  # sell long, buy short
        sl = which & slots.open & slots.alive_long
        ss = which & slots.open & slots.alive_short
        back = (jnp.where(sl, slots.margin_long + slots.size * (x_long - slots.entry_long), 0.0)
                + jnp.where(ss, slots.margin_short + slots.size * (slots.entry_short - x_short),
                            0.0))
        fee = fee_rate * slots.size * (jnp.where(sl, x_long, 0.0) + jnp.where(ss, x_short, 0.0))
        slip_cost = slots.size * (jnp.where(sl, m_long - x_long, 0.0)
                                  + jnp.where(ss, x_short - m_short, 0.0))
        shut = which & slots.open
        slots = slots.replace(open=slots.open & ~shut, alive_long=slots.alive_long & ~shut,
                              alive_short=slots.alive_short & ~shut)
        return cash + jnp.sum(back - fee), slots, jnp.sum(fee), jnp.sum(slip_cost)

    # ------------------------------------------------------------------ observation
    def get_obs(self, state: EnvState, params: EnvParams) -> jax.Array:
        data, t, s, c = params.data, state.t, state.slots, state.config
        eq = jnp.maximum(state.equity, 1e-6)
        top, present = data.top[t], data.top_present[t]
        sym, lx, sx = top[:, 0], top[:, 1], top[:, 2]
        r_long, r_short = data.rate[t, sym, lx], data.rate[t, sym, sx]
        i_long, i_short = data.interval[lx], data.interval[sx]
        ann_long = r_long * HOURS_PER_YEAR / i_long
        ann_short = r_short * HOURS_PER_YEAR / i_short
        apr = self.pair_apr(data, t, sym, lx, sx)
        basis = data.price[t, sym, sx] / data.price[t, sym, lx] - 1.0
        volume = jnp.minimum(data.log_volume[t, sym, lx], data.log_volume[t, sym, sx])
        held = self.held(s, top)
        opp = jnp.stack([present, apr / 100.0, ann_short, ann_long, 100.0 * basis,
                         volume - 7.0, data.to_settle[t, lx], data.to_settle[t, sx], held],
                        axis=-1).astype(jnp.float32)
        opp = jnp.where(present[:, None], opp, 0.0)
        m_long, m_short = self._marks(s, data, t)
        v_long, v_short = self._leg_values(s, m_long, m_short)
        maint_long = s.size * s.entry_long * params.mmr
        maint_short = s.size * s.entry_short * params.mmr
        ratio_long = jnp.where(s.alive_long, maint_long / jnp.maximum(v_long, 1e-9), 0.0)
        ratio_short = jnp.where(s.alive_short, maint_short / jnp.maximum(v_short, 1e-9), 0.0)
        upnl = (jnp.where(s.alive_long, s.size * (m_long - s.entry_long), 0.0)
                + jnp.where(s.alive_short, s.size * (s.entry_short - m_short), 0.0))
        pair_apr = self.pair_apr(data, t, s.symbol, s.long_ex, s.short_ex)
        slot = jnp.stack([
            s.open, s.alive_long, s.alive_short, s.size * m_long / eq, s.leverage / 10.0,
            100.0 * (s.entry_short / jnp.where(s.open, s.entry_long, 1.0) - 1.0),
            100.0 * (m_short / m_long - 1.0), jnp.minimum(ratio_long, 2.0),
            jnp.minimum(ratio_short, 2.0), 100.0 * upnl / eq, 100.0 * s.funding / eq,
            (state.step - s.opened) / 24.0, pair_apr / 100.0,
        ], axis=-1).astype(jnp.float32)
        slot = jnp.where(s.open[:, None], slot, 0.0)
        account = jnp.stack([state.cash / eq, state.equity - 1.0, self.margin_used(s) / eq,
                             state.step / params.episode_length,
                             state.liquidations / 5.0]).astype(jnp.float32)
        config = jnp.stack([c.leverage / 10.0, c.utilisation,
                            c.max_positions / 5.0, 20.0 * c.buffer]).astype(jnp.float32)
        return jnp.concatenate([opp.reshape(-1), slot.reshape(-1), account, config])

    metric_info_keys = ("funding", "fees", "liquidations", "positions")

    def step_metrics(self, info) -> dict[str, jax.Array]:
        return {"funding_mean": info["funding"].mean(), "fees_mean": info["fees"].mean(),
                "liquidations_mean": info["liquidations"].mean(),
                "positions_mean": info["positions"].mean()}


register("funding", FundingEnv)

"""The multi-asset factor-regime portfolio environment (pure functions, gymnax-style API).

Timeline of one step (state.t = t, the bar whose close the trade executes at):

1. The agent has seen bar t-1 and earlier only: features of t-1, its weights and
   value after the previous trade (marked at the close of t-1), its drawdown.
2. Over bar t the held weights drift with prices p[t] / p[t-1]: value V_t, weights w_t.
3. The chosen regime's target weights (from the factor scores of bar t-1; HOLD
   keeps w_t) are reached by trading at p[t], paying slippage, spread and impact
   (`jaxtrade.envs.frictions`).
4. The new portfolio is held over bar t+1 and marked at p[t+1]: value V_{t+1}.
   reward = log(V_{t+1} / V_t) - penalties, so an action's reward contains its
   own costs and the return its portfolio earns, and the rewards of an episode
   sum to its log growth.
5. The next observation is of bar t: the trade is never priced with data the agent
   saw after deciding (`tests/envs/test_portfolio.py::test_no_look_ahead`).

Observation, float32 [A * F + A + 3]:
  [0, A*F)          features of bar t-1, asset-major (asset 0's F features first)
  [A*F, A*F+A+1)    weights held after the last trade: A assets, then cash
  A*F+A+1           drawdown of the post-trade value from its episode peak, in [0, 1)
  A*F+A+2           episode progress, step / episode_length, in [0, 1)
Action: int32 [] in [0, 12), a `jaxtrade.envs.regimes.Regime`.
Reward: float32 [], log growth of the marked portfolio value net of costs, minus
  `turnover_penalty * turnover` and `drawdown_penalty * drawdown` (both 0 by default),
  and with `reward_benchmark = "equal_weight"` minus the log growth over the same bar of
  the equal-weight index of the assets that exist (no action changes it, so the best
  policy is the same; `info["log_return"]` and every reported figure stay plain).
Termination: `terminated` (ruin) when the marked value falls below
  `ruin_fraction` of the initial value; `truncated` after `episode_length` steps
  or at the end of the date range. `done = terminated | truncated`; `step`
  auto-resets and returns the next episode's first observation, with the
  pre-reset one in `info["final_obs"]` (to bootstrap a truncated episode).
Episodes start all cash with value 1, at a uniformly random bar of the range
  [start_min, start_max] in `EnvParams`.

A pool of procedural worlds (`jaxtrade.worlds.pool_market`: worlds laid end to end,
`Market.world_bars` bars each, assets padded to a common A with `MarketData.asset_mask`)
changes three things: an episode starts in a uniformly random world, at an offset in
[start_min, start_max] of it, and never leaves it; padded assets get no weight (the
regimes rank and count only the assets that exist); and each asset's F features are
followed by a 1 if it exists (0 if padding), so the observation is A * (F + 2) + 3 wide.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxtrade.config import PortfolioConfig, broken_rule
from jaxtrade.data.market import RANGES, Market, MarketData
from jaxtrade.data.panel import format_date
from jaxtrade.envs import regimes
from jaxtrade.envs.base import Environment, register
from jaxtrade.envs.frictions import trade_costs
from jaxtrade.envs.spaces import Box, Discrete


@struct.dataclass
class EnvState:
    """What changes every step, for one environment."""

    t: jax.Array  # int32 [], bar the next trade executes at
    step: jax.Array  # int32 [], steps taken in this episode
    value: jax.Array  # float32 [], value after the last trade, marked at the close of t-1
    peak: jax.Array  # float32 [], highest post-trade value this episode
    weights: jax.Array  # float32 [A + 1], weights after the last trade (cash last)
    # int32 [A], the episode's order of the assets (`augment = "permute"`): the env's asset
    # i is the market's asset perm[i], for its features, scores, prices and weights; None
    # (no leaf): the market's order.
    perm: jax.Array | None = None


@struct.dataclass
class EnvParams:
    """What stays fixed for an environment; vmappable (e.g. per-env frictions)."""

    market: MarketData  # shared market arrays (pass with in_axes=None when vmapping)
    start_min: jax.Array  # int32 [], earliest first bar of an episode (>= 1)
    start_max: jax.Array  # int32 [], latest first bar of an episode
    end: jax.Array  # int32 [], last bar whose price may be used (end of the range)
    episode_length: jax.Array  # int32 [], steps before truncation
    slippage: jax.Array  # float32 [], max slippage as a fraction of traded value
    spread: jax.Array  # float32 [], bid-ask spread cost as a fraction of traded value
    impact: jax.Array  # float32 [], square-root impact coefficient
    turnover_penalty: jax.Array  # float32 [], reward penalty per unit of turnover
    drawdown_penalty: jax.Array  # float32 [], reward penalty per unit of drawdown
    ruin_fraction: jax.Array  # float32 [], value (vs 1.0 at start) that ends an episode
    # float32 [], probability that a step's next bar is a random bar of the range instead
    # of the next one (a stationary block bootstrap of mean block 1 / restart_prob); 0: off.
    restart_prob: jax.Array
    # float32 [], 1: the reward subtracts the log growth of the equal-weight index of the
    # assets that exist over the held bar (`PortfolioConfig.reward_benchmark`); 0: plain.
    benchmark_weight: jax.Array
    # int32 [], worlds an episode may start in (a pool of worlds; 1 otherwise): world w's
    # starts are w * world_bars + [start_min, start_max]. An evaluation pass of a pool sets
    # 1 and absolute bars.
    n_worlds: jax.Array
    # bool [], present (not None) with `augment = "permute"`: every episode sees the assets
    # in a random order of its own (`EnvState.perm`). None (no leaf): the market's order.
    permute: jax.Array | None = None
    # int32 [], present (not None) with `decide_every` k > 1: the policy chooses a regime on
    # the steps whose `step % k == 0` and may only HOLD on the others (`action_mask`), as
    # the baselines REGIME/k do. None: every step decides (no mask is computed or stored).
    decide_every: jax.Array | None = None


def _bar(array: jax.Array, t: jax.Array, state: EnvState) -> jax.Array:
    """Row t of a per-asset market array ([T, A, ...]), assets in the episode's order."""
    row = array[t]
    return row if state.perm is None else row[state.perm]


_DEFAULTS = PortfolioConfig()  # friction defaults ([env.portfolio]; ranges: their rules)


class PortfolioEnv(Environment[EnvState, EnvParams]):
    """Multi-asset portfolio env over a `Market`; one instance serves any number of vmapped envs.

    The instance holds only static facts (shapes, the split); all arrays travel in
    `EnvParams`, so jitted functions take them as arguments instead of baking
    them into the program as constants.
    """

    name = "portfolio"
    trading = True  # evaluate's report: the policy and baseline strategies through a range
    default_episode_length = 256  # bars (`data.build_market`'s default too)

    def __init__(self, market: Market):
        self.n_assets = market.n_assets
        self.n_features = market.data.n_features
        self.n_bars = market.n_bars
        # A pool of worlds (`Market.world_bars`): episodes start in a random world, and the
        # observation says which assets exist. Static facts: a single market pays nothing.
        self.world_bars = market.world_bars
        self.n_worlds = market.n_worlds
        self.masked = market.data.asset_mask is not None
        self._ranges = {name: market.bounds(name) for name in RANGES}
        self._data = market.data
        self._dates = market.dates  # for the banner's validation dates
        self._bars_per_year = market.bars_per_year  # annualises the validation metrics
        # A worlds run validates on worlds of its own (`Market.validation_pool`).
        self._validation_pool = market.validation_pool

    # ----------------------------------------------------------------- spaces, params
    @property
    def num_actions(self) -> int:
        return regimes.N_REGIMES

    @property
    def obs_dim(self) -> int:
        return self.n_assets * (self.n_features + 1 + self.masked) + 3

    @property
    def obs_layout(self):
        """Per asset: its F features, then its weight; globals: cash weight, drawdown,
        episode progress (the set encoder's reading of the observation)."""
        from jaxtrade.networks import ObsLayout

        if self.masked:  # features and whether the asset exists; weight
            return ObsLayout(self.n_assets, (self.n_features + 1, 1), 3,
                             mask_token=self.n_features)
        return ObsLayout(self.n_assets, (self.n_features, 1), 3)

    def action_space(self, params: EnvParams | None = None) -> Discrete:
        return Discrete(regimes.N_REGIMES)

    def observation_space(self, params: EnvParams | None = None) -> Box:
        return Box(-jnp.inf, jnp.inf, (self.obs_dim,), jnp.float32)

    def make_params(
        self,
        split: str = "train",
        *,
        episode_length: int = default_episode_length,
        start: int | None = None,
        slippage: float = _DEFAULTS.slippage,
        spread: float = _DEFAULTS.spread,
        impact: float = _DEFAULTS.impact,
        turnover_penalty: float = _DEFAULTS.turnover_penalty,
        drawdown_penalty: float = _DEFAULTS.drawdown_penalty,
        ruin_fraction: float = _DEFAULTS.ruin_fraction,
        bootstrap_block: float = _DEFAULTS.bootstrap_block,
        reward_benchmark: str = _DEFAULTS.reward_benchmark,
        augment: str = _DEFAULTS.augment,
        decide_every: int = _DEFAULTS.decide_every,
    ) -> EnvParams:
        """Params for episodes inside the market's "train", "validation" or "test" range
        (`jaxtrade.data.market.Market`): no step reads a price after the range's last bar.

        Host-side. `start` fixes the first bar (e.g. the first validation bar for one
        continuous evaluation pass); by default episodes start at a random bar that
        leaves room for a whole episode. The other defaults are `PortfolioConfig`'s
        ([env.portfolio]), and each value must pass the rule of its config field (as
        `config.validate` checks).

        Raises:
          ValueError: unknown split, a range too short for the episode, or a
            coefficient outside its valid range.
        """
        if split not in self._ranges:
            raise ValueError(f"split must be one of {', '.join(self._ranges)}, got {split!r}")
        first, stop = self._ranges[split]
        if self.world_bars is not None:  # a pool: episodes fit in one world; starts are
            first, stop = 0, self.world_bars  # offsets into it (`reset_env` adds the world)
        lo, hi = max(first, 1), stop - 1  # bar 0 has no bar before it to decide on
        if (rule := broken_rule("episode_length", episode_length)) is not None:
            raise ValueError(f"episode_length must be {rule}, got {episode_length}")
        # An episode starting at t0 marks its last step at t0 + episode_length.
        latest = hi - episode_length
        if start is not None:
            if not lo <= start <= hi - 1:
                raise ValueError(f"start {start} is outside the {split} range [{lo}, {hi - 1}]")
            start_min = start_max = start
        elif latest < lo:
            raise ValueError(
                f"the {split} range has {hi - lo + 1} bars, too few for an episode of "
                f"{episode_length} steps (needs {episode_length + 1})"
            )
        else:
            start_min, start_max = lo, latest
        for name, v in (
            ("slippage", slippage),
            ("spread", spread),
            ("impact", impact),
            ("turnover_penalty", turnover_penalty),
            ("drawdown_penalty", drawdown_penalty),
            ("ruin_fraction", ruin_fraction),
            ("bootstrap_block", bootstrap_block),
            ("reward_benchmark", reward_benchmark),
            ("augment", augment),
            ("decide_every", decide_every),
        ):
            if (rule := broken_rule(name, v)) is not None:
                raise ValueError(f"{name} must be {rule}, got {v}")
        if bootstrap_block and self.world_bars is not None:
            raise ValueError("bootstrap_block must be 0 on a pool of worlds (its episodes stay "
                             "in one world; fresh worlds need no resampling)")
        if augment != "none" and self.world_bars is not None:
            raise ValueError(f"augment must be none on a pool of worlds (their assets are "
                             f"exchangeable draws already), got {augment}")
        i32, f32 = jnp.int32, jnp.float32
        return EnvParams(
            market=jax.device_put(self._data),  # host arrays onto the device (no compile)
            start_min=jnp.asarray(start_min, i32),
            start_max=jnp.asarray(start_max, i32),
            # A pool's episodes end inside their world (they fit in it); `end` is global.
            end=jnp.asarray(hi if self.world_bars is None else self.n_bars - 1, i32),
            episode_length=jnp.asarray(episode_length, i32),
            slippage=jnp.asarray(slippage, f32),
            spread=jnp.asarray(spread, f32),
            impact=jnp.asarray(impact, f32),
            turnover_penalty=jnp.asarray(turnover_penalty, f32),
            drawdown_penalty=jnp.asarray(drawdown_penalty, f32),
            ruin_fraction=jnp.asarray(ruin_fraction, f32),
            restart_prob=jnp.asarray(1.0 / bootstrap_block if bootstrap_block else 0.0, f32),
            benchmark_weight=jnp.asarray(reward_benchmark == "equal_weight", f32),
            permute=jnp.asarray(True) if augment == "permute" else None,
            decide_every=jnp.asarray(decide_every, i32) if decide_every > 1 else None,
            n_worlds=jnp.asarray(self.n_worlds, i32),
        )

    # ----------------------------------------------------------- protocol hooks
    @property
    def action_names(self) -> tuple[str, ...]:
        return regimes.NAMES

    def notes(self) -> list[str]:
        """The regimes that are one position for this asset count (e.g. six with one asset)."""
        n = self.n_assets
        return [f"with {n} asset{'s' if n > 1 else ''} these regimes are the same position: "
                f"{' = '.join(group)}" for group in regimes.coinciding(n)]

    def action_mask(self, state: EnvState, params: EnvParams) -> jax.Array | None:
        """With `decide_every` k > 1: every regime on a deciding step (`step % k == 0`),
        only HOLD between them; None (every action, no mask stored) otherwise."""
        if params.decide_every is None:  # static: the params' structure
            return None
        deciding = state.step % params.decide_every == 0
        return deciding | (jnp.arange(regimes.N_REGIMES) == regimes.Regime.HOLD)

    metric_info_keys = ("cost", "turnover")

    def step_metrics(self, info) -> dict[str, jax.Array]:
        """Mean trading cost and turnover per step of the rollout."""
        return {"cost_mean": info["cost"].mean(), "turnover_mean": info["turnover"].mean()}

    def stagger(self, key: jax.Array, states: EnvState, params: EnvParams) -> EnvState:
        """Each first episode starts part-way: `step` uniform in [0, episode_length)."""
        return states.replace(
            step=jax.random.randint(key, states.step.shape, 0, params.episode_length, jnp.int32)
        )

    # ---------------------------------------------------------------- evaluation hooks
    def _validation_bars(self) -> tuple[int, int]:
        """First and last bar of the validation walk (it marks its last step there)."""
        first, stop = self._ranges["validation"]
        return first, stop - 1

    def validation_unavailable(self) -> str | None:
        if self._validation_pool is not None:
            return None
        first, stop = self._ranges["validation"]
        return "this run has none" if stop == first else None

    def describe_evaluation(self, env_config) -> str:
        if (pool := self._validation_pool) is not None:
            return (f"greedy walks of {pool.n_worlds} validation worlds ({pool.world_bars - 2} "
                    f"steps each), medians over worlds")
        first, last = self._validation_bars()
        return (f"greedy walk of the validation bars {format_date(self._dates[first])} .. "
                f"{format_date(self._dates[last])} ({last - first} steps)")

    def make_evaluator(self, network, env_config, seed: int, params_like):
        """The greedy walk of the validation bars (`jaxtrade.evaluation.make_evaluator`): every
        trading metric of `metrics.compute_all`, reward_mean, and the composite model score
        (`metrics.model_score`: trading terms from the walk, RL health from `health`)."""
        from jaxtrade.evaluation import make_evaluator, make_world_evaluator

        if self._validation_pool is not None:
            return make_world_evaluator(network, PortfolioEnv(self._validation_pool),
                                        env_config, self._bars_per_year, seed, params_like)
        return make_evaluator(network, self, env_config, *self._validation_bars(),
                              self._bars_per_year, seed, params_like)

    def make_members_evaluator(self, network, env_config, seed: int, params_like,
                               members: int):
        """`make_evaluator`'s walks of `members` policies at once (vmapped; metrics [N])."""
        from jaxtrade.evaluation import make_evaluator, make_world_evaluator

        if self._validation_pool is not None:
            return make_world_evaluator(network, PortfolioEnv(self._validation_pool),
                                        env_config, self._bars_per_year, seed, params_like,
                                        members=members)
        return make_evaluator(network, self, env_config, *self._validation_bars(),
                              self._bars_per_year, seed, params_like, members=members)

    def evaluation_line(self, metrics) -> str:
        if "worlds_won" in metrics:
            return (f"validation worlds: median return {100 * metrics['total_return']:+.2f}% | "
                    f"median Sharpe {metrics['sharpe']:+.2f} (IQR {metrics['sharpe_iqr']:.2f}) "
                    f"| beat {metrics['baseline']} in {100 * metrics['worlds_won']:.0f}%")
        return (f"validation return {100 * metrics['total_return']:+.2f}% | Sharpe "
                f"{metrics['sharpe']:+.2f} | max DD {100 * metrics['max_drawdown']:.2f}%")

    # ------------------------------------------------------------------- dynamics
    def reset_env(self, key: jax.Array, params: EnvParams):
        """A new all-cash episode of value 1 at a random start bar."""
        if self.world_bars is not None:  # a random world, then a start inside it
            key, key_world = jax.random.split(key)
            world = jax.random.randint(key_world, (), 0, params.n_worlds, jnp.int32)
        t0 = jax.random.randint(key, (), params.start_min, params.start_max + 1, jnp.int32)
        if self.world_bars is not None:
            t0 = t0 + world * self.world_bars
        perm = None
        if params.permute is not None:  # static: the params' structure says so
            perm = jax.random.permutation(jax.random.fold_in(key, 3), self.n_assets)
            perm = jnp.where(params.permute, perm, jnp.arange(self.n_assets)).astype(jnp.int32)
        weights = jnp.zeros(self.n_assets + 1, jnp.float32).at[-1].set(1.0)
        one = jnp.ones((), jnp.float32)
        state = EnvState(t=t0, step=jnp.zeros((), jnp.int32), value=one, peak=one,
                         weights=weights, perm=perm)
        return self.get_obs(state, params), state

    def get_obs(self, state: EnvState, params: EnvParams) -> jax.Array:
        """Observation of bar t-1 (see the module docstring for the layout)."""
        features = _bar(params.market.features, state.t - 1, state)
        if self.masked:  # each asset's token ends with whether it exists
            exists = _bar(params.market.asset_mask, state.t - 1, state)
            exists = exists.astype(jnp.float32)[:, None]
            features = jnp.concatenate([features, exists], axis=-1)
        drawdown = 1.0 - state.value / state.peak
        progress = state.step / params.episode_length
        extra = jnp.stack([drawdown, progress]).astype(jnp.float32)
        return jnp.concatenate([features.reshape(-1), state.weights, extra])

    def step_env(self, key: jax.Array, state: EnvState, action, params: EnvParams):
        """One step without reset; slippage draws are `jax.random.uniform(key, (A,))`."""
        m = params.market
        t = state.t
        n = self.n_assets
        # 2. drift over bar t.
        growth = _bar(m.price, t, state) / _bar(m.price, t - 1, state)
        held = jnp.concatenate([state.weights[:n] * growth, state.weights[n:]])
        value_pre = state.value * jnp.sum(held)
        w_pre = held / jnp.sum(held)
        # 3. trade to the regime's target at p[t].
        mask = None if m.asset_mask is None else _bar(m.asset_mask, t - 1, state)
        target = regimes.target_weights(action, _bar(m.scores, t - 1, state), w_pre, mask)
        # HOLD trades nothing by definition; don't leave it to floating-point luck
        # (XLA may compute w_pre twice with different rounding).
        delta = jnp.where(action == regimes.Regime.HOLD, 0.0, target[:n] - w_pre[:n])
        traded = jnp.abs(delta) * value_pre
        costs = trade_costs(
            traded,
            value_pre,
            jax.random.uniform(key, (n,), jnp.float32),
            params.slippage,
            params.spread,
            params.impact,
        )
        value_post = value_pre - costs.total
        # 4. hold over the next bar: bar t+1, or with a bootstrap a bar J of the range drawn
        # with probability restart_prob (the held return is then J-1 -> J's, and the next
        # decision reads bar J-1's features; J + 1 <= end, so a path never leaves the range).
        restart = jax.random.uniform(jax.random.fold_in(key, 1)) < params.restart_prob
        jump = jax.random.randint(jax.random.fold_in(key, 2), (), params.start_min + 1,
                                  params.end, jnp.int32)
        t_next = jnp.where(restart, jump, t + 1)
        growth_next = _bar(m.price, t_next, state) / _bar(m.price, t_next - 1, state)
        value_next = value_post * (jnp.dot(target[:n], growth_next) + target[n])
        peak = jnp.maximum(state.peak, value_post)
        turnover = jnp.sum(traded) / value_pre
        drawdown_next = 1.0 - value_next / jnp.maximum(peak, value_next)
        log_return = jnp.log(value_next) - jnp.log(value_pre)
        # The equal-weight index's log growth over the held bar (assets that exist): no
        # action changes it, so subtracting it leaves the best policy as it was and takes
        # the market's common move out of the reward's noise.
        exists = (jnp.ones((n,), jnp.float32) if m.asset_mask is None
                  else _bar(m.asset_mask, t_next - 1, state).astype(jnp.float32))
        index_growth = jnp.dot(exists, growth_next) / jnp.maximum(jnp.sum(exists), 1.0)
        reward = (
            log_return
            - params.benchmark_weight * jnp.log(index_growth)
            - params.turnover_penalty * turnover
            - params.drawdown_penalty * drawdown_next
        )
        next_state = EnvState(t=t_next, step=state.step + 1, value=value_post, peak=peak,
                              weights=target, perm=state.perm)
        terminated = value_next < params.ruin_fraction
        # The next step would mark at p[t_next + 1].
        truncated = jnp.logical_or(
            next_state.step >= params.episode_length, t_next + 1 > params.end
        ) & ~terminated
        done = terminated | truncated
        info = {
            "value": value_next,
            "weights": target,
            "turnover": turnover,
            "cost": costs.total,
            "cost_slippage": costs.slippage,
            "cost_spread": costs.spread,
            "cost_impact": costs.impact,
            "log_return": log_return,
            "terminated": terminated,
            "truncated": truncated,
        }
        obs = self.get_obs(next_state, params)
        return obs, next_state, reward.astype(jnp.float32), done, info


register(PortfolioEnv.name, PortfolioEnv)

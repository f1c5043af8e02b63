"""Evaluation walks: the policy and the baseline strategies in one continuous pass of a range.

A continuous pass over market bars [first, last] starts all cash with value 1 and
takes T = last - first steps: step k trades at the close of bar first + k (deciding
on bar first + k - 1, as in training) and is marked at bar first + k + 1, so the
equity curve has T + 1 marks, one per bar of the range, the first being the start
value. There are no episode cuts:

* the episode length is `CONTINUOUS`, so steps never truncate and the policy's
  episode-progress input stays ~0 throughout (a pass has no end the policy could
  anticipate; any other choice would make a decision depend on how many bars the
  pass holds, and deployment decisions differ from evaluated ones);
* ruin is off (`ruin_fraction` 0): a pass that loses half its value goes on;
* frictions and reward penalties are the run's (`config.env`), slippage draws included.

Randomness: a pass with key `key` draws step k's randomness from
``jax.random.split(key, T)[k]`` (inside the rollout for the policy, directly for
the baselines). With JAX's partitionable threefry (the default) the first keys of a
split do not depend on its length, so two passes from the same bar with the same
key take identical steps where they overlap: what `jaxtrade.policy` relies on.

Baselines (`BASELINES`), each a fixed action sequence through the same environment:
cash (FULL_CASH every bar, flat at 1), buy_and_hold (EQUAL_WEIGHT on the first bar
then HOLD), and every fixed regime but HOLD and FULL_CASH (DEFENSIVE to RISK_ON)
rebalanced every k
bars for k in `REBALANCE_EVERY` (1, 5, 20), HOLD in between, named `REGIME/k`
(`EQUAL_WEIGHT/1` is equal weight rebalanced every bar). Any of them a user could run
without RL; `choose_baseline` picks the one to beat on the validation range.

The walks above are the portfolio env's (`PortfolioEnv.make_evaluator` and evaluate's trading
report use them). Any other env is evaluated on episodes (`make_episode_walk`): the greedy
policy's first episode in each of `EPISODE_ENVS` envs reset from one key, which
`Environment.make_evaluator` uses by default and evaluate's episode report compares with a
uniformly random policy on the same keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxtrade import metrics as M
from jaxtrade.config import EnvConfig
from jaxtrade.envs import N_REGIMES, Environment, EnvParams, PortfolioEnv, Regime
from jaxtrade.networks import Network
from jaxtrade.rollout import Carry, Transition, initial_carry, make_rollout

CONTINUOUS = 2**30  # episode length of a continuous pass: never reached, progress input ~0
POLICY = "policy"  # the strategy name of the trained policy
_FIXED = tuple(r for r in Regime if r not in (Regime.HOLD, Regime.FULL_CASH))
REBALANCE_EVERY = (1, 5, 20)  # bars between a fixed regime's trades (HOLD in between)
BASELINES = ("cash", "buy_and_hold",
             *(f"{r.name}/{k}" for r in _FIXED for k in REBALANCE_EVERY))
STRATEGIES = (POLICY, *BASELINES)
# What the model score takes from training (the rest comes from the validation walk).
HEALTH_KEYS = ("explained_variance", "entropy", "approx_kl", "clip_frac")


class EvaluationError(ValueError):
    """A run, range or data set that cannot be evaluated; the message is one line."""


@struct.dataclass
class Walk:
    """S strategies walked through the same T steps (leaves [S, ...])."""

    values: jax.Array  # float32 [S, T + 1], marked value; values[:, 0] is the start value 1
    weights: jax.Array  # float32 [S, T, A + 1], weights after each step's trade, cash last
    actions: jax.Array  # int32 [S, T], regime of each step
    costs: jax.Array  # float32 [S, T], trading costs paid at each step (currency)
    turnover: jax.Array  # float32 [S, T], traded value / portfolio value
    reward: jax.Array  # float32 [S, T], the env's reward


# What every evaluation pass sets whatever the run trained with: no episode cuts and no ruin
# stop; the bars in order (no bootstrap), the data's asset order, plain log-growth rewards.
PASS_OVERRIDES = {"episode_length": CONTINUOUS, "ruin_fraction": 0.0, "bootstrap_block": 0.0,
                  "augment": "none", "reward_benchmark": "none"}


def pass_params(env: PortfolioEnv, env_config: EnvConfig, first: int, last: int) -> EnvParams:
    """Env params of a continuous pass trading at bars first .. last - 1 (host-side).

    Raises:
      EvaluationError: first < 1 (the first decision needs the bar before it) or
        last not in (first, n_bars).
    """
    if not 1 <= first < last < env.n_bars:
        raise EvaluationError(
            f"a pass needs 1 <= first < last < {env.n_bars} bars, got first={first}, last={last}"
        )
    kwargs = {**env_config.params_kwargs(), **PASS_OVERRIDES}
    # make_params checks the frictions; the range of a pass is not a split's, so set it here.
    params = env.make_params("train", start=1, **kwargs)
    i32 = lambda x: jnp.asarray(x, jnp.int32)
    # n_worlds 1: a pool's pass starts at `first` itself, not in a random world.
    return params.replace(start_min=i32(first), start_max=i32(first), end=i32(last),
                          n_worlds=i32(1))


def pass_settings(env_config: EnvConfig) -> dict:
    """The run's env settings that a pass uses as they are (frictions, penalties,
    decide_every): what a report records; `PASS_OVERRIDES` replace the others."""
    return {k: v for k, v in env_config.params_kwargs().items() if k not in PASS_OVERRIDES}


def world_pass_params(env: PortfolioEnv, env_config: EnvConfig) -> EnvParams:
    """Env params of one continuous pass per world of a pool (`Market.world_bars`): world
    j trades at bars j * world_bars + 1 .. (j + 1) * world_bars - 2 and marks its last
    step at the world's last bar, so every world's pass has `world_bars - 2` steps.
    Leaves [n_worlds] where they differ (start_min, start_max, end), shared otherwise
    (vmap with `world_axes`). Host-side."""
    if env.world_bars is None:
        raise EvaluationError("world passes need a pool of worlds (Market.world_bars)")
    one = pass_params(env, env_config, 1, env.world_bars - 1)
    starts = jnp.arange(env.n_worlds, dtype=jnp.int32) * env.world_bars
    return one.replace(start_min=starts + 1, start_max=starts + 1,
                       end=starts + env.world_bars - 1)


def world_axes(params: EnvParams) -> EnvParams:
    """`vmap` in_axes of `world_pass_params`' output: 0 where a world has its own value."""
    axes = jax.tree.map(lambda _: None, params)
    return axes.replace(start_min=0, start_max=0, end=0)


def make_world_walks(network: Network, env: PortfolioEnv, *, greedy: bool = True) -> Callable:
    """`walk(params, world_params, key, bars_per_year) -> (values, metrics)`: every strategy
    of `STRATEGIES` (the policy, then the baselines) through one continuous pass of each
    world of a pool, in one program: values float32 [W, S, T + 1] and `walk_metrics`
    leaves [W, S, ...], for statistics per world and over worlds. Every world's pass uses
    the same key (the same slippage draws), as a range's pass does."""
    n_steps = env.world_bars - 2
    strategies = make_strategy_walk(network, env, n_steps, greedy=greedy)

    def walk(params, world_params: EnvParams, key: jax.Array, bars_per_year):
        def one(env_params):
            both, metrics = strategies(params, env_params, key, bars_per_year)
            return both.values, metrics

        return jax.vmap(one, in_axes=(world_axes(world_params),))(world_params)

    return walk


def walk_key(seed: int) -> jax.Array:
    """The key of an evaluation pass for `seed` (training evaluations use the run's seed)."""
    return jax.random.key(seed)


def _opaque(actions: np.ndarray) -> jax.Array:
    """The baselines' actions as a value XLA does not constant-fold: folded, their trade
    segments (a cumulative sum over [baselines, steps]) took a second or more of every
    evaluation program's compile."""
    return jax.lax.optimization_barrier(jnp.asarray(actions))


def baseline_actions(n_steps: int) -> np.ndarray:
    """int32 [len(BASELINES), n_steps], the action sequence of each baseline."""
    steps = np.arange(n_steps)
    rows = {
        "cash": [Regime.FULL_CASH] * n_steps,
        "buy_and_hold": [Regime.EQUAL_WEIGHT] + [Regime.HOLD] * (n_steps - 1),
        **{f"{r.name}/{k}": np.where(steps % k == 0, r, Regime.HOLD)
           for r in _FIXED for k in REBALANCE_EVERY},
    }
    return np.asarray([rows[name] for name in BASELINES], np.int32)


def make_policy_walk(network: Network, env: PortfolioEnv, n_steps: int, *,
                     greedy: bool = True) -> Callable:
    """`walk(params, env_params, key) -> (Carry, Transition [n_steps, 1, ...])`: one env from
    `env_params`' first bar; the greedy (or, with greedy=False, sampled) policy. The
    Transition keeps the env's whole info (value, weights, costs, turnover, ...)."""
    rollout = make_rollout(network, env, n_steps, greedy=greedy)

    def walk(params, env_params: EnvParams, key: jax.Array) -> tuple[Carry, Transition]:
        key_init, key_run = jax.random.split(key)
        carry = initial_carry(network, env, env_params, key_init, 1)
        return rollout(params, env_params, carry, key_run)

    return walk


def policy_walk(traj: Transition) -> Walk:
    """A rollout of one env ([T, 1, ...]) as a Walk of one strategy ([1, ...])."""
    info = traj.info
    values = jnp.concatenate([jnp.ones(1, jnp.float32), info["value"][:, 0]])
    return Walk(
        values=values[None],
        weights=info["weights"][:, 0][None],
        actions=traj.action[:, 0][None],
        costs=info["cost"][:, 0][None],
        turnover=info["turnover"][:, 0][None],
        reward=traj.reward[:, 0][None],
    )


def make_baseline_walk(env: PortfolioEnv) -> Callable:
    """`walk(actions [S, T], env_params, key) -> Walk`: fixed action sequences, step k with
    key ``split(key, T)[k]`` for every strategy."""

    def one(actions: jax.Array, env_params: EnvParams, key: jax.Array):
        _, state = env.reset(key, env_params)  # the start is fixed: the key is unused

        def body(state, xs):
            action, k = xs
            _, state, reward, _, info = env.step(k, state, action, env_params)
            return state, (info["value"], info["weights"], info["cost"], info["turnover"], reward)

        keys = jax.random.split(key, actions.shape[0])
        _, (value, weights, cost, turnover, reward) = jax.lax.scan(body, state, (actions, keys))
        values = jnp.concatenate([jnp.ones(1, jnp.float32), value])
        return Walk(values, weights, actions, cost, turnover, reward)

    def walk(actions: jax.Array, env_params: EnvParams, key: jax.Array) -> Walk:
        return jax.vmap(one, in_axes=(0, None, None))(actions, env_params, key)

    return walk


def make_strategy_walk(network: Network, env: PortfolioEnv, n_steps: int, *,
                       greedy: bool = True) -> Callable:
    """`walk(params, env_params, key, bars_per_year) -> (Walk, metrics)` of every strategy of
    `STRATEGIES` (the policy first, then `BASELINES`) over one pass of `n_steps` steps."""
    policy = make_policy_walk(network, env, n_steps, greedy=greedy)
    baselines = make_baseline_walk(env)
    actions = baseline_actions(n_steps)

    def walk(params, env_params: EnvParams, key: jax.Array, bars_per_year) -> tuple[Walk, dict]:
        _, traj = policy(params, env_params, key)
        fixed = baselines(_opaque(actions), env_params, key)
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), policy_walk(traj), fixed)
        return both, walk_metrics(both, env_params, bars_per_year)

    return walk


def make_baseline_evaluation(env: PortfolioEnv, n_steps: int) -> Callable:
    """jit: `(env_params, key, bars_per_year) -> metrics` of every baseline (`BASELINES`, leaves
    [len(BASELINES), ...]) over one pass of `n_steps` steps; no network involved."""
    walk = make_baseline_walk(env)
    actions = baseline_actions(n_steps)

    def run(env_params: EnvParams, key: jax.Array, bars_per_year) -> dict:
        return walk_metrics(walk(_opaque(actions), env_params, key), env_params,
                            bars_per_year)

    return jax.jit(run)


def choose_baseline(sharpes: Mapping[str, float]) -> str:
    """The baseline to beat: the highest Sharpe ratio of `sharpes` (baseline -> Sharpe on the
    validation range), the earliest in `BASELINES` order on a tie. Host-side."""
    return max(BASELINES, key=lambda name: (sharpes[name], -BASELINES.index(name)))


def market_returns(env_params: EnvParams, n_steps: int) -> jax.Array:
    """float32 [n_steps]: the equal-weight index return over the bar of each step of a pass
    from `env_params.start_min` (mean_i p_i[t + 1] / p_i[t] - 1, t the step's trade bar,
    over the assets that exist)."""
    price = env_params.market.price
    window = jax.lax.dynamic_slice_in_dim(price, env_params.start_min, n_steps + 1, axis=0)
    growth = window[1:] / window[:-1]
    if env_params.market.asset_mask is None:
        return jnp.mean(growth, axis=-1) - 1.0
    # A pool of worlds: the index of the assets that exist (padding would dilute it).
    mask = jax.lax.dynamic_slice_in_dim(env_params.market.asset_mask, env_params.start_min,
                                        n_steps, axis=0)
    return jnp.sum(jnp.where(mask, growth, 0.0), -1) / jnp.sum(mask, -1) - 1.0


def walk_metrics(walk: Walk, env_params: EnvParams, bars_per_year) -> dict[str, jax.Array]:
    """`metrics.compute_all` of every strategy of `walk`, plus reward_mean: leaves [S, ...]."""
    n_steps = walk.actions.shape[1]
    market = market_returns(env_params, n_steps)
    compute = partial(M.compute_all, hold=int(Regime.HOLD), n_actions=N_REGIMES)
    out = jax.vmap(compute, in_axes=(0, 0, 0, 0, 0, None, None))(
        walk.values, walk.weights, walk.actions, walk.costs, walk.turnover, market, bars_per_year
    )
    out["reward_mean"] = jnp.mean(walk.reward, axis=1)
    return out


def score(walk_row: Mapping, health: Mapping) -> jax.Array:
    """The composite model score of a policy: trading terms (profitability, reward) from its
    walk's metrics, RL-health terms (`HEALTH_KEYS`) from a training iteration's metrics."""
    return M.model_score(
        walk_row["avg_trade_return"], walk_row["win_rate"], walk_row["reward_mean"],
        health["explained_variance"], health["entropy"], health["approx_kl"],
        health["clip_frac"], health.get("valid_actions", N_REGIMES),
    )


def make_evaluator(network: Network, env: PortfolioEnv, env_config: EnvConfig,
                   first: int, last: int, bars_per_year: float, seed: int, params_like,
                   members: int = 0):
    """The validation walk of training, compiled once (host-side setup).

    Returns `evaluate(params, health) -> {metric: scalar}`: the greedy walk of bars
    [first, last] with `walk_key(seed)` (so every evaluation of a run draws the same
    slippage), every `walk_metrics` entry of the policy, and `score` with `health`
    (the `HEALTH_KEYS` of the training iteration; float32 scalars). The program is
    compiled ahead of time here for parameters shaped and placed like `params_like`,
    so every call runs it without tracing again. `members` N > 0: N policies at once
    (`compile_with_health`'s members: params and health with a member axis, metrics [N]).
    """
    n_steps = last - first
    env_params = pass_params(env, env_config, first, last)
    walk = make_policy_walk(network, env, n_steps)
    key = walk_key(seed)

    def evaluate(params, env_params: EnvParams, health: dict) -> dict:
        _, traj = walk(params, env_params, key)
        row = jax.tree.map(lambda x: x[0], walk_metrics(policy_walk(traj), env_params,
                                                        bars_per_year))
        row["score"] = score(row, health)
        return row

    return compile_with_health(evaluate, params_like, env_params, env.num_actions,
                               members=members)


def compile_with_health(evaluate: Callable, params_like, env_params, num_actions: int, *,
                        late_like: tuple = (), late: Callable[[], tuple] | None = None,
                        members: int = 0):
    """`evaluate(params, env_params, health, *late)` compiled ahead of time for parameters
    like `params_like` and these `env_params`, as `run(params, health, other_params=None) ->
    metrics`: `health` (a training row) gives the `HEALTH_KEYS` and the valid actions.

    `late()`: the values of arguments shaped like `late_like` that come from host work
    (another program to compile and run: the world baselines), called once after
    `evaluate` is lowered, before it compiles. (Compiling on another thread while `late`
    runs, e5b9185, was measured on 2 shared cores and taken out: XLA already compiles on
    both cores, so the evaluation took no less time, and 4-15% more CPU time.)

    `members` N > 0: a population's N members in one call, `evaluate` vmapped over them:
    `params_like` has a leading member axis (placed as the population's, whose devices
    then walk their own members), `health` is a sequence of N rows, and every metric
    comes back with a leading [N]. Member i's metrics are `evaluate`'s of its params alone.
    """
    health_shape = {k: jax.ShapeDtypeStruct((members,) if members else (), jnp.float32)
                    for k in (*HEALTH_KEYS, "valid_actions")}
    if members:
        evaluate = jax.vmap(evaluate, in_axes=(0, None, 0, *(None,) * len(late_like)))
    lowered = jax.jit(evaluate).lower(params_like, env_params, health_shape, *late_like)
    late_values = () if late is None else tuple(late())
    compiled = lowered.compile()

    def one(health: Mapping[str, float]) -> dict:
        h = {k: np.float32(health[k]) for k in HEALTH_KEYS}
        # The entropy's ceiling: log of the valid actions (rows before it was logged: all).
        h["valid_actions"] = np.float32(health.get("valid_actions", num_actions))
        return h

    def run(params, health, other_params=None) -> dict:
        """`other_params`: env params shaped as the compiled ones (a pass of as many steps
        from another bar: a walk-forward fold's validation slice), else the compiled ones."""
        if members:
            rows = [one(h) for h in health]
            h = {k: np.asarray([r[k] for r in rows], np.float32) for k in rows[0]}
        else:
            h = one(health)
        return compiled(params, env_params if other_params is None else other_params, h,
                        *late_values)

    return run


def world_baselines(env: PortfolioEnv, env_config: EnvConfig, seed: int,
                    bars_per_year: float) -> dict:
    """Every baseline through every world of a pool (`world_pass_params`): their metrics,
    leaves [W, len(BASELINES)], and the one to beat, the highest median Sharpe ratio over
    the worlds (`choose_baseline`): what a user without RL would pick on these worlds.
    Host-side; the walks run once, in one program."""
    world_params = world_pass_params(env, env_config)
    run = make_baseline_evaluation(env, env.world_bars - 2)
    metrics = jax.device_get(jax.jit(jax.vmap(run, in_axes=(world_axes(world_params), None,
                                                            None)))(
        world_params, walk_key(seed), jnp.float32(bars_per_year)))
    medians = {name: float(np.median(metrics["sharpe"][:, i]))
               for i, name in enumerate(BASELINES)}
    return {"metrics": metrics, "median_sharpe": medians, "name": choose_baseline(medians)}


def make_world_evaluator(network: Network, env: PortfolioEnv, env_config: EnvConfig,
                         bars_per_year: float, seed: int, params_like, members: int = 0):
    """The validation walks of a worlds run (`env`: over its validation worlds), compiled
    once, like `make_evaluator`'s walk of a range.

    Returns `evaluate(params, health) -> {metric: scalar}`: the policy's greedy pass through
    each world (`walk_key(seed)`); each `walk_metrics` entry is its median over the worlds;
    action_freq is the mean over worlds (shares that sum to 1); sharpe_iqr is the spread
    of the worlds' Sharpe ratios (75th minus 25th percentile),
    worlds_won the share of worlds where the policy's Sharpe ratio beats the baseline's
    (`world_baselines`, chosen on these worlds), baseline that baseline's name,
    world_sharpe the Sharpe ratio in each world ([W]: the spread of the candidates' Sharpe
    ratios within a world deflates the chosen one's there); `score` is `score` of the
    medians with `health`.

    The baselines' program compiles and walks every world after the policy's program is
    lowered (`compile_with_health`'s `late`): the baseline's Sharpe ratios are an argument
    of the policy's program, not a constant of it.
    """
    world_params = world_pass_params(env, env_config)
    walk = make_policy_walk(network, env, env.world_bars - 2)
    key = walk_key(seed)
    base = {}

    def baselines() -> tuple[np.ndarray]:
        base.update(world_baselines(env, env_config, seed, bars_per_year))
        return (np.asarray(base["metrics"]["sharpe"][:, BASELINES.index(base["name"])],
                           np.float32),)

    def evaluate(params, world_params: EnvParams, health: dict, target: jax.Array) -> dict:
        def one(env_params):
            _, traj = walk(params, env_params, key)
            return jax.tree.map(lambda x: x[0], walk_metrics(policy_walk(traj), env_params,
                                                             bars_per_year))

        rows = jax.vmap(one, in_axes=(world_axes(world_params),))(world_params)
        out = jax.tree.map(lambda x: jnp.median(x, axis=0), rows)
        out["action_freq"] = jnp.mean(rows["action_freq"], axis=0)  # shares that sum to 1
        q25, q75 = jnp.percentile(rows["sharpe"], jnp.array([25.0, 75.0]))
        out["sharpe_iqr"] = q75 - q25
        out["worlds_won"] = jnp.mean((rows["sharpe"] > target).astype(jnp.float32))
        out["world_sharpe"] = rows["sharpe"]  # [W]: deflates the chosen one per world
        out["score"] = score(out, health)
        return out

    target_like = jax.ShapeDtypeStruct((env.n_worlds,), jnp.float32)
    compiled = compile_with_health(evaluate, params_like, world_params, env.num_actions,
                                   late_like=(target_like,), late=baselines,
                                   members=members)
    return lambda params, health: {**compiled(params, health), "baseline": base["name"]}


# ------------------------------------------------------------------------ any env: episodes
EPISODE_ENVS = 64  # envs of an episode evaluation: 64 first episodes per walk


@struct.dataclass
class Episodes:
    """The first episode of each of B envs from a fresh reset (leaves [B])."""

    returns: jax.Array  # float32 [B], its total reward (so far, where it did not end)
    lengths: jax.Array  # int32 [B], its steps (the walk's n_steps where it did not end)
    ended: jax.Array  # bool [B], it ended (terminated or truncated) within the walk


def make_episode_walk(network: Network, env: Environment, n_envs: int, n_steps: int, *,
                      greedy: bool = True, uniform: bool = False) -> Callable:
    """`walk(params, env_params, key) -> Episodes`: n_envs envs reset with `key`, stepped
    n_steps times by the greedy policy (greedy=False: sampled; uniform=True: uniformly among
    the valid actions, a baseline that ignores the network). Walks with the same key start
    from the same states and give the env the same step keys, so two policies meet the same
    luck. Only each env's first episode counts: n_envs independent episodes, not more of the
    short ones."""
    # Episodes read rewards and ends only: none of the env's info is kept.
    rollout = make_rollout(network, env, n_steps, greedy=greedy, uniform=uniform, info_keys=())

    def walk(params, env_params, key: jax.Array) -> Episodes:
        key_init, key_run = jax.random.split(key)
        carry = initial_carry(network, env, env_params, key_init, n_envs)
        carry, traj = rollout(params, env_params, carry, key_run)
        ended = traj.done.any(axis=0)
        first = jnp.argmax(traj.done, axis=0)  # [B], the step that ended the first episode
        ended_return = traj.episode_return[first, jnp.arange(n_envs)]
        return Episodes(returns=jnp.where(ended, ended_return, carry.ep_return),
                        lengths=jnp.where(ended, first + 1, n_steps).astype(jnp.int32),
                        ended=ended)

    return walk


def episode_metrics(episodes: Episodes) -> dict[str, jax.Array]:
    """float32 scalars of the first episodes that ended: return_mean, return_std (ddof 0),
    length_mean; episodes (int32), how many ended. When none ended, the means are over every
    env's return so far (each cut at the walk's length), so the score stays finite."""
    n_ended = episodes.ended.sum(dtype=jnp.int32)
    weight = jnp.where(n_ended > 0, episodes.ended, True).astype(jnp.float32)
    mean = lambda x: (x * weight).sum() / weight.sum()
    return_mean = mean(episodes.returns)
    return {
        "return_mean": return_mean,
        "return_std": jnp.sqrt(mean((episodes.returns - return_mean) ** 2)),
        "length_mean": mean(episodes.lengths.astype(jnp.float32)),
        "episodes": n_ended,
    }


def make_episode_evaluator(network: Network, env: Environment, env_params, n_steps: int,
                           seed: int, params_like, n_envs: int = EPISODE_ENVS) -> Callable:
    """The validation evaluation of an env without one of its own, compiled once (host-side
    setup; `Environment.make_evaluator`).

    Returns `evaluate(params, health) -> {metric: scalar}`: `episode_metrics` of the greedy
    policy's first episodes in n_envs envs of `env_params`, stepped n_steps times from
    `walk_key(seed)` (every evaluation of a run starts from the same states), and `score` =
    return_mean. `health` (the training iteration's metrics) is not used: the score is the
    return alone. Compiled ahead of time for parameters shaped and placed like `params_like`.
    """
    walk = make_episode_walk(network, env, n_envs, n_steps)
    key = walk_key(seed)

    def evaluate(params, env_params) -> dict:
        row = episode_metrics(walk(params, env_params, key))
        row["score"] = row["return_mean"]
        return row

    compiled = jax.jit(evaluate).lower(params_like, env_params).compile()
    return lambda params, health: compiled(params, env_params)

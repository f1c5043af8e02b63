"""jaxtrade's envs as gymnax environments, for other JAX RL code (PureJaxRL, gymnax's wrappers).

Needs the optional extra `gymnax` (`pip install 'jaxtrade[gymnax]'`); nothing else in
jaxtrade imports this module. It follows gymnax 1.0's `Environment` contract:

- `GymnaxEnv(env)` subclasses `gymnax.environments.environment.Environment` and wraps a
  jaxtrade env (`PortfolioEnv(market)`). gymnax's base class does the auto-reset: it
  calls `step_env` (no reset), then `reset_env`, and selects between them where the
  episode ended.
- `action_space`/`observation_space` are gymnax's own `spaces.Discrete`/`spaces.Box`,
  which PureJaxRL's and gymnax's wrappers assert.
- `step` returns the classic five values `(obs, state, reward, done, info)` that
  PureJaxRL's wrappers unpack, or with `terminated_truncated=True` gymnax 1.0's six
  `(obs, state, reward, terminated, truncated, info)` that gymnax's own wrappers
  (`LogWrapper`, `FlattenObservationWrapper`, `GymnaxToGymWrapper`) unpack.
  `terminated` (ruin) and `truncated` (episode length or end of the range; never
  together with `terminated`) are exactly the jaxtrade env's; `done = terminated | truncated`.
- `stagger=True`: the public `reset` starts each first episode part-way (the env's
  `stagger` hook; PortfolioEnv: at a random step in [0, episode_length)), so that
  vmapped envs end their episodes at different steps instead of all together;
  auto-resets start at step 0, as in jaxtrade's trainer.
- `info` is slim by default: six scalars per env (`SLIM_INFO_KEYS`, `terminated`,
  `truncated`), because code that keeps `info` for every step (PureJaxRL does) would
  otherwise hold ~150 values per env and step. The six-value form adds
  `final_observation` (obs_dim values): gymnax 1.0 defines it as part of `step`, its
  `FlattenObservationWrapper` reads it, and bootstrapping a truncated episode needs it
  (`final_observation=False` leaves it out). `full_info=True` gives the jaxtrade env's
  whole `info` and `final_observation`.
- Action masks: `action_mask(state, params)` is the jaxtrade env's (bool [num_actions],
  the actions valid in `state`; all True for an env without a mask, such as
  PortfolioEnv), on the adapter's state. gymnax has no mask in its API, so nothing
  applies it: mask the logits yourself (`jnp.where(mask, logits, -jnp.inf)`) before
  sampling and in the loss, as jaxtrade's trainer does. For an env that masks actions
  (`masks_actions`), `step`'s `info` also holds `action_mask`, the mask of the returned
  state: the actions valid for the next step (after an auto-reset, in the new
  episode's first state). For the state `reset` returns, call `action_mask`.

`register_gymnax()` registers every env of jaxtrade's registry (`jaxtrade.envs.registered`)
with gymnax's (`gymnax.register`, public since gymnax 1.0) as "jaxtrade-<Name>-v0", so
that `gymnax.make("jaxtrade-Portfolio-v0")` returns `(env, env_params)` like gymnax's own
envs, over the embedded market unless `market=` says otherwise.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from jaxtrade.envs.base import env_class, make_env, registered

#: The few per-step scalars of the slim `info` (besides `terminated` and `truncated`).
SLIM_INFO_KEYS = ("log_return", "turnover", "cost", "value")


@struct.dataclass
class GymnaxEnvState:
    """The jaxtrade env's state plus how the step that produced it ended.

    gymnax's base `step` asks `is_truncated(state)` after `step_env`; the jaxtrade env
    decides truncation (and termination) inside its step, so the adapter keeps both
    flags here instead of deriving them again.
    """

    env_state: Any  # the jaxtrade env's state (`jaxtrade.envs.EnvState` for PortfolioEnv)
    terminated: jax.Array  # bool [], the last step ruined the portfolio
    truncated: jax.Array  # bool [], the last step ended the episode otherwise (its length,
    # the end of the range)

    @property
    def time(self) -> jax.Array:
        """Steps taken in this episode (gymnax's name for it)."""
        return self.env_state.step


class GymnaxEnv(environment.Environment):
    """A jaxtrade env (e.g. `PortfolioEnv(market)`) as a gymnax `Environment`.

    Args:
      env: the jaxtrade env (`jaxtrade.envs.base.Environment`):
        `reset_env(key, params) -> (obs, state)`, `step_env(key, state, action, params)
        -> (obs, state, reward, done, info)` without reset and with `info["terminated"]`,
        `get_obs`, `num_actions`, `obs_dim`, `default_params`, `make_params`, and
        optionally `stagger`, `action_names`, `name`.
      terminated_truncated: `step` returns gymnax 1.0's six values
        `(obs, state, reward, terminated, truncated, info)` instead of the classic
        five `(obs, state, reward, done, info)`.
      stagger: `reset` starts the episode part-way, through the env's `stagger` hook
        (PortfolioEnv: at a random step in [0, episode_length)); auto-resets inside
        `step` still start at step 0.
      full_info: `step`'s `info` holds everything the jaxtrade env reports (and
        `final_observation`) instead of the slim set.
      final_observation: whether `info` holds `final_observation`, the observation an
        episode ended on (obs_dim values per env); by default only in the six-value
        form (gymnax 1.0's contract; `FlattenObservationWrapper` reads it) or with
        `full_info`.
      params: the env params `default_params` returns (by default the jaxtrade env's:
        its training range, 256-step episodes, the reference frictions).
      name: the env's name (by default "jaxtrade-<env name>-v0").
    """

    def __init__(
        self,
        env,
        *,
        terminated_truncated: bool = False,
        stagger: bool = False,
        full_info: bool = False,
        final_observation: bool | None = None,
        params=None,
        name: str | None = None,
    ):
        self.jaxtrade_env = env
        self.terminated_truncated = bool(terminated_truncated)
        self.stagger = bool(stagger)
        self.full_info = bool(full_info)
        self.final_observation = (self.terminated_truncated or self.full_info
                                  if final_observation is None else bool(final_observation))
        self._params = params
        self._name = name

    def __repr__(self) -> str:
        return (f"GymnaxEnv({self.name}, terminated_truncated={self.terminated_truncated}, "
                f"stagger={self.stagger}, full_info={self.full_info}, "
                f"final_observation={self.final_observation})")

    # ----------------------------------------------------------------- facts, spaces
    @property
    def name(self) -> str:
        """gymnax's name for the env: "jaxtrade-Portfolio-v0" for PortfolioEnv."""
        if self._name is not None:
            return self._name
        return gymnax_id(getattr(self.jaxtrade_env, "name", None)
                         or type(self.jaxtrade_env).__name__.removesuffix("Env"))

    @property
    def num_actions(self) -> int:
        return int(self.jaxtrade_env.num_actions)

    @property
    def action_names(self) -> tuple[str, ...]:
        """One name per action (the regimes for PortfolioEnv)."""
        return tuple(self.jaxtrade_env.action_names)

    @property
    def obs_dim(self) -> int:
        return int(self.jaxtrade_env.obs_dim)

    @property
    def masks_actions(self) -> bool:
        """Whether the jaxtrade env masks actions (then `step`'s `info` has `action_mask`)."""
        return bool(getattr(self.jaxtrade_env, "masks_actions", False))

    def action_mask(self, state: GymnaxEnvState, params=None) -> jax.Array:
        """bool [num_actions]: the actions valid in `state` (the jaxtrade env's
        `action_mask`; all True when it masks none). Through a gymnax wrapper, pass the
        adapter's state: `env.action_mask(log_state.env_state, params)`."""
        mask = self._env_mask(state, params)
        return jnp.ones((self.num_actions,), bool) if mask is None else mask

    def _env_mask(self, state: GymnaxEnvState, params=None) -> jax.Array | None:
        """The jaxtrade env's mask of `state`, or None where it masks nothing (an env that
        never masks, or params with which it masks none)."""
        if not self.masks_actions:
            return None
        params = self.default_params if params is None else params
        return self.jaxtrade_env.action_mask(state.env_state, params)

    def action_space(self, params=None) -> spaces.Discrete:
        return spaces.Discrete(self.num_actions)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (self.obs_dim,), jnp.float32)

    @functools.cached_property
    def default_params(self):
        # Cached: the jaxtrade env builds new device arrays (the market) on every call.
        return self.jaxtrade_env.default_params if self._params is None else self._params

    def make_params(self, *args, **kwargs):
        """The jaxtrade env's `make_params` (another range, episode length or frictions)."""
        return self.jaxtrade_env.make_params(*args, **kwargs)

    # --------------------------------------------------------------------- dynamics
    def reset_env(self, key: jax.Array, params) -> tuple[jax.Array, GymnaxEnvState]:
        obs, env_state = self.jaxtrade_env.reset_env(key, params)
        no = jnp.zeros((), bool)
        return obs, GymnaxEnvState(env_state=env_state, terminated=no, truncated=no)

    def step_env(self, key: jax.Array, state: GymnaxEnvState, action, params):
        """One step without reset -> (obs, state, reward, terminated, info), as gymnax's
        base `step` expects; it adds `truncated` from `is_truncated`."""
        obs, env_state, reward, done, info = self.jaxtrade_env.step_env(
            key, state.env_state, action, params
        )
        # jaxtrade's protocol: `done`, and `info["terminated"]` for an end that is not
        # bootstrapped (ruin); every other end is a truncation.
        terminated = jnp.asarray(info["terminated"], bool)
        truncated = jnp.asarray(done, bool) & ~terminated
        if not self.full_info:
            info = {k: info[k] for k in SLIM_INFO_KEYS if k in info}
        state = GymnaxEnvState(env_state=env_state, terminated=terminated, truncated=truncated)
        return obs, state, reward, terminated, info

    def is_truncated(self, state: GymnaxEnvState, params) -> jax.Array:
        return state.truncated

    def is_terminated(self, state: GymnaxEnvState, params) -> jax.Array:
        return state.terminated

    def get_obs(self, state: GymnaxEnvState, params=None, key=None) -> jax.Array:
        params = self.default_params if params is None else params
        return self.jaxtrade_env.get_obs(state.env_state, params)

    def observe(self, key, state: GymnaxEnvState, action, params) -> jax.Array:
        return self.get_obs(state, params)

    @partial(jax.jit, static_argnames=("self",))
    def reset(self, key: jax.Array, params=None) -> tuple[jax.Array, GymnaxEnvState]:
        """A new episode; with `stagger`, part-way through (a random step count)."""
        params = self.default_params if params is None else params
        if not self.stagger:
            return self.reset_env(key, params)
        key_reset, key_stagger = jax.random.split(key)
        _, state = self.reset_env(key_reset, params)
        # The env's own hook (`jaxtrade.envs.base.Environment.stagger`), on a batch of one.
        batch = jax.tree.map(lambda x: x[None], state.env_state)
        env_state = jax.tree.map(lambda x: x[0],
                                 self.jaxtrade_env.stagger(key_stagger, batch, params))
        state = state.replace(env_state=env_state)
        return self.get_obs(state, params), state

    @partial(jax.jit, static_argnames=("self",))
    def step(self, key: jax.Array, state: GymnaxEnvState, action, params=None):
        """One step with auto-reset (gymnax's base class):
        (obs, state, reward, done, info), or with `terminated_truncated`
        (obs, state, reward, terminated, truncated, info).

        When the step ends the episode, `obs`/`state` are the next episode's first ones;
        `info["final_observation"]` (six-value form or `full_info`, unless
        `final_observation=False`) is the observation the episode ended on, and
        `info["action_mask"]` (an env that masks actions) the mask of the returned state.
        """
        obs, state, reward, terminated, truncated, info = super().step(
            key, state, action, params
        )
        if not self.final_observation:
            info = {k: v for k, v in info.items() if k != "final_observation"}
        if (mask := self._env_mask(state, params)) is not None:
            info = {**info, "action_mask": mask}
        if self.terminated_truncated:
            return obs, state, reward, terminated, truncated, info
        return obs, state, reward, terminated | truncated, info


# ------------------------------------------------------------------------- registration
@functools.lru_cache(maxsize=4)
def default_market(episode_length: int = 256):
    """The embedded synthetic market with `jaxtrade.train`'s defaults, cut before its test
    range like a training run's (`Market.without_test`)."""
    from jaxtrade.config import DataConfig
    from jaxtrade.data import load_market

    data = DataConfig()
    return load_market(
        None,
        synthetic=data.synthetic(),
        episode_length=episode_length,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
    ).without_test()


def gymnax_id(name: str) -> str:
    """gymnax's id of a jaxtrade env name: "portfolio" -> "jaxtrade-Portfolio-v0",
    "funding_rate" -> "jaxtrade-FundingRate-v0"."""
    if name.startswith("jaxtrade-"):
        return name
    words = re.split(r"[-_ ]+", name)
    return "jaxtrade-" + "".join(w[:1].upper() + w[1:] for w in words) + "-v0"


def make(
    env_name: str = "portfolio",
    market=None,
    *,
    terminated_truncated: bool = False,
    stagger: bool = False,
    full_info: bool = False,
    final_observation: bool | None = None,
    **params_kwargs,
) -> GymnaxEnv:
    """A jaxtrade env as a `GymnaxEnv`: what `gymnax.make(gymnax_id(env_name), **kwargs)`
    builds after `register_gymnax()`.

    Args:
      env_name: the jaxtrade env's registry name (`jaxtrade.envs.registered()`).
      market: a `jaxtrade.data.Market`, a path for `jaxtrade.data.load_market` (CSV,
        Parquet or a directory), or None for the embedded market (`default_market`). An
        env with data of its own (a `load_market`, e.g. funding) reads the path, or its
        embedded data for None, with its loader, without the test range.
      terminated_truncated, stagger, full_info, final_observation: see `GymnaxEnv`.
      **params_kwargs: the env's `make_params` arguments (split, episode_length,
        frictions, ...) for its `default_params`, which `gymnax.make` returns.
    """
    cls = env_class(env_name)
    episode_length = int(params_kwargs.get("episode_length", cls.default_episode_length))
    own = getattr(cls, "load_market", None)  # an env with data of its own (e.g. funding)
    if own is not None and (market is None or isinstance(market, str | os.PathLike)):
        from jaxtrade.config import Config, DataConfig, EnvConfig

        path = None if market is None else str(market)
        market = own(Config(env=EnvConfig(name=env_name, episode_length=episode_length),
                            data=DataConfig(path=path)))
    elif market is None:
        market = default_market(episode_length)
    elif isinstance(market, str | os.PathLike):
        from jaxtrade.data import load_market

        market = load_market(market, episode_length=episode_length).without_test()
    env = make_env(env_name, market)
    return GymnaxEnv(
        env,
        terminated_truncated=terminated_truncated,
        stagger=stagger,
        full_info=full_info,
        final_observation=final_observation,
        params=env.make_params(**params_kwargs) if params_kwargs else None,
        name=gymnax_id(env_name),
    )


def env_factories() -> dict[str, Callable[..., GymnaxEnv]]:
    """gymnax id -> factory (`gymnax.make`'s keyword arguments -> a `GymnaxEnv`), one per
    env of jaxtrade's registry: "jaxtrade-Portfolio-v0", and any env registered later."""
    return {gymnax_id(name): partial(make, name) for name in registered()}


def register_gymnax() -> list[str]:
    """Registers jaxtrade's envs with gymnax, so that `gymnax.make(id, **kwargs)` builds
    them (`env_factories`: "jaxtrade-Portfolio-v0", ...); returns the ids.

    Idempotent: an id gymnax already knows is left as it is. Uses `gymnax.register`,
    gymnax 1.0's public registration hook.

    Raises:
      ImportError: the installed gymnax has no `register` (older than 1.0).
    """
    import gymnax

    register = getattr(gymnax, "register", None)
    if register is None:
        raise ImportError(
            f"gymnax {getattr(gymnax, '__version__', '(unknown version)')} has no "
            f"gymnax.register; jaxtrade's envs need gymnax>=1.0.1 "
            f"(pip install 'jaxtrade[gymnax]')"
        )
    factories = env_factories()
    for env_id, factory in factories.items():
        if env_id not in gymnax.registered_envs:
            register(env_id, factory)
    return list(factories)

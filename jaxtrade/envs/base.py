"""The environment protocol every jaxtrade env follows, and the registry `--env` reads.

An env is a host-side object holding static facts only (shapes, names, ranges); all
arrays travel in its params pytree, which the compiled program takes as an argument,
so two markets of the same shape share one compiled program. One instance serves any
number of vmapped envs. The API is gymnax's (`reset_env`/`step_env` written by the env,
`reset`/`step` with auto-reset written once here) with four additions the engine uses:

* `action_names`: one label per discrete action (logs, plots, the banner);
* `action_mask(state, params)`: bool [num_actions], the actions valid in `state` (all
  by default). The engine masks the logits before sampling and the greedy choice and
  inside the loss's log-softmax and entropy, so a masked action is never taken (every
  state must allow at least one action: with none, the choice would be uniform over all);
* `step_metrics(info)`: what the env adds to each iteration's metrics, from the
  rollout's `info` (leaves [T, B, ...]), which holds only the keys `metric_info_keys`
  names: a training rollout stores those and nothing else of `info` (evaluation walks
  keep it all);
* `stagger(key, states, params)`: a batch of fresh states (leaves [n, ...]) moved
  part-way into their first episodes, so that vmapped episodes end at different steps
  (identity by default);
* evaluation: `make_evaluator` builds training's validation evaluation (`--eval-every`:
  `evaluate(params, health) -> {metric: scalar, "score": ...}`, whose `score` ranks
  checkpoints and drives `--early-stop`), `validation_unavailable` says why a run has
  nothing to validate on, `describe_evaluation` and `evaluation_line` are the banner's and
  the log's words for it, and `trading` picks `python -m jaxtrade.evaluate`'s report. By
  default: the greedy policy's first episodes in `EPISODE_ENVS` envs of the "validation"
  params, scored by their mean return (`jaxtrade.evaluation.make_episode_evaluator`), and
  an episode report on the "test" params against a uniformly random policy.

`step` returns the classic 5-tuple `(obs, state, reward, done, info)`; `info` holds
`terminated` (an end with no bootstrap, e.g. ruin) and `final_obs`, the observation
the episode ended on (the next episode's first one is returned in `obs`).
gymnax's own classes wrap these envs in `jaxtrade.envs.register_gymnax`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp

TEnvState = TypeVar("TEnvState")
TEnvParams = TypeVar("TEnvParams")


class Environment(Generic[TEnvState, TEnvParams]):
    """Base class: subclasses write `reset_env`, `step_env`, `get_obs`, `make_params`
    and the properties `num_actions`, `obs_dim`, `action_names`; the rest has defaults."""

    name: str = "env"  # registry name (`--env`)
    # Steps per training episode when the config leaves `episode_length` unset
    # (`config.resolve`); `--episode-length` or a config file's value wins over it.
    default_episode_length: int = 256
    # Whether `python -m jaxtrade.evaluate` gives the trading report (a continuous pass of a
    # date range against baseline strategies, `jaxtrade.evaluation`'s walks: an env whose
    # steps trade a portfolio of the market and report value, weights, cost and turnover in
    # `info`) instead of the episode report every env supports.
    trading: bool = False
    # An env's own evaluation report instead ("module:function", imported when evaluate
    # runs): `function(request, checkpoint source)` returns an assessment with
    # `report` (report.json), `write(out_dir) -> file names` and `lines(show_all)`.
    evaluation: str | None = None

    # --------------------------------------------------------------- what a subclass writes
    @property
    def num_actions(self) -> int:
        raise NotImplementedError

    @property
    def obs_dim(self) -> int:
        raise NotImplementedError

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(str(a) for a in range(self.num_actions))

    def make_params(self, split: str = "train", **kwargs: Any) -> TEnvParams:
        """Params of episodes in one range ("train", "validation", "test"); host-side."""
        raise NotImplementedError

    def reset_env(self, key: jax.Array, params: TEnvParams) -> tuple[jax.Array, TEnvState]:
        raise NotImplementedError

    def step_env(self, key: jax.Array, state: TEnvState, action: jax.Array, params: TEnvParams
                 ) -> tuple[jax.Array, TEnvState, jax.Array, jax.Array, dict]:
        """One step without reset: (obs, state, reward, done, info with `terminated`)."""
        raise NotImplementedError

    def get_obs(self, state: TEnvState, params: TEnvParams) -> jax.Array:
        raise NotImplementedError

    # ------------------------------------------------------------------- optional hooks
    @property
    def obs_layout(self) -> Any:
        """How the observation splits into per-asset tokens and globals
        (`jaxtrade.networks.ObsLayout`), which the set encoder reads; None (the default)
        for an observation without assets."""
        return None

    def action_mask(self, state: TEnvState, params: TEnvParams) -> jax.Array | None:
        """bool [num_actions]: which actions `state` allows (all of them by default). An env
        whose masking depends on its params may return None (static: the params' structure
        decides) for "every action, always": its rollouts then store no mask."""
        return jnp.ones((self.num_actions,), bool)

    @property
    def masks_actions(self) -> bool:
        """Whether this env overrides `action_mask`, i.e. may mask (static: unmasked envs pay
        nothing)."""
        return type(self).action_mask is not Environment.action_mask

    # The keys of `info` that `step_metrics` reads: all a training rollout stores of `info`
    # (T x B of each; `terminated` is stored on its own). None by default.
    metric_info_keys: tuple[str, ...] = ()

    def step_metrics(self, info: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Scalars the env adds to an iteration's metrics, from `info` leaves [T, B, ...]
        (the keys `metric_info_keys` names)."""
        return {}

    def notes(self) -> list[str]:
        """Lines the training banner prints under the env's name (none by default)."""
        return []

    def stagger(self, key: jax.Array, states: TEnvState, params: TEnvParams) -> TEnvState:
        """A batch of fresh `states` (leaves [n, ...]) moved part-way into their first
        episodes; identity by default."""
        return states

    # ------------------------------------------------------------- evaluation hooks
    def validation_unavailable(self) -> str | None:
        """Why this run leaves the env nothing to validate on, a clause the engine puts after
        "--eval-every N walks the validation range, but " (with the run's data split and how
        to change it), e.g. "this run has none"; None (the default) when it has something."""
        return None

    def describe_evaluation(self, env_config: Any) -> str:
        """What `make_evaluator`'s evaluation does, for the banner's `eval:` line."""
        from jaxtrade.evaluation import EPISODE_ENVS

        return (f"greedy policy in {EPISODE_ENVS} envs of the validation params, the first "
                f"episode of each (at most {env_config.episode_length} steps), scored by its "
                f"mean return")

    def make_evaluator(self, network: Any, env_config: Any, seed: int,
                       params_like: Any) -> Callable[[Any, Mapping[str, float]], dict]:
        """Training's validation evaluation, compiled once for parameters shaped and placed
        like `params_like` (host-side setup).

        Returns `evaluate(params, health) -> {metric: float32 scalar}` with a `score` (higher
        is better): it ranks checkpoints, counts for `--early-stop`, and every metric goes
        into the iteration's row prefixed `val_`. `health` is the training iteration's row
        (explained variance, entropy, KL, clip fraction, valid actions) for a score that
        weighs them. The default (`jaxtrade.evaluation.make_episode_evaluator`) runs the
        greedy policy in `EPISODE_ENVS` envs of the "validation" params for
        `env_config.episode_length` steps from the key of `seed`, and reports the first
        episode of each: return_mean, return_std, length_mean, episodes, and score =
        return_mean (`health` unused).
        """
        from jaxtrade.evaluation import make_episode_evaluator

        env_params = self.make_params("validation", **env_config.params_kwargs())
        return make_episode_evaluator(network, self, env_params, env_config.episode_length,
                                      seed, params_like)

    def make_members_evaluator(self, network: Any, env_config: Any, seed: int,
                               params_like: Any, members: int) -> Callable | None:
        """`make_evaluator`'s evaluation of a population's `members` at once (params with a
        leading member axis, placed like `params_like`; `health` a sequence of their rows;
        metrics [members]), or None: the population evaluates one member at a time with
        `make_evaluator`'s (the default)."""
        return None

    def evaluation_line(self, metrics: Mapping[str, float]) -> str:
        """The middle of a `val` log line, from one evaluation's metrics (no `val_` prefix);
        the engine adds the iteration before it and the score after it."""
        return (f"validation return {metrics['return_mean']:+.4f} | episodes "
                f"{metrics['episodes']} | length {metrics['length_mean']:.1f}")

    # ------------------------------------------------------------------ written once here
    @property
    def default_params(self) -> TEnvParams:
        return self.make_params("train")

    def reset(self, key: jax.Array, params: TEnvParams | None = None):
        """-> (obs, state) of a new episode."""
        return self.reset_env(key, self.default_params if params is None else params)

    def step(self, key: jax.Array, state: TEnvState, action, params: TEnvParams | None = None):
        """One step with auto-reset -> (obs, state, reward, done, info).

        When the step ends the episode, `obs`/`state` are the next episode's first ones
        and `info["final_obs"]` is the observation the episode ended on.
        """
        params = self.default_params if params is None else params
        key_step, key_reset = jax.random.split(key)
        obs_end, state_end, reward, done, info = self.step_env(key_step, state, action, params)
        obs_new, state_new = self.reset_env(key_reset, params)
        state = jax.tree.map(lambda a, b: jnp.where(done, a, b), state_new, state_end)
        obs = jnp.where(done, obs_new, obs_end)
        return obs, state, reward, done, {**info, "final_obs": obs_end}


EnvFactory = Callable[..., Environment]
_REGISTRY: dict[str, EnvFactory] = {}


def register(name: str, factory: EnvFactory) -> None:
    """Make `make_env(name, market)` build `factory(market)`; a name may be registered again
    (the newest factory wins), so a test or a notebook can swap in its own env."""
    _REGISTRY[name] = factory


def registered() -> tuple[str, ...]:
    """The registered env names, in registration order."""
    _load_builtin()
    return tuple(_REGISTRY)


def make_env(name: str, market: Any) -> Environment:
    """The env registered as `name`, over `market`.

    Raises:
        ValueError: `name` is not registered (the message lists the registered names).
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown env {name!r}; registered envs: {', '.join(_REGISTRY)}")
    return _REGISTRY[name](market)


def env_class(name: str) -> EnvFactory:
    """The factory registered as `name` (an env class, usually): its class attributes say
    what an env needs before it is built, e.g. `load_market(cfg, test)` for an env whose
    data is its own rather than the portfolio market's.

    Raises:
        ValueError: `name` is not registered.
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown env {name!r}; registered envs: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _load_builtin() -> None:
    # The built-in envs register themselves on import; importing them here keeps
    # `jaxtrade.envs.base` free of a cycle with the modules that subclass it.
    # Registration order: the portfolio env, the default, first.
    # isort: off
    import jaxtrade.envs.portfolio  # noqa: F401
    import jaxtrade.envs.funding  # noqa: F401
    # isort: on

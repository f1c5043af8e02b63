"""The one rollout: a recurrent policy stepping vmapped environments under `lax.scan`.

Training samples actions; evaluation takes the greedy action. Both run the same
scan body, so what is evaluated is exactly what was trained.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import struct

from jaxtrade.envs.portfolio import EnvParams, EnvState, PortfolioEnv
from jaxtrade.networks import ActorCritic


@struct.dataclass
class Carry:
    """What a rollout carries from one step to the next, for B environments."""

    env_state: EnvState  # leaves [B, ...]
    obs: jax.Array  # [B, D] float32, observation to act on
    hidden: jax.Array  # [L, B, H] float32 GRU state before acting
    reset: jax.Array  # [B] bool, the GRU state must be zeroed before acting (new episode)
    ep_return: jax.Array  # [B] float32, reward summed over the current episode so far


@struct.dataclass
class Transition:
    """One step of B environments; stacked by the scan into [T, B, ...]."""

    obs: jax.Array  # [B, D] compute dtype, what the policy saw
    reset: jax.Array  # [B] bool, GRU reset flag applied before this step
    action: jax.Array  # [B] int32
    log_prob: jax.Array  # [B] float32, log pi(action | history) at rollout time
    value: jax.Array  # [B] float32, V(history) at rollout time
    reward: jax.Array  # [B] float32
    done: jax.Array  # [B] bool, the step ended its episode (terminated or truncated)
    terminated: jax.Array  # [B] bool, ended by ruin: no bootstrap
    final_value: jax.Array  # [B] float32, V of the episode's final observation (when done)
    episode_return: jax.Array  # [B] float32, the episode's total reward where done, else 0
    info: dict  # env info without final_obs: value, weights, turnover, costs, log_return


def make_rollout(
    network: ActorCritic,
    env: PortfolioEnv,
    n_steps: int,
    *,
    greedy: bool = False,
    shard: Callable[[Carry], Carry] | None = None,
) -> Callable:
    """Builds `rollout(params, env_params, carry, key) -> (carry, Transition [T, B, ...])`.

    Args:
      network: the actor-critic (its dtype decides how observations are stored).
      env: the environment; `env_params` is broadcast to all B envs.
      n_steps: T, steps per rollout.
      greedy: take the argmax action instead of sampling.
      shard: applied to the carry at every step (under `jit`), e.g. to pin the env
        axis to the devices that hold those envs (`jaxtrade.parallel.constrain`).
    """
    shard = shard or (lambda carry: carry)

    def step(params, env_params: EnvParams, carry: Carry, key: jax.Array):
        key_act, key_env = jax.random.split(key)
        variables = {"params": params}
        hidden, logits, value = network.apply(variables, carry.hidden, carry.obs, carry.reset)
        if greedy:
            action = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            action = jax.random.categorical(key_act, logits).astype(jnp.int32)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=-1)[:, 0]
        n_envs = carry.obs.shape[0]
        obs, env_state, reward, done, info = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(key_env, n_envs), carry.env_state, action, env_params
        )
        # Bootstrap value for a time-limit end: V of the observation the episode
        # ended on, continuing the GRU state (only used where done & ~terminated).
        _, _, final_value = network.apply(
            variables, hidden, info.pop("final_obs"), jnp.zeros_like(done)
        )
        ep_return = carry.ep_return + reward
        transition = Transition(
            obs=carry.obs.astype(network.dtype),
            reset=carry.reset,
            action=action,
            log_prob=log_prob,
            value=value,
            reward=reward,
            done=done,
            terminated=info["terminated"],
            final_value=final_value,
            episode_return=jnp.where(done, ep_return, 0.0),
            info=info,
        )
        new_carry = Carry(
            env_state=env_state,
            obs=obs,
            hidden=hidden,
            reset=done,
            ep_return=jnp.where(done, 0.0, ep_return),
        )
        return new_carry, transition

    def rollout(params, env_params: EnvParams, carry: Carry, key: jax.Array):
        def body(carry, key):
            return step(params, env_params, shard(carry), key)

        return jax.lax.scan(body, carry, jax.random.split(key, n_steps))

    return rollout


def carry_env_axes(carry: Carry) -> Carry:
    """The env axis of every leaf of a `Carry` (1 for the [L, B, H] GRU state, else 0)."""
    axes = jax.tree.map(lambda _: 0, carry)
    return axes.replace(hidden=1)


def initial_carry(
    network: ActorCritic, env: PortfolioEnv, env_params: EnvParams, key: jax.Array, n_envs: int,
    *, stagger: bool = False,
) -> Carry:
    """Fresh episodes for n_envs envs.

    With `stagger`, each env's first episode starts part-way (a random step count
    in [0, episode_length)), so that episodes end at every step rather than all
    together: batches then mix episode phases and episode statistics arrive
    every iteration.
    """
    key_reset, key_stagger = jax.random.split(key)
    _, env_state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key_reset, n_envs), env_params
    )
    if stagger:
        steps = jax.random.randint(
            key_stagger, (n_envs,), 0, env_params.episode_length, jnp.int32
        )
        env_state = env_state.replace(step=steps)
    obs = jax.vmap(env.get_obs, in_axes=(0, None))(env_state, env_params)
    return Carry(
        env_state=env_state,
        obs=obs,
        hidden=jnp.zeros((network.n_gru_layers, n_envs, network.hidden_dim), jnp.float32),
        reset=jnp.ones((n_envs,), bool),
        ep_return=jnp.zeros((n_envs,), jnp.float32),
    )

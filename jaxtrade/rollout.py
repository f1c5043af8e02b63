"""The one rollout: a policy network stepping vmapped environments under `lax.scan`.

Training samples actions; evaluation takes the greedy action. Both run the same
scan body, so what is evaluated is exactly what was trained. Any env of the protocol
(`jaxtrade.envs.base.Environment`) and any network of the protocol
(`jaxtrade.networks.base`) fit: nothing here names a portfolio or a GRU.

Envs that mask actions (`Environment.masks_actions`) have their mask applied to the
logits before the sample or the argmax (`masked_logits`), and the mask is kept in the
`Transition` so that the loss sees the same distribution; for the others the mask is
`None` and costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from jaxtrade.envs.base import Environment

MASKED_LOGIT = -1e9  # a masked action's logit: exp() is exactly 0 in float32, no inf or NaN


@struct.dataclass
class Carry:
    """What a rollout carries from one step to the next, for B environments."""

    env_state: Any  # the env's state, leaves [B, ...]
    obs: jax.Array  # [B, D] float32, observation to act on
    hidden: Any  # the network's recurrent state before acting, leaves [B, ...]
    reset: jax.Array  # [B] bool, the recurrent state must be zeroed before acting
    ep_return: jax.Array  # [B] float32, reward summed over the current episode so far


@struct.dataclass
class Transition:
    """One step of B environments; stacked by the scan into [T, B, ...]."""

    obs: jax.Array  # [B, D] compute dtype, what the policy saw
    reset: jax.Array  # [B] bool, recurrent-state reset flag applied before this step
    action: jax.Array  # [B] int32
    log_prob: jax.Array  # [B] float32, log pi(action | history) at rollout time
    value: jax.Array  # [B] float32, V(history) at rollout time
    reward: jax.Array  # [B] float32
    done: jax.Array  # [B] bool, the step ended its episode (terminated or truncated)
    terminated: jax.Array  # [B] bool, ended in a terminal state: no bootstrap
    final_value: jax.Array  # [B] float32, V of the episode's final observation (when done)
    episode_return: jax.Array  # [B] float32, the episode's total reward where done, else 0
    info: dict  # the env's info without final_obs
    mask: jax.Array | None = None  # [B, A] bool, valid actions (None: the env masks nothing)


def masked_logits(logits: jax.Array, mask: jax.Array | None) -> jax.Array:
    """`logits` with the actions `mask` forbids set to `MASKED_LOGIT` (unchanged if None)."""
    return logits if mask is None else jnp.where(mask, logits, MASKED_LOGIT)


def make_rollout(
    network,
    env: Environment,
    n_steps: int,
    *,
    greedy: bool = False,
    uniform: bool = False,
    shard: Callable[[Carry], Carry] | None = None,
) -> Callable:
    """Builds `rollout(params, env_params, carry, key) -> (carry, Transition [T, B, ...])`.

    Args:
      network: the actor-critic (its dtype decides how observations are stored).
      env: the environment; `env_params` is broadcast to all B envs.
      n_steps: T, steps per rollout.
      greedy: take the argmax action instead of sampling.
      uniform: sample uniformly among the valid actions, ignoring the network's logits
        (a baseline policy; `greedy` then does not apply).
      shard: applied to the carry at every step (under `jit`), e.g. to pin the env
        axis to the devices that hold those envs (`jaxtrade.parallel.constrain`).
    """
    shard = shard or (lambda carry: carry)
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    vmask = jax.vmap(env.action_mask, in_axes=(0, None)) if env.masks_actions else None

    def step(params, env_params, carry: Carry, key: jax.Array):
        key_act, key_env = jax.random.split(key)
        variables = {"params": params}
        out = network.apply(variables, carry.hidden, carry.obs, carry.reset)
        mask = None if vmask is None else vmask(carry.env_state, env_params)
        logits = masked_logits(jnp.zeros_like(out.logits) if uniform else out.logits, mask)
        if greedy and not uniform:
            action = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            action = jax.random.categorical(key_act, logits).astype(jnp.int32)
        log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=-1)[:, 0]
        n_envs = carry.obs.shape[0]
        obs, env_state, reward, done, info = vstep(
            jax.random.split(key_env, n_envs), carry.env_state, action, env_params
        )
        # Bootstrap value for a time-limit end: V of the observation the episode
        # ended on, continuing the recurrent state (only used where done & ~terminated).
        final_value = network.apply(
            variables, out.state, info.pop("final_obs"), jnp.zeros_like(done)
        ).value
        ep_return = carry.ep_return + reward
        transition = Transition(
            obs=carry.obs.astype(network.dtype),
            reset=carry.reset,
            action=action,
            log_prob=log_prob,
            value=out.value,
            reward=reward,
            done=done,
            terminated=info["terminated"],
            final_value=final_value,
            episode_return=jnp.where(done, ep_return, 0.0),
            info=info,
            mask=mask,
        )
        new_carry = Carry(
            env_state=env_state,
            obs=obs,
            hidden=out.state,
            reset=done,
            ep_return=jnp.where(done, 0.0, ep_return),
        )
        return new_carry, transition

    def rollout(params, env_params, carry: Carry, key: jax.Array):
        def body(carry, key):
            return step(params, env_params, shard(carry), key)

        return jax.lax.scan(body, carry, jax.random.split(key, n_steps))

    return rollout


def initial_carry(
    network, env: Environment, env_params, key: jax.Array, n_envs: int, *, stagger: bool = False,
) -> Carry:
    """Fresh episodes for n_envs envs.

    With `stagger`, each env's first episode starts part-way (`Environment.stagger`), so
    that episodes end at every step rather than all together: batches then mix episode
    phases and episode statistics arrive every iteration.
    """
    key_reset, key_stagger = jax.random.split(key)
    _, env_state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key_reset, n_envs), env_params
    )
    if stagger:
        env_state = env.stagger(key_stagger, env_state, env_params)
    obs = jax.vmap(env.get_obs, in_axes=(0, None))(env_state, env_params)
    return Carry(
        env_state=env_state,
        obs=obs,
        hidden=network.initial_state(n_envs),
        reset=jnp.ones((n_envs,), bool),
        ep_return=jnp.zeros((n_envs,), jnp.float32),
    )

"""The one rollout: a policy network stepping vmapped environments under `lax.scan`.

Training samples actions; evaluation takes the greedy action. Both run the same
scan body, so what is evaluated is exactly what was trained. Any env of the protocol
(`jaxtrade.envs.base.Environment`) and any network of the protocol
(`jaxtrade.networks.base`) fit: nothing here names a portfolio or a GRU.

Envs that mask actions (`Environment.masks_actions`) have their mask applied to the
logits before the sample or the argmax (`masked_logits`), and the mask is kept in the
`Transition` so that the loss sees the same distribution; for the others the mask is
`None` and costs nothing.

Bootstrap values. A step that ends an episode by the time limit (done and not terminated)
is bootstrapped from V of the observation the episode ended on (`info["final_obs"]`),
continuing the recurrent state. Few steps need it (about one env in `episode_length` per
step), so the rollout does not run the network on every env's final observation at every
step: it keeps, per env, `bootstrap_slots` slots for the final observation and the
recurrent state of its time-limit ends (`PendingBootstraps`), and after the scan one
batched forward over the slots gives their values. An end that finds its env's slots full
(rare when they are sized by `bootstrap_capacity`) takes a full pass of the network at its
step instead (`lax.cond`, only at such a step), so every bootstrap value is computed, and
computed by the same function on the same inputs as a full pass at every step
(`bootstrap_slots=None`, the reference the tests compare against).

The info a rollout stores: `info_keys` of the env's per-step `info` (all of it by default,
for evaluation walks that report weights and costs); training keeps only what it reads,
`Environment.metric_info_keys`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    final_value: jax.Array  # [B] float32, V of the episode's final observation where the step
    # ended it by the time limit (done & ~terminated), 0 elsewhere (every step with
    # bootstrap_slots=None)
    episode_return: jax.Array  # [B] float32, the episode's total reward where done, else 0
    info: dict  # the env's info, the rollout's `info_keys` of it (never final_obs)
    mask: jax.Array | None = None  # [B, A] bool, valid actions (None: the env masks nothing)


@struct.dataclass
class PendingBootstraps:
    """Time-limit ends of a rollout waiting for their bootstrap value, S slots per env."""

    step: jax.Array  # [B, S] int32, the rollout step whose end a slot holds; -1: empty
    obs: jax.Array  # [B, S, D] float32, the observation the episode ended on
    hidden: Any  # leaves [B, S, ...], the recurrent state after acting at that step
    count: jax.Array  # [B] int32, time-limit ends so far (the first S are in the slots)

    @classmethod
    def empty(cls, hidden: Any, n_envs: int, obs_dim: int, slots: int) -> PendingBootstraps:
        """No end yet; `hidden` is a recurrent state of the n_envs envs (its leaves shape
        the slots')."""
        return cls(
            step=jnp.full((n_envs, slots), -1, jnp.int32),
            obs=jnp.zeros((n_envs, slots, obs_dim), jnp.float32),
            hidden=jax.tree.map(
                lambda h: jnp.zeros((n_envs, slots, *h.shape[1:]), h.dtype), hidden),
            count=jnp.zeros((n_envs,), jnp.int32),
        )

    @property
    def slots(self) -> int:
        return self.step.shape[1]

    def full(self) -> jax.Array:
        """[B] bool, the env's slots are all taken."""
        return self.count >= self.slots

    def add(self, t: jax.Array, ended: jax.Array, obs: jax.Array, hidden: Any
            ) -> PendingBootstraps:
        """The ends of step `t` (`ended` [B] bool) put in their env's next free slot (an end
        that finds none is dropped: its step computed its value with a full pass)."""
        write = ended[:, None] & (jnp.arange(self.slots) == self.count[:, None])  # [B, S]

        def put(buf, x):
            w = write.reshape(write.shape + (1,) * (x.ndim - 1))
            return jnp.where(w, x[:, None], buf)

        return PendingBootstraps(
            step=jnp.where(write, t, self.step),
            obs=put(self.obs, obs.astype(jnp.float32)),
            hidden=jax.tree.map(put, self.hidden, hidden),
            count=self.count + ended.astype(jnp.int32),
        )


def bootstrap_capacity(n_steps: int, episode_length: int) -> int:
    """Slots per env for the time-limit ends of a rollout of n_steps steps.

    Ends by the time limit are at least `episode_length` steps apart (an episode runs that
    long before it is cut), so ceil(n_steps / episode_length) slots hold them all; one more
    holds an episode cut short by something else (the end of the date range). Fewer ends
    cost nothing; more (an env whose episodes are shorter) cost a full pass of the network
    at their step, as every step did before.
    """
    return min(n_steps, math.ceil(n_steps / episode_length) + 1)


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
    shard: Callable | None = None,
    bootstrap_slots: int | None = 0,
    info_keys: Sequence[str] | None = None,
) -> Callable:
    """Builds `rollout(params, env_params, carry, key) -> (carry, Transition [T, B, ...])`.

    Args:
      network: the actor-critic (its dtype decides how observations are stored).
      env: the environment; `env_params` is broadcast to all B envs.
      n_steps: T, steps per rollout.
      greedy: take the argmax action instead of sampling.
      uniform: sample uniformly among the valid actions, ignoring the network's logits
        (a baseline policy; `greedy` then does not apply).
      shard: applied at every step (under `jit`) to the carry and the pending bootstraps
        (trees whose leaves have the env axis first), e.g. to pin the env axis to the
        devices that hold those envs (`jaxtrade.parallel.constrain`).
      bootstrap_slots: S, time-limit ends per env whose bootstrap value comes from one
        batched forward after the scan (`bootstrap_capacity(n_steps, episode_length)` holds
        them all in the usual case); further ends take a full pass of the network at their
        step (with 0, every step with an end does). None: a full pass at every step, the
        reference (`Transition.final_value` is then V of every final observation).
      info_keys: the keys of the env's `info` the rollout stores (None: all but final_obs);
        training keeps `Environment.metric_info_keys`.
    """
    shard = shard or (lambda tree: tree)
    if info_keys is not None:
        info_keys = tuple(info_keys)
    # With as many slots as steps no end can find its env's slots full: no cond at all.
    spills = bootstrap_slots is not None and bootstrap_slots < n_steps
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    vmask = jax.vmap(env.action_mask, in_axes=(0, None)) if env.masks_actions else None

    def bootstrap_values(variables, hidden, obs):
        """V of `obs` [N, D] continuing the recurrent states `hidden` (leaves [N, ...])."""
        reset = jnp.zeros(obs.shape[:1], bool)
        return network.apply(variables, hidden, obs, reset).value

    def step(params, env_params, carry: Carry, pending, t: jax.Array, key: jax.Array):
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
        final_obs = info.pop("final_obs")
        terminated = info["terminated"]
        if info_keys is not None:
            info = {k: info[k] for k in info_keys}
        # Bootstrap value for a time-limit end: V of the observation the episode ended on,
        # continuing the recurrent state (module docstring).
        if bootstrap_slots is None:
            final_value = bootstrap_values(variables, out.state, final_obs)
        else:
            cut = done & ~terminated
            zero = jnp.zeros_like(out.value)
            final_value = zero
            if spills:  # the ends that find their env's slots full: a full pass, this step
                spill = cut if pending is None else cut & pending.full()
                final_value = jax.lax.cond(
                    spill.any(),
                    lambda: jnp.where(spill, bootstrap_values(variables, out.state, final_obs),
                                      0.0),
                    lambda: zero,
                )
            if pending is not None:
                pending = pending.add(t, cut, final_obs, out.state)
        ep_return = carry.ep_return + reward
        transition = Transition(
            obs=carry.obs.astype(network.dtype),
            reset=carry.reset,
            action=action,
            log_prob=log_prob,
            value=out.value,
            reward=reward,
            done=done,
            terminated=terminated,
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
        return new_carry, pending, transition

    def resolve(params, pending: PendingBootstraps, traj: Transition) -> Transition:
        """`traj` with the pending ends' values: one forward over every env's slots."""
        n_envs, slots = pending.step.shape
        flat = lambda x: x.reshape(n_envs * slots, *x.shape[2:])  # noqa: E731
        values = bootstrap_values({"params": params}, jax.tree.map(flat, pending.hidden),
                                  flat(pending.obs)).reshape(n_envs, slots)
        # [T, B, S]: slot s of env b holds step t's end. At most one slot per (t, b), so the
        # sum is that slot's value, exactly.
        held = pending.step[None] == jnp.arange(n_steps)[:, None, None]
        value = jnp.where(held, values[None], 0.0).sum(-1)
        return traj.replace(final_value=jnp.where(held.any(-1), value, traj.final_value))

    def rollout(params, env_params, carry: Carry, key: jax.Array):
        pending = None
        if bootstrap_slots:
            pending = PendingBootstraps.empty(carry.hidden, carry.obs.shape[0],
                                              carry.obs.shape[-1], bootstrap_slots)

        def body(both, xs):
            carry, pending = shard(both)
            t, key = xs
            carry, pending, transition = step(params, env_params, carry, pending, t, key)
            return (carry, pending), transition

        xs = (jnp.arange(n_steps, dtype=jnp.int32), jax.random.split(key, n_steps))
        (carry, pending), traj = jax.lax.scan(body, (carry, pending), xs)
        if bootstrap_slots:
            traj = resolve(params, pending, traj)
        return carry, traj

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

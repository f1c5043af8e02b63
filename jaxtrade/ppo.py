"""The PPO learning rule: GAE, the clipped losses and the two optimizer chains.

Everything here is a pure ``jnp`` function of arrays. Hyperparameters that a
schedule or a population may change (``gamma``, ``gae_lambda``, ``clip_eps``,
``vf_coef``, ``ent_coef``, learning rates, the gradient-norm cap, the dropout rate) may be
traced arrays, so changing them never recompiles. Advantages, losses and metrics are
float32 whatever the network's compute dtype.

The parameter tree is split by its top-level ``value_head`` key: the critic
chain owns the value head, the actor chain owns the rest (for the GRU network:
encoder, GRU, policy head), each with its own gradient clipping and Adam state.

`LearningRule` composes these into the update of one rollout (minibatches of whole
sequences, joint epochs, critic-only epochs); the trainer runs it inside its fused
program, and `benchmarks/throughput.py` counts the FLOPs of the same functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxtrade.rollout import Transition, masked_logits

Params = dict[str, Any]

CRITIC_KEY = "value_head"
_ADV_EPS = 1e-8


def gae(
    rewards: jax.Array,
    values: jax.Array,
    next_values: jax.Array,
    terminated: jax.Array,
    dones: jax.Array,
    gamma: jax.Array | float,
    gae_lambda: jax.Array | float,
) -> tuple[jax.Array, jax.Array]:
    """Generalized advantage estimation, time-major, in float32.

    ``delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t``
    ``A_t = delta_t + gamma * gae_lambda * (1 - dones_t) * A_{t+1}``, ``A_T = 0``.

    ``next_values_t`` is the value of the true successor of step t, taken
    before any auto-reset: a time-limit end (truncated) bootstraps from it, a
    ruin (terminated) zeroes it, and either one (``dones``) stops the
    recursion so that advantages never leak across episodes.

    Args:
        rewards: [T, B] reward of step t.
        values: [T, B] V(s_t).
        next_values: [T, B] V(s_{t+1}) of the successor observation of step t.
        terminated: [T, B] bool, step t ended the episode in a terminal state.
        dones: [T, B] bool, ``terminated | truncated`` at step t.
        gamma: scalar discount (may be traced).
        gae_lambda: scalar GAE lambda (may be traced).

    Returns:
        advantages [T, B] float32, returns [T, B] float32 (= advantages + values).
    """
    f32 = jnp.float32
    values = values.astype(f32)
    gamma = jnp.asarray(gamma, f32)
    gae_lambda = jnp.asarray(gae_lambda, f32)
    not_terminal = 1.0 - terminated.astype(f32)
    deltas = rewards.astype(f32) + gamma * not_terminal * next_values.astype(f32) - values
    decay = gamma * gae_lambda * (1.0 - dones.astype(f32))

    def step(next_adv: jax.Array, xs: tuple[jax.Array, jax.Array]):
        delta, k = xs
        adv = delta + k * next_adv
        return adv, adv

    _, advantages = jax.lax.scan(step, jnp.zeros_like(deltas[0]), (deltas, decay), reverse=True)
    return advantages, advantages + values


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    *,
    clip_eps: jax.Array | float,
    clip_value: jax.Array | bool,
) -> jax.Array:
    """Mean of ``0.5 * (v - R)^2``, optionally PPO-clipped around ``old_values``.

    With clipping, each element takes the larger of the unclipped loss and the
    loss of ``old_values + clip(v - old_values, -clip_eps, clip_eps)``, so the
    critic gains nothing by moving further than ``clip_eps`` in one update.

    Args:
        values: [...] current predictions.
        old_values: [...] predictions at rollout time.
        returns: [...] targets.
        clip_eps: scalar (may be traced).
        clip_value: bool (Python or traced) switching the clipping on.

    Returns:
        Scalar float32 loss.
    """
    f32 = jnp.float32
    values, old_values, returns = (a.astype(f32) for a in (values, old_values, returns))
    unclipped = jnp.square(values - returns)
    clipped_values = old_values + jnp.clip(values - old_values, -clip_eps, clip_eps)
    clipped = jnp.maximum(unclipped, jnp.square(clipped_values - returns))
    return 0.5 * jnp.mean(jnp.where(clip_value, clipped, unclipped))


def ppo_loss(
    logits: jax.Array,
    values: jax.Array,
    actions: jax.Array,
    old_log_probs: jax.Array,
    old_values: jax.Array,
    advantages: jax.Array,
    returns: jax.Array,
    *,
    clip_eps: jax.Array | float,
    vf_coef: jax.Array | float,
    ent_coef: jax.Array | float,
    clip_value: jax.Array | bool,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped-surrogate PPO loss for a discrete policy over one minibatch.

    Advantages are normalised over the whole minibatch (mean, population std,
    ``+1e-8``). ``total = policy_loss + vf_coef * value_loss - ent_coef * entropy``.

    Args:
        logits: [..., A] current policy logits (any leading shape, e.g. [T, B]).
        values: [...] current value predictions.
        actions: [...] int actions taken at rollout time.
        old_log_probs: [...] log-probs of ``actions`` at rollout time.
        old_values: [...] values at rollout time (for value clipping).
        advantages: [...] GAE advantages (unnormalised).
        returns: [...] value targets.
        clip_eps: ratio clip range, also the value clip range (may be traced).
        vf_coef: value-loss weight (may be traced).
        ent_coef: entropy-bonus weight (may be traced).
        clip_value: whether to clip the value loss (Python or traced bool).
        mask: [..., A] bool, the actions that were valid (None: all); masked actions get
            no probability, so they take no part in the log-softmax or the entropy.

    Returns:
        total_loss (scalar float32) and a dict of scalar float32 metrics:
        ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``, ``clip_frac``.
    """
    f32 = jnp.float32
    log_probs_all = jax.nn.log_softmax(masked_logits(logits.astype(f32), mask), axis=-1)
    log_probs = jnp.take_along_axis(log_probs_all, actions[..., None].astype(jnp.int32), axis=-1)
    log_ratio = log_probs[..., 0] - old_log_probs.astype(f32)
    ratio = jnp.exp(log_ratio)

    adv = advantages.astype(f32)
    adv = (adv - adv.mean()) / (adv.std() + _ADV_EPS)
    clipped_ratio = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    policy_loss = -jnp.mean(jnp.minimum(ratio * adv, clipped_ratio * adv))

    v_loss = value_loss(values, old_values, returns, clip_eps=clip_eps, clip_value=clip_value)
    entropy = -jnp.mean(jnp.sum(jnp.exp(log_probs_all) * log_probs_all, axis=-1))
    total = policy_loss + vf_coef * v_loss - ent_coef * entropy

    metrics = {
        "policy_loss": policy_loss,
        "value_loss": v_loss,
        "entropy": entropy,
        # k3 estimator of KL(old || new): unbiased, non-negative, low variance.
        "approx_kl": jax.lax.stop_gradient(jnp.mean((ratio - 1.0) - log_ratio)),
        "clip_frac": jax.lax.stop_gradient(jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(f32))),
    }
    return total, metrics


def explained_variance(values: jax.Array, returns: jax.Array) -> jax.Array:
    """``1 - Var[R - V] / Var[R]`` over all elements, float32 scalar.

    Returns 0 when the returns are constant (nothing to explain) rather than
    NaN, so that non-finite checks on metrics keep meaning divergence.
    """
    values = values.astype(jnp.float32)
    returns = returns.astype(jnp.float32)
    var_returns = jnp.var(returns)
    safe = jnp.where(var_returns > 0, var_returns, 1.0)
    return jnp.where(var_returns > 0, 1.0 - jnp.var(returns - values) / safe, 0.0)


def split_params(params: Params) -> tuple[Params, Params]:
    """Split a network parameter tree into (actor, critic) subtrees.

    Args:
        params: the network's ``params`` collection, with a top-level ``value_head``
            (the GRU network's: ``encoder``, ``gru``, ``policy_head``, ``value_head``).

    Returns:
        actor (every top-level key but ``value_head``), critic
        (``{"value_head": ...}``).
    """
    if CRITIC_KEY not in params:
        raise KeyError(
            f"split_params expects the network's 'params' collection with a top-level "
            f"'{CRITIC_KEY}' key; got keys {sorted(params)}"
        )
    actor = {k: v for k, v in params.items() if k != CRITIC_KEY}
    return actor, {CRITIC_KEY: params[CRITIC_KEY]}


def merge_params(actor: Params, critic: Params) -> Params:
    """Inverse of ``split_params``."""
    return {**actor, **critic}


def make_optimizers(
    max_grad_norm: float,
    *,
    actor_lr: float = 3e-4,
    critic_lr: float = 9e-4,
    adam_eps: float = 1e-5,
) -> tuple[optax.GradientTransformationExtraArgs, optax.GradientTransformationExtraArgs]:
    """The actor and critic chains: ``clip_by_global_norm -> adam`` each.

    The learning rate and the clip norm are injected float32 hyperparameters in each
    state (see ``set_hyperparams``); the initial values here are only defaults that the
    train state overwrites every iteration. Clipping is per chain: a large critic gradient
    does not shrink the actor's step, and vice versa.

    Args:
        max_grad_norm: initial global-norm clip applied to each chain's gradients.
        actor_lr: initial actor learning rate.
        critic_lr: initial critic learning rate.
        adam_eps: Adam epsilon.

    Returns:
        (actor_tx, critic_tx), to be used on ``split_params``'s two subtrees.
    """

    # A closure rather than partial(): inject_hyperparams would turn every
    # numeric argument of the factory into a runtime hyperparameter.
    def chain(learning_rate: float, max_grad_norm: float) -> optax.GradientTransformation:
        return optax.chain(
            optax.clip_by_global_norm(max_grad_norm),
            optax.adam(learning_rate, eps=adam_eps),
        )

    inject = optax.inject_hyperparams(chain, hyperparam_dtype=jnp.float32)
    return (inject(learning_rate=actor_lr, max_grad_norm=max_grad_norm),
            inject(learning_rate=critic_lr, max_grad_norm=max_grad_norm))


OPT_HYPERPARAMS = ("learning_rate", "max_grad_norm")  # injected in each chain's state


def set_hyperparams(opt_state: optax.OptState, **values: jax.Array | float) -> Any:
    """A copy of ``opt_state`` whose next update uses ``values`` (some of
    ``OPT_HYPERPARAMS``: ``learning_rate``, ``max_grad_norm``).

    Each value is stored as a float32 scalar array, so a jitted update that sets it from a
    traced hyperparameter compiles once for all values.
    """
    unknown = set(values) - set(OPT_HYPERPARAMS)
    if unknown:
        raise ValueError(f"unknown optimizer hyperparameter(s) {sorted(unknown)}; valid: "
                         f"{OPT_HYPERPARAMS}")
    cast = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
    return opt_state._replace(hyperparams={**opt_state.hyperparams, **cast})


def apply_actor_critic_update(
    params: Params,
    grads: Params,
    actor_tx: optax.GradientTransformation,
    critic_tx: optax.GradientTransformation,
    actor_opt_state: optax.OptState,
    critic_opt_state: optax.OptState,
) -> tuple[Params, optax.OptState, optax.OptState]:
    """One step of both chains on a full-tree gradient.

    Args:
        params, grads: full network parameter trees (same structure).
        actor_tx, critic_tx: from ``make_optimizers``.
        actor_opt_state, critic_opt_state: their states (on the split subtrees).

    Returns:
        (new_params, new_actor_opt_state, new_critic_opt_state).
    """
    actor, critic = split_params(params)
    actor_grads, critic_grads = split_params(grads)
    actor_updates, actor_opt_state = actor_tx.update(actor_grads, actor_opt_state, actor)
    critic_updates, critic_opt_state = critic_tx.update(critic_grads, critic_opt_state, critic)
    new_params = merge_params(
        optax.apply_updates(actor, actor_updates), optax.apply_updates(critic, critic_updates)
    )
    return new_params, actor_opt_state, critic_opt_state


def apply_critic_update(
    params: Params,
    critic_grads: Params,
    critic_tx: optax.GradientTransformation,
    critic_opt_state: optax.OptState,
) -> tuple[Params, optax.OptState]:
    """One critic-chain step (critic-only epochs); the actor subtree is untouched.

    Args:
        params: full network parameter tree.
        critic_grads: gradient of the critic subtree, ``{"value_head": ...}``.
        critic_tx, critic_opt_state: the critic chain and its state.

    Returns:
        (new_params, new_critic_opt_state).
    """
    actor, critic = split_params(params)
    updates, critic_opt_state = critic_tx.update(critic_grads, critic_opt_state, critic)
    return merge_params(actor, optax.apply_updates(critic, updates)), critic_opt_state


# ---------------------------------------------------------------------------------------
# Minibatches and epochs: the learning rule the trainer composes and the benchmark counts.


@struct.dataclass
class Batch:
    """A rollout ready for the update (or a minibatch of it: M envs, all T steps)."""

    transition: Transition  # leaves [T, B, ...]
    hidden: Any  # the network's recurrent state before the first step, leaves [B, ...]
    advantages: jax.Array  # [T, B] float32
    returns: jax.Array  # [T, B] float32

    def env_axes(self) -> Batch:
        """The env axis of every leaf: 1 for time-major leaves, 0 for the recurrent state."""
        return Batch(
            transition=jax.tree.map(lambda _: 1, self.transition),
            hidden=jax.tree.map(lambda _: 0, self.hidden),
            advantages=1,
            returns=1,
        )


def minibatch_assignment(key: jax.Array, n_envs: int, n_minibatches: int) -> jax.Array:
    """A random split of the env axis into minibatches: int32 [n_envs // n_minibatches,
    n_minibatches], row c a permutation of 0..n_minibatches-1.

    Env `c * n_minibatches + a[c, m]` goes to minibatch m: each run of n_minibatches
    consecutive envs gives one env to every minibatch. A device holds whole runs (its
    env count is a multiple of n_minibatches), so it builds its part of every minibatch
    from its own envs, and the split does not depend on the device count.
    """
    u = jax.random.uniform(key, (n_envs // n_minibatches, n_minibatches))
    return jnp.argsort(u, axis=1).astype(jnp.int32)


def take_minibatch(tree, assignment: jax.Array, m: jax.Array, axes):
    """Minibatch `m` of `minibatch_assignment` from every leaf of `tree`, whose env axis is
    given by `axes` (an int for every leaf, or a tree of ints shaped like `tree`; static:
    close over it rather than pass it through `jit`)."""
    runs, n_mb = assignment.shape
    pick = assignment[:, m]  # [runs], which env of each run

    def take(x, axis):
        grouped = x.reshape(x.shape[:axis] + (runs, n_mb) + x.shape[axis + 1:])
        idx = pick.reshape((1,) * axis + (runs, 1) + (1,) * (x.ndim - axis - 1))
        idx = jnp.broadcast_to(idx, grouped.shape[:axis + 1] + (1,) + grouped.shape[axis + 2:])
        return jnp.take_along_axis(grouped, idx, axis=axis + 1).squeeze(axis + 1)

    if isinstance(axes, int):
        return jax.tree.map(lambda x: take(x, axes), tree)
    return jax.tree.map(take, tree, axes)


def _no_shard(tree, axes):
    return tree


@dataclasses.dataclass(frozen=True)
class LearningRule:
    """PPO's update of one rollout: `ppo_epochs` x `n_minibatches` clipped-surrogate steps of
    both optimizer chains, then per minibatch `critic_epochs` value-head-only steps on the
    trunk features the updated network computes once.

    Minibatches keep whole sequences: the network re-runs each from its stored initial
    recurrent state. `shard(tree, axes)` pins a tree's env axes to their devices
    (`jaxtrade.parallel.constrain`); the default leaves placement to XLA.
    Hyperparameters come in `hp` (any object with float32 `clip`, `vf_coef`, `ent_coef`,
    and `dropout`, the rate of the network's dropout sites when it has them), so changing
    them never recompiles.
    """

    network: Any
    actor_tx: optax.GradientTransformation
    critic_tx: optax.GradientTransformation
    n_envs: int
    n_minibatches: int
    ppo_epochs: int
    critic_epochs: int
    dropout: bool  # the network has dropout sites: the update trains with them on
    clip_value: bool
    shard: Callable = _no_shard

    def minibatch(self, batch: Batch, assignment: jax.Array, m: jax.Array) -> Batch:
        axes = batch.env_axes()
        return self.shard(take_minibatch(batch, assignment, m, axes), axes)

    def assignment(self, key: jax.Array) -> jax.Array:
        return self.shard(minibatch_assignment(key, self.n_envs, self.n_minibatches), 0)

    def unroll_train(self, params, mb: Batch, hp, key: jax.Array):
        """Logits and values of a minibatch with dropout on at rate `hp.dropout` (mask
        fixed by `key`)."""
        tr = mb.transition
        # A network without dropout sites is called as before the rate was an argument.
        rate = {"dropout_rate": hp.dropout} if self.dropout else {}
        out = self.network.apply(
            {"params": params}, mb.hidden, tr.obs, tr.reset, deterministic=False,
            rngs={"dropout": key}, method="unroll", **rate,
        )
        return out.logits, out.value

    def loss(self, params, old_params, mb: Batch, hp, key: jax.Array):
        """`ppo_loss` of minibatch `mb` -> (loss, metrics)."""
        tr = mb.transition
        logits, values = self.unroll_train(params, mb, hp, key)
        old_log_probs = tr.log_prob
        if self.dropout:
            # Rollouts act without dropout, updates train with it. Comparing a dropped-out
            # new policy with the dropout-free old one would make the ratio noisy before
            # any update (clip fractions near 0.5); instead the old policy is re-evaluated
            # under the same dropout mask, so the ratio measures parameter change only.
            old_logits, _ = self.unroll_train(old_params, mb, hp, key)
            old_logits = masked_logits(jax.lax.stop_gradient(old_logits), tr.mask)
            old_log_probs = jnp.take_along_axis(
                jax.nn.log_softmax(old_logits), tr.action[..., None], -1
            )[..., 0]
        return ppo_loss(
            logits, values, tr.action, old_log_probs, tr.value, mb.advantages, mb.returns,
            clip_eps=hp.clip, vf_coef=hp.vf_coef, ent_coef=hp.ent_coef,
            clip_value=self.clip_value, mask=tr.mask,
        )

    def actor_critic_step(self, params, old_params, actor_opt, critic_opt, mb: Batch, hp,
                          key: jax.Array):
        """One gradient step of both chains on `mb` -> ((params, opts...), metrics)."""
        grads, metrics = jax.grad(self.loss, has_aux=True)(params, old_params, mb, hp, key)
        actor_grads, critic_grads = split_params(grads)
        metrics["actor_grad_norm"] = optax.tree.norm(actor_grads)
        metrics["critic_grad_norm"] = optax.tree.norm(critic_grads)
        params, actor_opt, critic_opt = apply_actor_critic_update(
            params, grads, self.actor_tx, self.critic_tx, actor_opt, critic_opt
        )
        return (params, actor_opt, critic_opt), metrics

    def joint_epochs(self, params, actor_opt, critic_opt, batch: Batch, hp, key: jax.Array):
        """`ppo_epochs` x `n_minibatches` steps -> ((params, actor_opt, critic_opt), metrics
        averaged over the steps)."""
        old_params = params

        def minibatch(assignment, carry, xs):
            params, actor_opt, critic_opt = carry
            m, key = xs
            mb = self.minibatch(batch, assignment, m)
            return self.actor_critic_step(params, old_params, actor_opt, critic_opt, mb, hp, key)

        def epoch(carry, key):
            key_perm, key_drop = jax.random.split(key)
            assignment = self.assignment(key_perm)
            return jax.lax.scan(
                lambda c, xs: minibatch(assignment, c, xs),
                carry,
                (jnp.arange(self.n_minibatches), jax.random.split(key_drop, self.n_minibatches)),
            )

        carry, metrics = jax.lax.scan(
            epoch, (params, actor_opt, critic_opt), jax.random.split(key, self.ppo_epochs)
        )
        return carry, jax.tree.map(jnp.mean, metrics)

    def trunk(self, params, mb: Batch) -> jax.Array:
        """The trunk features of minibatch `mb` [T, M, trunk_dim], no gradient."""
        tr = mb.transition
        out = self.network.apply({"params": params}, mb.hidden, tr.obs, tr.reset,
                                 method="unroll")
        return jax.lax.stop_gradient(out.trunk)

    def critic_loss(self, critic, actor, trunk: jax.Array, tr: Transition, returns):
        values = self.network.apply({"params": merge_params(actor, critic)}, trunk,
                                    method="value_from_trunk")
        return value_loss(values, tr.value, returns, clip_eps=0.0, clip_value=False)

    def critic_step(self, params, critic_opt, trunk: jax.Array, tr: Transition, returns):
        """One value-head step on cached trunk features -> ((params, critic_opt), loss)."""
        actor, critic = split_params(params)
        loss, grads = jax.value_and_grad(self.critic_loss)(critic, actor, trunk, tr, returns)
        return apply_critic_update(params, grads, self.critic_tx, critic_opt), loss

    def critic_only_epochs(self, params, critic_opt, batch: Batch, key: jax.Array):
        """Per minibatch: trunk features once, then `critic_epochs` value-head steps ->
        (params, critic_opt, loss before the first step, loss after the last), the losses
        averaged over minibatches."""
        assignment = self.assignment(key)

        def minibatch(carry, m):
            mb = self.minibatch(batch, assignment, m)
            trunk = self.trunk(carry[0], mb)
            return jax.lax.scan(
                lambda c, _: self.critic_step(*c, trunk, mb.transition, mb.returns),
                carry, None, length=self.critic_epochs,
            )

        (params, critic_opt), losses = jax.lax.scan(
            minibatch, (params, critic_opt), jnp.arange(self.n_minibatches)
        )
        return params, critic_opt, losses[:, 0].mean(), losses[:, -1].mean()

    def update(self, params, actor_opt, critic_opt, batch: Batch, hp, key_epochs: jax.Array,
               key_critic: jax.Array):
        """The whole update of one rollout -> (params, actor_opt, critic_opt, metrics)."""
        (params, actor_opt, critic_opt), metrics = self.joint_epochs(
            params, actor_opt, critic_opt, batch, hp, key_epochs
        )
        if self.critic_epochs > 0:
            params, critic_opt, before, after = self.critic_only_epochs(
                params, critic_opt, batch, key_critic
            )
            metrics["critic_loss_before"] = before
            metrics["critic_loss_after"] = after
        return params, actor_opt, critic_opt, metrics

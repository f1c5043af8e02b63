"""The PPO learning rule: GAE, the clipped losses and the two optimizer chains.

Everything here is a pure ``jnp`` function of arrays. Hyperparameters that a
schedule or a population may change (``gamma``, ``gae_lambda``, ``clip_eps``,
``vf_coef``, ``ent_coef``, learning rates) may be traced arrays, so changing
them never recompiles. Advantages, losses and metrics are float32 whatever
the network's compute dtype.

The parameter tree is split by its top-level ``value_head`` key: the critic
chain owns the value head, the actor chain owns the rest (encoder, GRU,
policy head), each with its own gradient clipping and Adam state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

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

    Returns:
        total_loss (scalar float32) and a dict of scalar float32 metrics:
        ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``, ``clip_frac``.
    """
    f32 = jnp.float32
    log_probs_all = jax.nn.log_softmax(logits.astype(f32), axis=-1)
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
        params: the network's ``params`` collection, with top-level keys
            ``encoder``, ``gru``, ``policy_head``, ``value_head``.

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

    The learning rate is an injected float32 hyperparameter in each state (see
    ``set_learning_rate``); the initial values here are only defaults that
    the train state overwrites. Clipping is per chain: a large critic gradient
    does not shrink the actor's step, and vice versa.

    Args:
        max_grad_norm: global-norm clip applied to each chain's gradients.
        actor_lr: initial actor learning rate.
        critic_lr: initial critic learning rate.
        adam_eps: Adam epsilon.

    Returns:
        (actor_tx, critic_tx), to be used on ``split_params``'s two subtrees.
    """

    # A closure rather than partial(): inject_hyperparams would turn every
    # numeric argument of the factory into a runtime hyperparameter.
    def chain(learning_rate: float) -> optax.GradientTransformation:
        return optax.chain(
            optax.clip_by_global_norm(max_grad_norm),
            optax.adam(learning_rate, eps=adam_eps),
        )

    inject = optax.inject_hyperparams(chain, hyperparam_dtype=jnp.float32)
    return inject(learning_rate=actor_lr), inject(learning_rate=critic_lr)


def get_learning_rate(opt_state: optax.OptState) -> jax.Array:
    """The learning rate held in an ``inject_hyperparams`` state, float32 scalar."""
    return opt_state.hyperparams["learning_rate"]


def set_learning_rate(opt_state: optax.OptState, learning_rate: jax.Array | float) -> Any:
    """A copy of ``opt_state`` whose next update uses ``learning_rate``.

    The value is stored as a float32 scalar array, so a jitted update that
    sets it from a traced hyperparameter compiles once for all values.
    """
    lr = jnp.asarray(learning_rate, jnp.float32)
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})


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

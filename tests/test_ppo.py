"""Tests for jaxtrade/ppo.py: GAE, losses (action masks included), the two optimizer chains,
runtime learning rates, minibatches of a `Batch`."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrade import ppo
from jaxtrade.networks import GRUActorCritic, init_params
from jaxtrade.rollout import Transition

# --------------------------------------------------------------------------- GAE

_gae = jax.jit(ppo.gae)


def _np_gae(rewards, values, next_values, terminated, dones, gamma, lam):
    """Reference: the textbook backward loop, in float64."""
    advantages = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[1])
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * (1.0 - terminated[t]) * next_values[t] - values[t]
        running = delta + gamma * lam * (1.0 - dones[t]) * running
        advantages[t] = running
    return advantages, advantages + values


def _random_episodes(seed: int, t: int = 7, b: int = 3):
    """Random [T, B] rollout data with both kinds of episode ends."""
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(t, b))
    values = rng.normal(size=(t, b))
    terminated = rng.random((t, b)) < 0.15
    truncated = ~terminated & (rng.random((t, b)) < 0.15)
    dones = terminated | truncated
    # The successor of a non-final step is the next row's observation; at an
    # episode end (and after the last step) it is a separate final observation.
    next_values = np.concatenate([values[1:], rng.normal(size=(1, b))])
    next_values = np.where(dones, rng.normal(size=(t, b)), next_values)
    return rewards, values, next_values, terminated, dones


def _as_f32(*arrays):
    return [jnp.asarray(a, jnp.float32) if a.dtype != bool else jnp.asarray(a) for a in arrays]


def test_gae_hand_example():
    gamma, lam = 0.5, 0.5  # gamma * lambda = 0.25
    # env 0 is truncated at t=1 (bootstraps from the final observation's value 4);
    # env 1 is terminated at t=2 (its next value, 100, must be ignored).
    rewards = np.array([[1, 0], [2, 1], [0, 3], [1, 2]], np.float32)
    values = np.array([[1, 2], [2, 1], [1, 2], [3, 4]], np.float32)
    next_values = np.array([[2, 1], [4, 2], [3, 100], [5, 6]], np.float32)
    terminated = np.array([[0, 0], [0, 0], [0, 1], [0, 0]], bool)
    dones = np.array([[0, 0], [1, 0], [0, 1], [0, 0]], bool)

    # env 0: deltas 1 + .5*2 - 1 = 1, 2 + .5*4 - 2 = 2, 0 + .5*3 - 1 = .5, 1 + .5*5 - 3 = .5
    #        A_3 = .5, A_2 = .5 + .25*.5 = .625, A_1 = 2 (cut), A_0 = 1 + .25*2 = 1.5
    # env 1: deltas 0 + .5*1 - 2 = -1.5, 1 + .5*2 - 1 = 1, 3 - 2 = 1, 2 + .5*6 - 4 = 1
    #        A_3 = 1, A_2 = 1 (cut), A_1 = 1 + .25*1 = 1.25, A_0 = -1.5 + .25*1.25 = -1.1875
    expected = np.array([[1.5, -1.1875], [2.0, 1.25], [0.625, 1.0], [0.5, 1.0]])

    adv, ret = _gae(*_as_f32(rewards, values, next_values, terminated, dones), gamma, lam)
    assert adv.dtype == ret.dtype == jnp.float32
    np.testing.assert_allclose(adv, expected, rtol=1e-6)
    np.testing.assert_allclose(ret, expected + values, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_gae_matches_numpy_loop(seed):
    data = _random_episodes(seed)
    gamma, lam = 0.97, 0.9
    adv, ret = _gae(*_as_f32(*data), gamma, lam)
    ref_adv, ref_ret = _np_gae(*data, gamma, lam)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)


def test_gae_lambda_zero_is_one_step_td():
    rewards, values, next_values, terminated, dones = data = _random_episodes(2)
    for gamma in (0.0, 0.9):
        adv, _ = _gae(*_as_f32(*data), gamma, 0.0)
        td = rewards + gamma * (1.0 - terminated) * next_values - values
        np.testing.assert_allclose(adv, td, rtol=1e-5, atol=1e-6)
    # gamma = 0: the advantage is the immediate reward minus the baseline.
    adv, _ = _gae(*_as_f32(*data), 0.0, 0.7)
    np.testing.assert_allclose(adv, rewards - values, rtol=1e-5, atol=1e-6)


def test_gae_lambda_one_is_discounted_return_minus_values():
    rewards, values, next_values, terminated, dones = data = _random_episodes(3)
    gamma = 0.9
    # Monte Carlo return, bootstrapped only where the data stops: at a
    # truncation (value of the final observation) and after the last step.
    returns = np.zeros_like(rewards)
    for t in reversed(range(len(rewards))):
        tail = next_values[t] if t == len(rewards) - 1 else np.where(
            dones[t], next_values[t], returns[t + 1]
        )
        returns[t] = rewards[t] + gamma * (1.0 - terminated[t]) * tail
    adv, ret = _gae(*_as_f32(*data), gamma, 1.0)
    np.testing.assert_allclose(adv, returns - values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, returns, rtol=1e-5, atol=1e-5)


def test_gae_gamma_and_lambda_are_traced():
    gae = jax.jit(chex.assert_max_traces(ppo.gae, n=1))
    data = _as_f32(*_random_episodes(4))
    results = [gae(*data, jnp.float32(g), jnp.float32(lam)) for g, lam in [(0.9, 0.8), (0.5, 0.3)]]
    assert not np.allclose(results[0][0], results[1][0])


# ------------------------------------------------------------------- losses


def test_value_loss_hand_example():
    values = jnp.array([1.0, 2.0, 0.0])
    old_values = jnp.array([0.9, 1.0, 0.5])
    returns = jnp.array([1.0, 3.0, -1.0])
    # unclipped: (0, 1, 1); clipped values (1.0, 1.2, 0.3) give (0, 3.24, 1.69).
    unclipped = ppo.value_loss(values, old_values, returns, clip_eps=0.2, clip_value=False)
    clipped = ppo.value_loss(values, old_values, returns, clip_eps=0.2, clip_value=True)
    np.testing.assert_allclose(unclipped, 0.5 * 2.0 / 3.0, rtol=1e-6)
    np.testing.assert_allclose(clipped, 0.5 * (3.24 + 1.69) / 3.0, rtol=1e-6)


def test_ppo_loss_hand_example():
    # Uniform policy over 3 actions; both samples were 1.5x less likely at rollout.
    logits = jnp.zeros((2, 3))
    old_log_probs = jnp.full((2,), -np.log(3.0) - np.log(1.5))
    advantages = jnp.array([1.0, -1.0])  # normalised: (+1, -1)
    zeros = jnp.zeros(2)
    total, m = jax.jit(ppo.ppo_loss, static_argnames="clip_value")(
        logits, zeros, jnp.array([0, 2]), old_log_probs, zeros, advantages, zeros,
        clip_eps=0.2, vf_coef=0.5, ent_coef=0.1, clip_value=False,
    )
    # A>0: min(1.5, 1.2) = 1.2; A<0: min(-1.5, -1.2) = -1.5; loss = -(1.2 - 1.5) / 2.
    np.testing.assert_allclose(m["policy_loss"], 0.15, rtol=1e-6)
    np.testing.assert_allclose(m["entropy"], np.log(3.0), rtol=1e-6)
    np.testing.assert_allclose(m["approx_kl"], 0.5 - np.log(1.5), rtol=1e-5)
    np.testing.assert_allclose(m["clip_frac"], 1.0)
    np.testing.assert_allclose(m["value_loss"], 0.0)
    np.testing.assert_allclose(total, 0.15 - 0.1 * np.log(3.0), rtol=1e-6)


# Ratios inside and outside [0.8, 1.2] with both advantage signs. Samples 1 and
# 2 are clipped on the side the min selects (no gradient); samples 4 and 5 are
# outside the range on the side where the unclipped term is the smaller one.
RATIOS = np.array([1.05, 1.5, 0.6, 0.95, 1.4, 0.5])
ADVANTAGES = np.array([1.0, 2.0, -1.0, -2.0, -0.5, 0.5])  # mean 0: normalising keeps signs
CLIP_EPS, VF_COEF, ENT_COEF = 0.2, 0.5, 0.01


def _minibatch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    actions = np.array([0, 1, 2, 0, 1, 2])
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    old_log_probs = log_probs[np.arange(6), actions] - np.log(RATIOS)
    values = np.array([0.0, 1.0, 2.0, -1.0, 0.5, 3.0])
    old_values = np.array([0.1, 0.5, 2.5, -1.05, 0.0, 3.0])
    returns = np.array([1.0, 2.0, 1.0, -2.0, 1.0, 2.0])
    return dict(
        logits=logits, values=values, actions=actions, old_log_probs=old_log_probs,
        old_values=old_values, advantages=ADVANTAGES, returns=returns,
    )


def _np_ppo_loss(b, clip_value):
    """Reference in float64, written from the PPO paper's formulas."""
    logits = b["logits"].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    log_prob = log_probs[np.arange(len(logits)), b["actions"]]
    ratio = np.exp(log_prob - b["old_log_probs"])
    adv = (b["advantages"] - b["advantages"].mean()) / (b["advantages"].std() + 1e-8)
    policy = -np.mean(np.minimum(ratio * adv, np.clip(ratio, 1 - CLIP_EPS, 1 + CLIP_EPS) * adv))
    v, v_old, ret = b["values"], b["old_values"], b["returns"]
    sq = (v - ret) ** 2
    if clip_value:
        sq = np.maximum(sq, (v_old + np.clip(v - v_old, -CLIP_EPS, CLIP_EPS) - ret) ** 2)
    value = 0.5 * sq.mean()
    entropy = -np.mean(np.sum(np.exp(log_probs) * log_probs, -1))
    metrics = dict(
        policy_loss=policy, value_loss=value, entropy=entropy,
        approx_kl=np.mean(ratio - 1 - np.log(ratio)),
        clip_frac=np.mean(np.abs(ratio - 1) > CLIP_EPS),
    )
    return policy + VF_COEF * value - ENT_COEF * entropy, metrics


# Every hyperparameter (clip_value included) is a traced argument, so one
# compile serves all the calls below.
_ppo_loss = jax.jit(chex.assert_max_traces(ppo.ppo_loss, n=1))


def _call_loss(b, clip_value, clip_eps=CLIP_EPS, vf_coef=VF_COEF, ent_coef=ENT_COEF):
    args = [jnp.asarray(b[k]) for k in (
        "logits", "values", "actions", "old_log_probs", "old_values", "advantages", "returns"
    )]
    args = [a.astype(jnp.float32) if a.dtype == jnp.float64 else a for a in args]
    return _ppo_loss(
        *args, clip_eps=jnp.float32(clip_eps), vf_coef=jnp.float32(vf_coef),
        ent_coef=jnp.float32(ent_coef), clip_value=jnp.bool_(clip_value),
    )


@pytest.mark.parametrize("clip_value", [False, True])
def test_ppo_loss_matches_numpy(clip_value):
    b = _minibatch()
    total, metrics = _call_loss(b, clip_value)
    ref_total, ref_metrics = _np_ppo_loss(b, clip_value)
    np.testing.assert_allclose(total, ref_total, rtol=1e-5)
    assert set(metrics) == set(ref_metrics)
    for k, v in ref_metrics.items():
        assert metrics[k].dtype == jnp.float32
        np.testing.assert_allclose(metrics[k], v, rtol=1e-5, atol=1e-7, err_msg=k)
    np.testing.assert_allclose(metrics["clip_frac"], 4 / 6)


def test_value_clipping_changes_the_loss():
    b = _minibatch()
    clipped, unclipped = (_call_loss(b, c)[1]["value_loss"] for c in (True, False))
    assert not np.isclose(clipped, unclipped)


def test_ppo_loss_coefficients_are_traced():
    b = _minibatch()
    base, m = _call_loss(b, False)
    shifted, _ = _call_loss(b, False, vf_coef=VF_COEF + 1.0, ent_coef=ENT_COEF + 1.0)
    np.testing.assert_allclose(shifted - base, m["value_loss"] - m["entropy"], rtol=1e-5)


def _loss_at(b, logits, mask=None):
    """`ppo.ppo_loss` of minibatch `b` with `logits` in place of its own (to differentiate)."""
    return ppo.ppo_loss(
        logits, b["values"], b["actions"], b["old_log_probs"], b["old_values"],
        b["advantages"], b["returns"], clip_eps=CLIP_EPS, vf_coef=VF_COEF,
        ent_coef=ENT_COEF, clip_value=False, mask=mask,
    )


def test_clipped_samples_get_no_policy_gradient():
    b = _minibatch()

    def policy_loss(logits):
        return _loss_at(b, logits)[1]["policy_loss"]

    grad = np.asarray(jax.jit(jax.grad(policy_loss))(jnp.asarray(b["logits"])))
    per_sample = np.abs(grad).sum(-1)
    np.testing.assert_array_equal(per_sample[[1, 2]], 0.0)
    assert (per_sample[[0, 3, 4, 5]] > 1e-3).all()


# Actions 2 of sample 0 and 0 of samples 3 and 5 were invalid (the taken ones are all valid).
MASK = np.ones((6, 3), bool)
MASK[0, 2] = MASK[3, 1] = MASK[5, 0] = MASK[5, 1] = False


def _np_masked_policy(b, mask):
    """The reference's log-softmax and entropy over the valid actions only, float64."""
    logits = np.where(mask, b["logits"].astype(np.float64), -np.inf)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    log_prob = log_probs[np.arange(len(logits)), b["actions"]]
    entropy = -np.mean(np.sum(np.exp(log_probs) * np.where(mask, log_probs, 0.0), -1))
    return log_prob, entropy


def _masked_loss(b, mask):
    return jax.jit(ppo.ppo_loss, static_argnames="clip_value")(
        *(jnp.asarray(b[k], jnp.float32 if b[k].dtype == np.float64 else None) for k in (
            "logits", "values", "actions", "old_log_probs", "old_values", "advantages",
            "returns")),
        clip_eps=CLIP_EPS, vf_coef=VF_COEF, ent_coef=ENT_COEF, clip_value=False,
        mask=None if mask is None else jnp.asarray(mask),
    )


def test_ppo_loss_masks_invalid_actions():
    b = _minibatch()
    assert MASK[np.arange(6), b["actions"]].all()
    total, m = _masked_loss(b, MASK)
    log_prob, entropy = _np_masked_policy(b, MASK)
    ratio = np.exp(log_prob - b["old_log_probs"])
    adv = (b["advantages"] - b["advantages"].mean()) / (b["advantages"].std() + 1e-8)
    policy = -np.mean(np.minimum(ratio * adv, np.clip(ratio, 1 - CLIP_EPS, 1 + CLIP_EPS) * adv))
    np.testing.assert_allclose(m["policy_loss"], policy, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(m["entropy"], entropy, rtol=1e-5)
    np.testing.assert_allclose(m["approx_kl"], np.mean(ratio - 1 - np.log(ratio)), rtol=1e-5)
    _, ref = _np_ppo_loss(b, False)  # the value loss does not depend on the mask
    np.testing.assert_allclose(m["value_loss"], ref["value_loss"], rtol=1e-5)
    np.testing.assert_allclose(total, policy + VF_COEF * ref["value_loss"] - ENT_COEF * entropy,
                               rtol=1e-5)
    assert np.isfinite(float(total))
    # Removing probability from the invalid actions changes the policy terms...
    _, unmasked = _masked_loss(b, None)
    assert not np.isclose(m["entropy"], unmasked["entropy"])
    # ...and a mask of all-valid actions is no mask at all.
    _, all_valid = _masked_loss(b, np.ones((6, 3), bool))
    for k in ("policy_loss", "entropy", "approx_kl", "value_loss"):
        np.testing.assert_allclose(all_valid[k], unmasked[k], rtol=1e-6, err_msg=k)


def test_masked_logits_get_no_gradient():
    b = _minibatch()

    def loss(logits):
        return _loss_at(b, logits, jnp.asarray(MASK))[0]

    grad = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(b["logits"])))
    assert np.isfinite(grad).all()
    np.testing.assert_array_equal(grad[~MASK], 0.0)
    assert (np.abs(grad[MASK]) > 0).sum() > MASK.sum() // 2


def test_explained_variance():
    rng = np.random.default_rng(5)
    returns = rng.normal(size=(4, 3)).astype(np.float32)
    values = (returns + 0.5 * rng.normal(size=(4, 3))).astype(np.float32)
    ev = ppo.explained_variance(jnp.asarray(values), jnp.asarray(returns))
    np.testing.assert_allclose(ev, 1 - np.var(returns - values) / np.var(returns), rtol=1e-5)
    np.testing.assert_allclose(ppo.explained_variance(returns, returns), 1.0)
    np.testing.assert_allclose(
        ppo.explained_variance(jnp.full_like(returns, returns.mean()), returns), 0.0, atol=1e-6
    )
    assert ppo.explained_variance(jnp.zeros(4), jnp.ones(4)) == 0.0  # constant returns


# ---------------------------------------------------------- optimizer chains

T, B, D, H, A = 4, 2, 3, 8, 3
ACTOR_TX, CRITIC_TX = ppo.make_optimizers(1.0)
_joint_update = jax.jit(
    lambda params, grads, actor_state, critic_state: ppo.apply_actor_critic_update(
        params, grads, ACTOR_TX, CRITIC_TX, actor_state, critic_state
    )
)


@pytest.fixture(scope="module")
def net():
    model = GRUActorCritic(D, A, hidden_dim=H, n_gru_layers=2, dropout=0.1)
    # rbg keys compile several times faster than threefry on CPU; irrelevant here.
    params = jax.jit(lambda key: init_params(model, key))(jax.random.key(0, impl="rbg"))
    rng = np.random.default_rng(1)
    batch = dict(
        obs=jnp.asarray(rng.normal(size=(T, B, D)), jnp.float32),
        reset=jnp.zeros((T, B), bool).at[0].set(True),
        actions=jnp.asarray(rng.integers(0, A, size=(T, B))),
        old_log_probs=jnp.full((T, B), -np.log(A), jnp.float32),
        old_values=jnp.zeros((T, B), jnp.float32),
        advantages=jnp.asarray(rng.normal(size=(T, B)), jnp.float32),
        returns=jnp.asarray(rng.normal(size=(T, B)), jnp.float32),
    )

    def loss_fn(params, vf_coef):
        out = model.apply(
            {"params": params}, model.initial_state(B), batch["obs"], batch["reset"],
            method="unroll",
        )
        total, _ = ppo.ppo_loss(
            out.logits, out.value, batch["actions"], batch["old_log_probs"], batch["old_values"],
            batch["advantages"], batch["returns"], clip_eps=0.2, vf_coef=vf_coef,
            ent_coef=0.01, clip_value=True,
        )
        return total

    def trunk_fn(params):
        return model.apply(
            {"params": params}, model.initial_state(B), batch["obs"], batch["reset"],
            method="unroll",
        ).trunk

    def critic_loss_fn(critic, actor, trunk):
        values = model.apply(
            {"params": ppo.merge_params(actor, critic)}, trunk,
            method="value_from_trunk",
        )
        return ppo.value_loss(
            values, batch["old_values"], batch["returns"], clip_eps=0.2, clip_value=False
        )

    return dict(
        params=params,
        grad=jax.jit(jax.grad(loss_fn)),
        trunk=jax.jit(trunk_fn),
        critic_grad=jax.jit(jax.grad(critic_loss_fn)),
    )


_tree_norm = jax.jit(optax.tree.norm)  # one program per tree, not an op per leaf shape


def _norm(tree) -> float:
    return float(_tree_norm(tree))


def test_split_and_merge(net):
    params = net["params"]
    actor, critic = ppo.split_params(params)
    assert set(actor) == {"encoder", "gru", "policy_head"}
    assert set(critic) == {"value_head"}
    chex.assert_trees_all_equal(ppo.merge_params(actor, critic), params)
    with pytest.raises(KeyError, match="value_head"):
        ppo.split_params({"params": params})  # the variables dict, not its params


def test_total_loss_gradients_reach_actor_and_critic(net):
    grads = net["grad"](net["params"], jnp.float32(0.5))
    for key in ("encoder", "gru", "policy_head", "value_head"):
        assert _norm(grads[key]) > 0, key
    # Without the value term the critic gets nothing: the wiring is not accidental.
    grads = net["grad"](net["params"], jnp.float32(0.0))
    assert _norm(grads["value_head"]) == 0.0
    assert _norm(grads["policy_head"]) > 0


def test_joint_update_moves_both_chains(net):
    params = net["params"]
    actor, critic = ppo.split_params(params)
    grads = net["grad"](params, jnp.float32(0.5))
    new_params, actor_state, critic_state = _joint_update(
        params, grads, ACTOR_TX.init(actor), CRITIC_TX.init(critic)
    )
    for key in ("encoder", "gru", "policy_head", "value_head"):
        assert _norm(jax.tree.map(jnp.subtract, new_params[key], params[key])) > 0, key
    assert int(actor_state.count) == int(critic_state.count) == 1


def test_critic_only_update_changes_only_the_value_head(net):
    params = net["params"]
    actor, critic = ppo.split_params(params)
    trunk = net["trunk"](params)  # cached features, as in the critic-only epochs
    critic_grads = net["critic_grad"](critic, actor, trunk)
    new_params, _ = jax.jit(ppo.apply_critic_update, static_argnums=2)(
        params, critic_grads, CRITIC_TX, CRITIC_TX.init(critic)
    )
    new_actor, new_critic = ppo.split_params(new_params)
    chex.assert_trees_all_equal(new_actor, actor)
    for path, old, new in zip(
        jax.tree_util.tree_leaves_with_path(critic), jax.tree.leaves(critic),
        jax.tree.leaves(new_critic), strict=True,
    ):
        assert not np.array_equal(old, new), jax.tree_util.keystr(path[0])


def test_clip_by_global_norm_is_per_chain(net):
    params = net["params"]
    actor, critic = ppo.split_params(params)
    big = jax.tree.map(lambda p: jnp.full_like(p, 10.0), actor)  # norm >> 1: clipped
    small = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), critic)  # norm < 1: untouched
    assert _norm(small) < 1.0 < _norm(big)
    _, actor_state, critic_state = _joint_update(
        params, ppo.merge_params(big, small), ACTOR_TX.init(actor), CRITIC_TX.init(critic)
    )
    # Adam's first moment after one step is (1 - b1) * (clipped gradient). One
    # clip over the whole tree would have shrunk the critic's gradient too.
    np.testing.assert_allclose(_norm(optax.tree_utils.tree_get(actor_state, "mu")), 0.1, rtol=1e-5)
    chex.assert_trees_all_close(
        optax.tree_utils.tree_get(critic_state, "mu"),
        jax.tree.map(lambda g: 0.1 * g, small), rtol=1e-6,
    )


def test_learning_rate_and_clip_norm_change_without_recompiling():
    actor_tx, critic_tx = ppo.make_optimizers(1.0, actor_lr=3e-4, critic_lr=9e-4)
    params = {"w": jnp.zeros(3)}
    grads = {"w": jnp.array([1.0, -2.0, 3.0])}  # norm sqrt(14) = 3.74
    state = actor_tx.init(params)
    lr = state.hyperparams["learning_rate"]
    assert lr.dtype == jnp.float32 and np.isclose(lr, 3e-4)
    assert np.isclose(critic_tx.init(params).hyperparams["learning_rate"], 9e-4)
    assert state.hyperparams["max_grad_norm"].dtype == jnp.float32
    assert np.isclose(state.hyperparams["max_grad_norm"], 1.0)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state, lr, clip):
        state = ppo.set_hyperparams(state, learning_rate=lr, max_grad_norm=clip)
        updates, state = actor_tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for value, clip in ((1e-3, 0.5), (1e-2, 2.0), (1e-2, 10.0)):
        new_params, new_state = step(params, state, jnp.float32(value), jnp.float32(clip))
        assert np.isclose(new_state.hyperparams["learning_rate"], value)
        assert np.isclose(new_state.hyperparams["max_grad_norm"], clip)
        # Adam's first step moves each weight by about lr against its gradient's sign...
        np.testing.assert_allclose(new_params["w"], -value * np.sign(grads["w"]), rtol=1e-4)
        # ... and its first moment is (1 - b1) x the gradient clipped to norm `clip`.
        mu = optax.tree_utils.tree_get(new_state, "mu")
        np.testing.assert_allclose(_norm(mu), 0.1 * min(clip, np.sqrt(14.0)), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown optimizer hyperparameter"):
        ppo.set_hyperparams(state, lr=1.0)


# ------------------------------------------------------------ minibatches of a Batch


def test_minibatch_takes_the_same_envs_from_every_leaf():
    """Time-major leaves split on axis 1, the env-first recurrent state on axis 0: every leaf
    of minibatch m holds the same envs, and the minibatches partition all of them."""
    t, n_envs, n_mb, layers, hidden = 3, 12, 3, 2, 4
    env = jnp.arange(n_envs, dtype=jnp.float32)
    per_step = jnp.broadcast_to(env, (t, n_envs))  # [T, B]: the env's index everywhere
    tr = Transition(
        obs=jnp.broadcast_to(env[None, :, None], (t, n_envs, 5)), reset=per_step > 5,
        action=per_step.astype(jnp.int32), log_prob=per_step, value=per_step,
        reward=per_step + jnp.arange(t)[:, None], done=per_step > 5, terminated=per_step > 5,
        final_value=per_step, episode_return=per_step, info={"cost": per_step},
        mask=jnp.broadcast_to(env[None, :, None] > 3, (t, n_envs, 2)),
    )
    batch = ppo.Batch(
        transition=tr, hidden=jnp.broadcast_to(env[:, None, None], (n_envs, layers, hidden)),
        advantages=per_step, returns=per_step,
    )
    axes = batch.env_axes()
    assert axes.hidden == 0 and axes.advantages == axes.returns == 1
    assert set(jax.tree.leaves(axes.transition)) == {1}
    assignment = ppo.minibatch_assignment(jax.random.key(3), n_envs, n_mb)
    assert assignment.shape == (n_envs // n_mb, n_mb) and assignment.dtype == jnp.int32
    take = ppo.take_minibatch  # axes are Python ints: eager is cheaper than a compile per leaf
    seen = []
    for m in range(n_mb):
        mb = take(batch, assignment, jnp.int32(m), axes)
        envs = np.asarray(mb.advantages[0])
        # Each run of n_mb consecutive envs gives one env to every minibatch.
        np.testing.assert_array_equal(envs // n_mb, np.arange(n_envs // n_mb))
        assert mb.hidden.shape == (n_envs // n_mb, layers, hidden)
        np.testing.assert_array_equal(mb.hidden[:, 0, 0], envs)
        np.testing.assert_array_equal(mb.transition.obs[:, :, 0], np.broadcast_to(envs, (t, 4)))
        np.testing.assert_array_equal(mb.transition.reward,
                                      envs + np.arange(t)[:, None])  # time order kept
        np.testing.assert_array_equal(mb.transition.mask[..., 0], np.broadcast_to(envs > 3,
                                                                                  (t, 4)))
        np.testing.assert_array_equal(mb.transition.info["cost"][0], envs)
        # One int for every leaf is the same as the tree of axes where they agree.
        np.testing.assert_array_equal(take(tr, assignment, jnp.int32(m), 1).action,
                                      mb.transition.action)
        seen.append(envs)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(n_envs))

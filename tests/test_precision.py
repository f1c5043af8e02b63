"""Mixed precision: bf16 matmuls, float32 everything that accumulates.

On CPU, XLA emulates bf16 matmuls; the dtypes that flow, and the closeness of a bf16
run to the float32 one, are the same as on a GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade.config import Config, resolve, with_values
from jaxtrade.rollout import make_rollout
from jaxtrade.trainer import make_train

SMALL = dict(
    hidden_dim=16, n_gru_layers=2, n_envs=16, n_steps=16, n_minibatches=2, ppo_epochs=2,
    critic_epochs=2, episode_length=32, actor_lr=1e-3,
)
# One iteration: over more, actions sampled from slightly different probabilities send the
# two runs down different trajectories, and their distance measures that chaos, not bf16
# (after 4 iterations KL(fp32 || bf16) / KL(fp32 || init) ranged from 0.02 to 0.35 over
# seeds; after 1, from 0.004 to 0.09).
ITERATIONS = 1


@pytest.fixture(scope="module")
def runs(small_market):
    """fp32 and bf16 trainers from the same seed, their initial and trained states."""
    out = {}
    for precision in ("fp32", "bf16"):
        cfg = resolve(with_values(Config(), precision=precision, **SMALL), "cpu")
        trainer = make_train(cfg, small_market)
        init = trainer.initial_state(jax.random.key(0))
        params0 = jax.device_get(init.params)
        state, metrics = trainer.run(init, ITERATIONS)
        out[precision] = (trainer, params0, state, jax.device_get(metrics))
    return out


def policy(trainer, params, obs):
    """Action probabilities of `params` on `obs` [B, D] from a fresh recurrent state, float32."""
    n = obs.shape[0]
    logits = trainer.network.apply({"params": params}, trainer.network.initial_state(n), obs,
                                   jnp.ones(n, bool)).logits
    return jax.nn.softmax(logits.astype(jnp.float32))


def test_bf16_keeps_params_optimizer_and_losses_float32(runs):
    trainer, _, state, metrics = runs["bf16"]
    assert trainer.network.dtype == jnp.bfloat16
    for tree in (state.params, state.actor_opt, state.critic_opt):
        floats = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
        assert floats and all(x.dtype == jnp.float32 for x in floats)
    for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "explained_variance"):
        assert metrics[k].dtype == np.float32 and np.isfinite(metrics[k]).all(), k
    # The rollout stores observations in bf16; log-probs, values and rewards stay float32.
    rollout = jax.jit(make_rollout(trainer.network, trainer.env, 4))
    _, traj = rollout(state.params, trainer.env_params, state.carry, jax.random.key(1))
    assert traj.obs.dtype == jnp.bfloat16
    assert traj.log_prob.dtype == traj.value.dtype == traj.reward.dtype == jnp.float32
    # Logits and values leave the network in float32.
    out = trainer.network.apply(
        {"params": state.params}, state.carry.hidden, state.carry.obs, state.carry.reset
    )
    assert out.logits.dtype == out.value.dtype == out.state.dtype == jnp.float32


def test_bf16_run_is_finite_and_its_policy_stays_close_to_fp32(runs):
    t32, p0, s32, m32 = runs["fp32"]
    _, p0_bf16, s16, m16 = runs["bf16"]
    # Same seed, float32 params: the two runs start from the same weights.
    for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p0_bf16), strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(s16.params)))
    obs = jnp.asarray(s32.carry.obs, jnp.float32)
    pi0, pi32, pi16 = (policy(t32, p, obs) for p in (p0, s32.params, s16.params))

    def kl(p, q):
        return float(jnp.mean(jnp.sum(p * (jnp.log(p) - jnp.log(q)), axis=-1)))

    moved = kl(pi32, pi0)  # how far float32 training moved the policy
    apart = kl(pi32, pi16)  # how far bf16 training ends from it
    assert moved > 1e-4, moved  # training did move it: the comparison below means something
    assert apart < 0.25 * moved, (apart, moved)
    # Losses follow the same course.
    np.testing.assert_allclose(m16["value_loss"], m32["value_loss"], rtol=0.1)
    np.testing.assert_allclose(m16["entropy"], m32["entropy"], rtol=0.02)

"""The one rollout (`jaxtrade.rollout`): stored sequences replay the policy that acted,
truncated episodes bootstrap from their final observation, and masked actions are never
sampled or chosen greedily."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade.config import Config, resolve, with_values
from jaxtrade.envs import Environment
from jaxtrade.rollout import bootstrap_capacity, initial_carry, make_rollout
from jaxtrade.trainer import advantages, make_train
from tests.envs.masked import TELEPORT, MaskedWalk
from tests.test_trainer import TINY, _masked_trainer, _prefer_teleport


@pytest.fixture(scope="module")
def tiny(small_market):
    return make_train(resolve(with_values(Config(), **TINY), "cpu"), small_market)


@pytest.fixture(scope="module")
def tiny_state(tiny):
    return tiny.initial_state(jax.random.key(0))


def test_stored_sequences_replay_the_rollout_exactly(tiny, tiny_state):
    """Re-running the GRU from each env's stored initial state over its stored observations
    and reset flags gives the rollout's values and log-probs: the update sees the policy that
    acted, across episode boundaries (GRU resets) too."""
    rollout = jax.jit(make_rollout(tiny.network, tiny.env, 40))
    carry = tiny_state.carry
    _, traj = rollout(tiny_state.params, tiny.env_params, carry, jax.random.key(1))
    assert bool(traj.done.any()) and bool(traj.reset[1:].any())
    np.testing.assert_array_equal(traj.reset[1:], traj.done[:-1])
    out = tiny.network.apply(
        {"params": tiny_state.params}, carry.hidden, traj.obs, traj.reset, method="unroll"
    )
    logits, values = out.logits, out.value
    log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits), traj.action[..., None], -1)[..., 0]
    np.testing.assert_allclose(values, traj.value, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_probs, traj.log_prob, rtol=1e-5, atol=1e-5)


def test_truncated_steps_bootstrap_from_the_final_observation(tiny, tiny_state):
    rollout = jax.jit(make_rollout(tiny.network, tiny.env, 40))
    _, traj = rollout(tiny_state.params, tiny.env_params, tiny_state.carry, jax.random.key(2))
    done = np.asarray(traj.done)
    # The final value differs from the value of the reset observation that follows.
    nxt = np.asarray(traj.value)[1:][done[:-1]]
    fin = np.asarray(traj.final_value)[:-1][done[:-1]]
    assert done.any() and not np.allclose(nxt, fin)
    # Episode returns are reported exactly where episodes end.
    assert (np.asarray(traj.episode_return)[~done] == 0).all()


def _bootstrap_case(name, tiny, tiny_state, small_market):
    """(trainer, params, carry, n_steps) of a rollout with many time-limit ends: the tiny
    portfolio trainer (a GRU with dropout, episodes of 32 steps, staggered), or the masked
    walk (episodes of at most 16 steps, some terminated)."""
    if name == "portfolio":
        return tiny, tiny_state.params, tiny_state.carry, 72
    trainer = _masked_trainer(small_market)
    state = trainer.initial_state(jax.random.key(3))
    return trainer, state.params, state.carry, 48


@pytest.mark.parametrize("name", ["portfolio", "masked"])
def test_pending_bootstraps_give_the_full_pass_values(tiny, tiny_state, small_market, name):
    """The bootstrap values of time-limit ends computed after the scan from each env's slots
    (and, for the ends that find their env's slots full, by a full pass at their step) are
    the full pass's of every step, and so are the advantages and returns. Slots: the
    trainer's capacity (none full), one and zero (many full: the fallback), and as many as
    steps (no fallback).

    Equal within float32 rounding, not always bit for bit: it is the same network on the
    same float32 observations and recurrent states, but the batched forward has B x S rows
    instead of B, and a matmul kernel may sum a row in another order for another batch size
    (on CPU the first three cases are bit-identical; with S = T slots, 576 rows, values
    differ by a few ulp)."""
    trainer, params, carry, n_steps = _bootstrap_case(name, tiny, tiny_state, small_market)
    key = jax.random.key(4)
    hp = tiny_state.hparams

    def run(slots):
        rollout = jax.jit(make_rollout(trainer.network, trainer.env, n_steps,
                                       bootstrap_slots=slots))
        end, traj = rollout(params, trainer.env_params, carry, key)
        return traj, advantages(trainer.network, params, traj, end, hp)

    ref, (ref_adv, ref_ret) = run(None)
    cut = np.asarray(ref.done & ~ref.terminated)
    per_env = cut.sum(0)
    capacity = bootstrap_capacity(n_steps, trainer.config.env.episode_length)
    assert cut.sum() >= 8 and per_env.max() > 1 and per_env.max() <= capacity
    if name == "masked":
        assert np.asarray(ref.terminated).any()
    for slots in (capacity, 1, 0, n_steps):
        traj, (adv, ret) = run(slots)
        np.testing.assert_array_equal(traj.action, ref.action)  # the same trajectory
        np.testing.assert_allclose(traj.value, ref.value, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(traj.final_value)[cut],
                                   np.asarray(ref.final_value)[cut], rtol=1e-5, atol=1e-6)
        assert (np.asarray(traj.final_value)[~cut] == 0).all()
        # A wrong bootstrap moves an advantage by about gamma x V (order 1).
        np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ret, ref_ret, rtol=1e-5, atol=1e-5)


def test_training_rollouts_keep_only_the_info_the_metrics_read(tiny, tiny_state):
    """The trainer's rollout stores `metric_info_keys` of the env's info; an evaluation
    walk's (the default) every key but final_obs, weights and costs among them."""
    trainer_keys = tiny.env.metric_info_keys
    assert set(trainer_keys) == {"cost", "turnover"}
    kept = make_rollout(tiny.network, tiny.env, 4, info_keys=trainer_keys)
    full = make_rollout(tiny.network, tiny.env, 4)
    args = (tiny_state.params, tiny.env_params, tiny_state.carry, jax.random.key(1))
    assert set(jax.eval_shape(kept, *args)[1].info) == set(trainer_keys)
    assert {"weights", "cost", "cost_slippage", "value"} <= set(jax.eval_shape(full, *args)[1].info)
    assert "final_obs" not in jax.eval_shape(full, *args)[1].info


@pytest.mark.parametrize("greedy", [False, True])
def test_masked_actions_are_never_taken(small_market, greedy):
    """Sampled and greedy: a policy that wants teleport everywhere takes it only where the
    mask allows it (cell 0); an env with the same dynamics and no mask takes it everywhere,
    so the check can fail."""
    trainer = _masked_trainer(small_market)
    params = _prefer_teleport(trainer.init(jax.random.key(0)).params)

    class Unmasked(MaskedWalk):
        action_mask = Environment.action_mask  # the default: every action valid

    for env, masked in ((trainer.env, True), (Unmasked(), False)):
        rollout = jax.jit(make_rollout(trainer.network, env, 48, greedy=greedy))
        carry = initial_carry(trainer.network, env, trainer.env_params, jax.random.key(1), 32)
        _, traj = rollout(params, trainer.env_params, carry, jax.random.key(2))
        invalid = np.asarray(traj.info["invalid"])
        if masked:
            assert not invalid.any()
            assert (np.asarray(traj.action) == TELEPORT).any()  # where it is valid
            valid = np.take_along_axis(np.asarray(traj.mask), np.asarray(traj.action)[..., None],
                                       -1)
            assert valid.all()
        else:
            assert traj.mask is None and invalid.mean() > 0.5


def test_uniform_samples_the_valid_actions_evenly(small_market):
    """`uniform=True` ignores a policy that wants teleport everywhere: on cell 0 right, stay
    and teleport each a third of the time, on the other cells left, right and stay."""
    from tests.envs.masked import SIZE

    trainer = _masked_trainer(small_market)
    params = _prefer_teleport(trainer.init(jax.random.key(0)).params)
    rollout = jax.jit(make_rollout(trainer.network, trainer.env, 48, greedy=True, uniform=True))
    carry = initial_carry(trainer.network, trainer.env, trainer.env_params, jax.random.key(1), 64)
    _, traj = rollout(params, trainer.env_params, carry, jax.random.key(2))
    cell = np.argmax(np.asarray(traj.obs)[..., :SIZE], axis=-1)
    action = np.asarray(traj.action)
    assert not np.asarray(traj.info["invalid"]).any()
    for at_zero, valid in ((True, [1, 2, 3]), (False, [0, 1, 2])):
        taken = action[(cell == 0) == at_zero]
        share = np.bincount(taken, minlength=4) / taken.size
        assert taken.size > 300 and share[[a for a in range(4) if a not in valid]].sum() == 0
        np.testing.assert_allclose(share[valid], 1 / 3, atol=0.06)
    # The log-prob of a uniform choice among the three valid actions.
    np.testing.assert_allclose(traj.log_prob, np.log(1 / 3), rtol=1e-5)


def test_decide_every_k_trades_only_on_every_kth_step(tiny, tiny_state, small_env):
    """decide_every = 4: uniform actions over the regimes on steps 0, 4, 8, ... of each
    episode and HOLD on the others (the mask is stored and the trajectory obeys it); the
    default params store no mask, so the unmasked programs pay nothing."""
    from jaxtrade.envs.regimes import N_REGIMES, Regime

    params = small_env.make_params("train", episode_length=32, decide_every=4)
    assert small_env.make_params("train", episode_length=32).decide_every is None
    rollout = jax.jit(make_rollout(tiny.network, small_env, 40, uniform=True))
    carry = initial_carry(tiny.network, small_env, params, jax.random.key(1), 16)
    steps = np.asarray(carry.env_state.step)
    _, traj = rollout(tiny_state.params, params, carry, jax.random.key(2))
    action, mask = np.asarray(traj.action), np.asarray(traj.mask)
    # The episode step of each transition: staggered starts, reset after 32 steps.
    step = (steps[None, :] + np.arange(40)[:, None]) % 32
    deciding = step % 4 == 0
    assert (mask.all(-1) == deciding).all() and mask[..., Regime.HOLD].all()
    assert (action[~deciding] == Regime.HOLD).all()
    assert len(np.unique(action[deciding])) == N_REGIMES
    plain = small_env.make_params("train", episode_length=32)
    carry = initial_carry(tiny.network, small_env, plain, jax.random.key(1), 16)
    assert rollout(tiny_state.params, plain, carry, jax.random.key(2))[1].mask is None

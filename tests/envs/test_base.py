"""The env protocol: auto-reset written once, the registry, masks and the optional hooks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade.envs import Environment, PortfolioEnv, make_env, registered
from tests.envs.masked import SIZE, TELEPORT, MaskedWalk, WalkState


def test_registry_builds_envs_by_name(small_market):
    assert registered()[0] == "portfolio" and "masked-walk" in registered()
    assert isinstance(make_env("portfolio", small_market), PortfolioEnv)
    assert isinstance(make_env("masked-walk", small_market), MaskedWalk)
    with pytest.raises(ValueError, match="unknown env 'nope'; registered envs: portfolio"):
        make_env("nope", small_market)


def test_auto_reset_returns_the_next_episode_and_keeps_the_final_observation():
    env = MaskedWalk()
    params = env.make_params()
    state = WalkState(jnp.int32(SIZE - 2), jnp.int32(3))
    obs, new, reward, done, info = jax.jit(env.step)(jax.random.key(0), state, 1, params)
    assert bool(done) and bool(info["terminated"]) and float(reward) == pytest.approx(0.99)
    np.testing.assert_array_equal(info["final_obs"][:SIZE], np.eye(SIZE)[SIZE - 1])
    assert int(new.step) == 0 and int(new.pos) < SIZE - 1  # a fresh episode
    np.testing.assert_array_equal(obs, env.get_obs(new, params))
    # A step that does not end the episode carries on.
    obs, new, _, done, info = env.step(jax.random.key(0), WalkState(jnp.int32(1), jnp.int32(0)),
                                       0, params)
    assert not bool(done) and int(new.pos) == 0 and int(new.step) == 1
    np.testing.assert_array_equal(obs, info["final_obs"])


def test_masks_are_static_and_default_to_all_valid(small_market):
    portfolio = PortfolioEnv(small_market)
    # The portfolio may mask (decide_every > 1); with its default params it masks nothing.
    assert portfolio.masks_actions and MaskedWalk().masks_actions
    params = portfolio.default_params
    _, state = portfolio.reset(jax.random.key(0), params)
    assert portfolio.action_mask(state, params) is None
    assert Environment.action_mask(portfolio, state, params).tolist() == [True] * 12
    walk = MaskedWalk()
    at = lambda pos: walk.action_mask(WalkState(jnp.int32(pos), jnp.int32(0)), None).tolist()
    assert at(0) == [False, True, True, True] and at(2) == [True, True, True, False]
    assert at(0)[TELEPORT] and not at(1)[TELEPORT]


def test_hooks_have_defaults(small_market):
    class Bare(Environment):
        num_actions = 3

    bare = Bare()
    assert bare.action_names == ("0", "1", "2") and bare.notes() == []
    assert bare.step_metrics({"x": jnp.ones((2, 2))}) == {}
    states = {"a": jnp.arange(4)}
    assert bare.stagger(jax.random.key(0), states, None) is states


def test_portfolio_hooks(small_market):
    env = PortfolioEnv(small_market)
    params = env.make_params("train", episode_length=32)
    assert env.action_names[0] == "HOLD" and len(env.action_names) == env.num_actions
    _, states = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(0), 64),
                                                       params)
    staggered = env.stagger(jax.random.key(1), states, params)
    steps = np.asarray(staggered.step)
    assert steps.min() >= 0 and steps.max() < 32 and len(set(steps.tolist())) > 10
    info = {"cost": jnp.full((3, 2), 2.0), "turnover": jnp.ones((3, 2))}
    assert {k: float(v) for k, v in env.step_metrics(info).items()} == {
        "cost_mean": 2.0, "turnover_mean": 1.0}
    one = PortfolioEnv.__new__(PortfolioEnv)
    one.n_assets = 1
    assert "the same position" in one.notes()[0]

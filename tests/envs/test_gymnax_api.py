"""jaxtrade's envs through gymnax (`jaxtrade.envs.gymnax_api`): gymnax's own spaces and
wrappers, the five- and six-value step, staggered starts, slim and full info, and
`gymnax.make` after `register_gymnax()`.

Two rollouts are compiled once per module (a few envs, a few dozen steps, random
actions, jit + vmap + lax.scan); the tests read them. Everything else uses
`jax.eval_shape` (no compile) or the tiny market of `tests/conftest.py`.
"""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

gymnax = pytest.importorskip("gymnax")

from gymnax.environments import environment, spaces  # noqa: E402
from gymnax.wrappers import GymnaxToGymWrapper, LegacyStepAPIWrapper  # noqa: E402
from gymnax.wrappers.purerl import FlattenObservationWrapper, LogWrapper  # noqa: E402

from jaxtrade.envs import N_REGIMES, NAMES, PortfolioEnv, register_gymnax  # noqa: E402
from jaxtrade.envs import spaces as jaxtrade_spaces  # noqa: E402
from jaxtrade.envs.gymnax_api import SLIM_INFO_KEYS, GymnaxEnv, gymnax_id  # noqa: E402
from tests.conftest import SMALL_EPISODE  # noqa: E402

N_ENVS = 6
N_STEPS = 48
# The keys of the jaxtrade env's own step info (PortfolioEnv.step_env).
JAXTRADE_INFO_KEYS = {"value", "weights", "turnover", "cost", "cost_slippage", "cost_spread",
                      "cost_impact", "log_return", "terminated", "truncated"}


def rollout(wrapped, inner_state, params, seed):
    """N_ENVS envs of `wrapped` for N_STEPS random actions: (first obs, first state, per step:
    the key, the jaxtrade state before the step, the action, and the step's outputs)."""
    action_space = wrapped.action_space(params)

    def run(key):
        key_reset, key_steps = jax.random.split(key)
        obs0, state0 = jax.vmap(wrapped.reset, in_axes=(0, None))(
            jax.random.split(key_reset, N_ENVS), params)

        def body(state, key):
            key_act, key_step = jax.random.split(key)
            action = jax.vmap(action_space.sample)(jax.random.split(key_act, N_ENVS))
            keys = jax.random.split(key_step, N_ENVS)
            out = jax.vmap(wrapped.step, in_axes=(0, 0, 0, None))(keys, state, action, params)
            return out[1], (keys, inner_state(state).env_state, action, out)

        _, steps = jax.lax.scan(body, state0, jax.random.split(key_steps, N_STEPS))
        return obs0, state0, steps

    return jax.jit(run)(jax.random.key(seed))


@functools.cache
def _jaxtrade_steps(env: PortfolioEnv):
    """jit(vmap) of what the jaxtrade env itself does in one step, with gymnax's base
    `step`'s two keys: `step_env` (no reset) and the `reset_env` an auto-reset would use."""

    def one(key, state, action, params):
        key_step, key_reset = jax.random.split(key)
        obs, _, reward, done, info = env.step_env(key_step, state, action, params)
        obs_reset, _ = env.reset_env(key_reset, params)
        return obs, reward, done, info["terminated"], info["truncated"], obs_reset

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))


def expected_steps(env: PortfolioEnv, params, keys, states, actions):
    """`_jaxtrade_steps` for each recorded step [N_STEPS, N_ENVS]."""
    flat = jax.tree.map(lambda x: x.reshape(N_STEPS * N_ENVS, *x.shape[2:]),
                        (keys, states, actions))
    out = _jaxtrade_steps(env)(*flat, params)
    return jax.tree.map(lambda x: np.asarray(x).reshape(N_STEPS, N_ENVS, *x.shape[1:]), out)


@pytest.fixture(scope="module")
def five(small_env, small_params):
    """The default five-value env (slim info), staggered, as PureJaxRL would drive it."""
    env = GymnaxEnv(small_env, stagger=True)
    return env, rollout(env, lambda s: s, small_params, seed=0)


@pytest.fixture(scope="module")
def ruin_params(small_env):
    """Short episodes that a random policy often ruins: both ends of an episode occur."""
    return small_env.make_params("train", episode_length=16, ruin_fraction=0.985)


@pytest.fixture(scope="module")
def six(small_env, ruin_params):
    """The six-value env with full info under gymnax's LogWrapper(FlattenObservationWrapper)."""
    env = GymnaxEnv(small_env, terminated_truncated=True, full_info=True)
    wrapped = LogWrapper(FlattenObservationWrapper(env))
    return env, rollout(wrapped, lambda s: s.env_state, ruin_params, seed=1)


def test_spaces_are_gymnax_classes(small_env, small_params):
    env = GymnaxEnv(small_env)
    action_space, obs_space = env.action_space(small_params), env.observation_space(small_params)
    assert isinstance(env, environment.Environment)
    assert type(action_space) is spaces.Discrete and action_space.n == N_REGIMES
    assert type(obs_space) is spaces.Box and obs_space.shape == (small_env.obs_dim,)
    assert obs_space.dtype == jnp.float32
    # jaxtrade's own spaces are what PureJaxRL's and gymnax's wrappers reject.
    assert not isinstance(small_env.observation_space(small_params), spaces.Box)
    assert isinstance(small_env.observation_space(small_params), jaxtrade_spaces.Box)
    assert FlattenObservationWrapper(env).observation_space(small_params).shape == (
        small_env.obs_dim,)
    assert env.name == "jaxtrade-Portfolio-v0"
    assert gymnax_id("funding_rate") == "jaxtrade-FundingRate-v0"
    assert env.num_actions == N_REGIMES and env.action_names == NAMES


def test_five_value_rollout_shapes_and_dtypes(five, small_env):
    _, (obs0, state0, (_, _, actions, out)) = five
    assert len(out) == 5
    obs, state, reward, done, info = out
    assert obs0.shape == (N_ENVS, small_env.obs_dim) and obs0.dtype == jnp.float32
    assert obs.shape == (N_STEPS, N_ENVS, small_env.obs_dim) and obs.dtype == jnp.float32
    assert reward.shape == done.shape == (N_STEPS, N_ENVS)
    assert reward.dtype == jnp.float32 and done.dtype == jnp.bool_
    assert actions.dtype == jnp.int32
    assert np.all(np.isfinite(np.asarray(obs))) and np.all(np.isfinite(np.asarray(reward)))


@pytest.mark.parametrize("form", ["five", "six"])
def test_steps_agree_with_jaxtrade_step_env(form, request, small_env, small_params, ruin_params):
    env, (_, _, (keys, states, actions, out)) = request.getfixturevalue(form)
    params = small_params if form == "five" else ruin_params
    obs_end, reward, done, terminated, truncated, obs_reset = expected_steps(
        small_env, params, keys, states, actions)
    if form == "five":
        obs, state, got_reward, got_done, info = out
        env_state = state.env_state
    else:
        obs, state, got_reward, got_terminated, got_truncated, info = out
        env_state = state.env_state.env_state  # LogEnvState -> GymnaxEnvState -> jaxtrade's
        np.testing.assert_array_equal(got_terminated, terminated)
        np.testing.assert_array_equal(got_truncated, truncated)
        got_done = got_terminated | got_truncated
        np.testing.assert_allclose(info["final_observation"], obs_end, rtol=1e-6, atol=1e-7)
        # Both ends of an episode occur here, never together.
        assert terminated.any() and truncated.any() and not (terminated & truncated).any()
    np.testing.assert_array_equal(got_done, done)
    assert done.any() and not done.all()
    np.testing.assert_array_equal(info["terminated"], terminated)
    np.testing.assert_array_equal(info["truncated"], truncated)
    np.testing.assert_allclose(got_reward, reward, rtol=1e-6, atol=1e-7)
    # Auto-reset by gymnax's base class: a finished episode continues with a fresh one
    # (step 0, even when the first one was staggered), otherwise the step's own observation.
    want_obs = np.where(done[..., None], obs_reset, obs_end)
    np.testing.assert_allclose(obs, want_obs, rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(env_state.step)[done] == 0)
    assert np.all(np.asarray(env_state.step)[~done] > 0)


def test_staggered_starts_differ_and_plain_starts_are_zero(five, six, small_params):
    _, (_, state0, (_, _, _, out)) = five
    first = np.asarray(state0.env_state.step)
    assert len(set(first.tolist())) > 1, first
    assert np.all((first >= 0) & (first < SMALL_EPISODE))
    # Each env's first episode ends after the steps left to it: episodes end apart.
    done = np.asarray(out[3])
    first_done = done.argmax(axis=0)
    np.testing.assert_array_equal(first_done, SMALL_EPISODE - 1 - first)
    # Without stagger every env starts at step 0.
    _, (_, log_state0, _) = six
    np.testing.assert_array_equal(log_state0.env_state.env_state.step, 0)
    plain = GymnaxEnv(five[0].jaxtrade_env)
    _, state = jax.eval_shape(plain.reset, jax.random.key(0), small_params)
    assert state.env_state.step.shape == ()


def test_log_wrapper_reports_episode_returns(six):
    _, (_, _, (_, _, _, out)) = six
    _, _, reward, terminated, truncated, info = out
    done = np.asarray(terminated | truncated)
    reward = np.asarray(reward)
    checked = 0
    for e in range(N_ENVS):
        ends = np.flatnonzero(done[:, e])
        for start, end in zip(np.r_[0, ends[:-1] + 1], ends, strict=True):
            assert info["returned_episode"][end, e]
            np.testing.assert_allclose(info["returned_episode_returns"][end, e],
                                       reward[start:end + 1, e].sum(), rtol=1e-5, atol=1e-6)
            assert info["returned_episode_lengths"][end, e] == end - start + 1
            checked += 1
    assert checked >= N_ENVS


def info_sizes(env, params):
    """Values per env and step of each info entry of `env.step` (traced, not compiled)."""
    obs, state = jax.eval_shape(env.reset, jax.random.key(0), params)
    out = jax.eval_shape(env.step, jax.random.key(1), state, jnp.int32(0), params)
    return {k: int(np.prod(v.shape)) for k, v in out[-1].items()}, len(out)


@pytest.mark.parametrize("terminated_truncated", [False, True])
def test_slim_info_is_small_and_full_info_has_jaxtrade_keys(
    small_env, small_params, terminated_truncated
):
    slim, n_out = info_sizes(GymnaxEnv(small_env, terminated_truncated=terminated_truncated),
                             small_params)
    full, n_out_full = info_sizes(
        GymnaxEnv(small_env, terminated_truncated=terminated_truncated, full_info=True),
        small_params)
    assert n_out == n_out_full == (6 if terminated_truncated else 5)
    scalars = {k: n for k, n in slim.items() if k != "final_observation"}
    assert set(scalars) == {*SLIM_INFO_KEYS, "terminated", "truncated"}
    assert sum(scalars.values()) == len(scalars) <= 8
    assert "weights" not in slim and "final_obs" not in slim
    if terminated_truncated:
        # gymnax 1.0's step defines it; FlattenObservationWrapper reads it.
        assert slim["final_observation"] == small_env.obs_dim
    else:
        assert "final_observation" not in slim
    assert JAXTRADE_INFO_KEYS <= set(full)
    assert full["weights"] == small_env.n_assets + 1
    assert full["final_observation"] == small_env.obs_dim
    assert sum(full.values()) > sum(slim.values()) + small_env.n_assets


@pytest.mark.parametrize("terminated_truncated", [False, True])
@pytest.mark.parametrize("final_observation", [False, True])
def test_final_observation_flag(small_env, small_params, terminated_truncated,
                                final_observation):
    info, _ = info_sizes(GymnaxEnv(small_env, terminated_truncated=terminated_truncated,
                                   final_observation=final_observation), small_params)
    assert ("final_observation" in info) == final_observation
    assert "weights" not in info


def test_five_value_form_is_gymnax_legacy_form(small_env, small_params):
    """The default step is the six-value one through gymnax's LegacyStepAPIWrapper."""
    five = GymnaxEnv(small_env)
    legacy = LegacyStepAPIWrapper(GymnaxEnv(small_env, terminated_truncated=True))

    def last_step(env, key, params):
        _, state = env.reset(key, params)
        state = state.replace(env_state=state.env_state.replace(step=SMALL_EPISODE - 1))
        return env.step(key, state, jnp.int32(4), params)

    outs = jax.jit(lambda key, params: [last_step(env, key, params) for env in (five, legacy)])(
        jax.random.key(3), small_params)  # one compiled program for both
    assert len(outs[0]) == len(outs[1]) == 5
    assert bool(outs[0][3]) and bool(outs[1][3])  # the last step of the episode
    for a, b in zip(outs[0][:4], outs[1][:4], strict=True):
        jax.tree.map(np.testing.assert_array_equal, a, b)


def test_gymnax_to_gym_wrapper(small_env, small_params):
    env = GymnaxEnv(small_env, terminated_truncated=True)
    gym_env = GymnaxToGymWrapper(env, small_params, seed=0)
    assert gym_env.metadata["name"] == "jaxtrade-Portfolio-v0"
    assert gym_env.action_space.n == N_REGIMES
    assert gym_env.observation_space.shape == (small_env.obs_dim,)
    obs, _ = gym_env.reset(seed=1)
    obs, reward, terminated, truncated, info = gym_env.step(4)
    assert obs.shape == (small_env.obs_dim,) and np.isfinite(float(reward))
    assert not bool(terminated) and not bool(truncated)


def test_gymnax_make_after_register(small_market):
    ids = register_gymnax()  # every registered jaxtrade env (the tests register one more)
    assert ids[0] == "jaxtrade-Portfolio-v0"
    assert register_gymnax() == ids  # idempotent
    assert "jaxtrade-Portfolio-v0" in gymnax.registered_envs
    env, params = gymnax.make("jaxtrade-Portfolio-v0")
    assert isinstance(env, GymnaxEnv) and env.name == "jaxtrade-Portfolio-v0"
    assert not env.terminated_truncated and not env.stagger and not env.full_info
    inner = env.jaxtrade_env
    assert (inner.n_assets, int(params.episode_length)) == (12, 256)  # the embedded market
    assert env.observation_space(params).shape == (inner.obs_dim,)
    obs, _ = jax.eval_shape(env.reset, jax.random.key(0), params)
    assert obs.shape == (inner.obs_dim,) and obs.dtype == jnp.float32
    # A market, the step form and env params through make's keyword arguments.
    env, params = gymnax.make("jaxtrade-Portfolio-v0", market=small_market,
                              terminated_truncated=True, stagger=True, episode_length=20,
                              ruin_fraction=0.8)
    assert env.jaxtrade_env.n_assets == small_market.n_assets
    assert env.terminated_truncated and env.stagger
    assert int(params.episode_length) == 20
    assert float(params.ruin_fraction) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="not in registered"):
        gymnax.make("jaxtrade-NoSuchEnv-v0")


def test_importing_jaxtrade_does_not_need_gymnax():
    code = (
        "import sys; sys.modules['gymnax'] = None\n"
        "import jaxtrade, jaxtrade.envs\n"
        "assert 'jaxtrade.envs.gymnax_api' not in sys.modules\n"
        "try:\n"
        "    jaxtrade.envs.register_gymnax()\n"
        "except ImportError:\n"
        "    print('needs gymnax')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "needs gymnax"


def test_action_mask_of_a_masked_env_through_the_adapter():
    """The masked walk (`tests.envs.masked`): `action_mask` on the adapter's state is the
    env's; `step`'s info holds the mask of the returned state, after an auto-reset the new
    episode's; LogWrapper passes both through."""
    from tests.envs.masked import LEFT, RIGHT, SIZE, TELEPORT, MaskedWalk

    env = GymnaxEnv(MaskedWalk(), terminated_truncated=True)
    params = env.default_params
    assert env.masks_actions
    _, state = env.reset(jax.random.key(0), params)

    def at(pos):
        return state.replace(env_state=state.env_state.replace(pos=jnp.int32(pos)))

    # Cell 0: left is invalid and teleport valid; elsewhere the other way round.
    np.testing.assert_array_equal(env.action_mask(at(0), params), [False, True, True, True])
    np.testing.assert_array_equal(env.action_mask(at(2)), [True, True, True, False])

    keys = jax.random.split(jax.random.key(1), SIZE)
    starts = jax.vmap(at)(jnp.array([0, 1, 0, 2, 3, 1]))
    actions = jnp.array([RIGHT, LEFT, TELEPORT, LEFT, RIGHT, RIGHT])
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    _, after, _, terminated, _, info = step(keys, starts, actions, params)
    mask = np.asarray(info["action_mask"])
    assert mask.shape == (SIZE, env.num_actions) and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, jax.vmap(env.action_mask, in_axes=(0, None))(
        after, params))
    pos = np.asarray(after.env_state.pos)
    np.testing.assert_array_equal(pos[[0, 1, 3, 4]], [1, 0, 1, 4])
    np.testing.assert_array_equal(mask[:, 0], pos > 0)  # left
    np.testing.assert_array_equal(mask[:, 3], pos == 0)  # teleport
    # Teleporting reaches the goal: the episode ends and the mask is the next one's.
    assert np.asarray(terminated).tolist() == [False, False, True, False, False, False]
    assert int(after.env_state.step[2]) == 0 and pos[2] < SIZE - 1

    logged = LogWrapper(env)
    _, log_state = logged.reset(jax.random.key(2), params)
    np.testing.assert_array_equal(logged.action_mask(log_state.env_state, params),
                                  env.action_mask(log_state.env_state, params))
    out = logged.step(jax.random.key(3), log_state, jnp.int32(RIGHT), params)
    np.testing.assert_array_equal(out[-1]["action_mask"], env.action_mask(out[1].env_state))


def test_portfolio_allows_every_action_and_adds_no_mask_to_info(small_env, small_params):
    env = GymnaxEnv(small_env)
    assert env.masks_actions  # it may (decide_every > 1), but these params mask nothing
    _, state = env.reset(jax.random.key(0), small_params)
    np.testing.assert_array_equal(env.action_mask(state, small_params), [True] * N_REGIMES)
    info, _ = info_sizes(env, small_params)
    assert "action_mask" not in info
    every4 = small_params.replace(decide_every=jnp.int32(4))  # then it masks, and says so
    info, _ = info_sizes(env, every4)
    assert info["action_mask"] == N_REGIMES
    np.testing.assert_array_equal(env.action_mask(state, every4), [True] * N_REGIMES)  # step 0


def test_gymnax_make_builds_the_funding_env_on_its_own_data():
    """"jaxtrade-Funding-v0": the funding env on its embedded synthetic opportunities (or a
    table's path), one-day episodes, its action mask through the adapter, and a step."""
    register_gymnax()
    env, params = gymnax.make("jaxtrade-Funding-v0", terminated_truncated=True)
    inner = env.jaxtrade_env
    assert inner.name == "funding" and int(params.episode_length) == 24
    assert inner.market.withheld_test is not None  # its test hours stay out
    assert env.masks_actions and env.num_actions == 36
    obs, state = env.reset(jax.random.key(0), params)
    mask = env.action_mask(state, params)
    assert obs.shape == (inner.obs_dim,) and bool(mask[0])
    out = jax.jit(env.step)(jax.random.key(1), state, jnp.int32(0), params)
    assert out[0].shape == obs.shape and "action_mask" in out[-1]
    env, params = gymnax.make("jaxtrade-Funding-v0", market="data/funding_example.csv",
                              episode_length=12)
    assert env.jaxtrade_env.n_symbols == 6 and int(params.episode_length) == 12

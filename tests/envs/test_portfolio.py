"""The portfolio env against a numpy reference, its invariants, causality and compilation."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxtrade.data import WINDOW, SyntheticConfig, build_market, synthetic_panel
from jaxtrade.envs import N_REGIMES, EnvState, PortfolioEnv, Regime
from tests.envs import reference


@pytest.fixture(scope="module")
def step_env(small_env):
    return jax.jit(small_env.step_env)


@pytest.fixture(scope="module")
def market_np(small_market):
    d = small_market.data
    return {k: np.asarray(getattr(d, k), np.float64) for k in ("price", "scores", "features")}


def _rollout_fn(env, n_steps):
    """jit(vmap) of a rollout with given actions: keys [B], actions [B, T] -> per-step outputs."""

    def one(key, actions, params):
        k0, k1 = jax.random.split(key)
        obs0, state = env.reset(k0, params)

        def body(state, xs):
            key, action = xs
            obs, state, reward, done, info = env.step(key, state, action, params)
            return state, (obs, reward, done, info, state)

        _, out = jax.lax.scan(body, state, (jax.random.split(k1, n_steps), actions))
        return obs0, out

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    action=st.integers(0, N_REGIMES - 1),
    step_frac=st.floats(0.0, 1.0),
    t_frac=st.floats(0.0, 1.0),
    value=st.floats(0.6, 3.0),
    peak_over=st.floats(1.0, 2.0),
    penalties=st.booleans(),
    frictions=st.sampled_from(["default", "zero", "large"]),
    benchmark=st.booleans(),
)
def test_step_matches_numpy_reference(
    small_env, small_params, step_env, market_np, seed, action, step_frac, t_frac, value,
    peak_over, penalties, frictions, benchmark,
):
    rng = np.random.default_rng(seed)
    n = small_env.n_assets
    weights = rng.dirichlet(np.full(n + 1, 0.5))
    t = 1 + int(t_frac * (small_env.n_bars - 3))
    length = int(small_params.episode_length)
    step_count = int(step_frac * (length - 1))
    params = small_params.replace(
        drawdown_penalty=jnp.float32(0.5 if penalties else 0.0),
        turnover_penalty=jnp.float32(0.01 if penalties else 0.0),
        end=jnp.int32(small_env.n_bars - 1),
        benchmark_weight=jnp.float32(benchmark),
    )
    coef = {"default": (5e-4, 2e-4, 0.01), "zero": (0.0, 0.0, 0.0), "large": (0.01, 0.005, 0.1)}
    slippage, spread, impact = (jnp.float32(c) for c in coef[frictions])
    params = params.replace(slippage=slippage, spread=spread, impact=impact)
    state = EnvState(
        t=jnp.int32(t),
        step=jnp.int32(step_count),
        value=jnp.float32(value),
        peak=jnp.float32(value * peak_over),
        weights=jnp.asarray(weights, jnp.float32),
    )
    key = jax.random.key(seed)
    obs, new_state, reward, done, info = step_env(key, state, jnp.int32(action), params)

    u = np.asarray(jax.random.uniform(key, (n,), jnp.float32), np.float64)
    p = {k: float(getattr(params, k)) for k in (
        "slippage", "spread", "impact", "turnover_penalty", "drawdown_penalty",
        "ruin_fraction", "episode_length", "end", "benchmark_weight")}
    ref = reference.step(
        market_np, t, step_count, float(state.value), float(state.peak),
        np.asarray(state.weights, np.float64), action, u, p,
    )
    tol = {"rtol": 1e-5, "atol": 1e-5}
    np.testing.assert_allclose(obs, ref["obs"], **tol)
    np.testing.assert_allclose(reward, ref["reward"], **tol)
    np.testing.assert_allclose(new_state.value, ref["value_post"], **tol)
    np.testing.assert_allclose(new_state.peak, ref["peak"], **tol)
    np.testing.assert_allclose(new_state.weights, ref["weights"], **tol)
    for k in ("value", "turnover", "cost_slippage", "cost_spread", "cost_impact"):
        np.testing.assert_allclose(info[k], ref[k], err_msg=k, **tol)
    assert bool(info["terminated"]) == ref["terminated"]
    assert bool(info["truncated"]) == ref["truncated"]
    assert bool(done) == (ref["terminated"] or ref["truncated"])
    assert int(new_state.t) == t + 1 and int(new_state.step) == step_count + 1


@pytest.fixture(scope="module")
def random_rollout(small_env, small_params):
    n_envs, n_steps = 64, 96  # three 32-step episodes per env
    fn = _rollout_fn(small_env, n_steps)
    keys = jax.random.split(jax.random.key(7), n_envs)
    actions = jax.random.randint(jax.random.key(8), (n_envs, n_steps), 0, N_REGIMES)
    obs0, (obs, reward, done, info, state) = fn(keys, actions, small_params)
    return actions, obs0, obs, reward, done, info, state


def test_rollout_invariants(small_env, random_rollout):
    actions, _, obs, reward, done, info, state = random_rollout
    n = small_env.n_assets
    w = np.asarray(info["weights"])
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.weights).sum(-1), 1.0, atol=1e-5)
    assert (np.asarray(info["value"]) > 0).all() and (np.asarray(state.value) > 0).all()
    for k in ("cost", "cost_slippage", "cost_spread", "cost_impact", "turnover"):
        assert (np.asarray(info[k]) >= 0).all(), k
    np.testing.assert_allclose(
        info["cost"], info["cost_slippage"] + info["cost_spread"] + info["cost_impact"], rtol=1e-6
    )
    hold = np.asarray(actions) == Regime.HOLD
    assert hold.any()
    assert (np.asarray(info["cost"])[hold] == 0).all()
    assert (np.asarray(info["turnover"])[hold] == 0).all()
    assert np.isfinite(np.asarray(reward)).all() and np.isfinite(np.asarray(obs)).all()
    # Weights in the observation are the weights held; drawdown and progress in range.
    np.testing.assert_allclose(obs[..., -(n + 3):-2], np.asarray(state.weights), atol=1e-6)
    assert (obs[..., -2] >= 0).all() and (obs[..., -2] < 1).all()
    assert (obs[..., -1] >= 0).all() and (obs[..., -1] < 1).all()


def test_episodes_truncate_and_auto_reset(small_params, random_rollout):
    _, _, obs, reward, done, info, state = random_rollout
    length = int(small_params.episode_length)
    done = np.asarray(done)
    truncated = np.asarray(info["truncated"])
    terminated = np.asarray(info["terminated"])
    assert not (truncated & terminated).any()
    np.testing.assert_array_equal(done, truncated | terminated)
    # With no ruin, every env truncates exactly at steps 32, 64, 96.
    assert not terminated.any()
    expected = np.zeros(done.shape[1], bool)
    expected[length - 1 :: length] = True
    np.testing.assert_array_equal(done, np.broadcast_to(expected, done.shape))
    # After a reset: all cash, value 1, step 0, a start inside the training range.
    after = np.asarray(state.step)[:, length - 1]
    np.testing.assert_array_equal(after, 0)
    np.testing.assert_allclose(np.asarray(state.weights)[:, length - 1, -1], 1.0)
    np.testing.assert_allclose(np.asarray(state.value)[:, length - 1], 1.0)
    t = np.asarray(state.t)[:, length - 1]
    assert (t >= int(small_params.start_min)).all() and (t <= int(small_params.start_max)).all()
    # final_obs carries the pre-reset observation: progress (last entry) at 1.0.
    np.testing.assert_allclose(np.asarray(info["final_obs"])[:, length - 1, -1], 1.0)
    np.testing.assert_allclose(np.asarray(obs)[:, length - 1, -1], 0.0)


def test_rewards_sum_to_log_growth(small_params, random_rollout):
    """Over an episode, the rewards add up to the log of the final marked value."""
    _, _, _, reward, _, info, _ = random_rollout
    length = int(small_params.episode_length)
    for episode in range(3):
        steps = slice(episode * length, (episode + 1) * length)
        np.testing.assert_allclose(
            np.asarray(reward)[:, steps].sum(1),
            np.log(np.asarray(info["value"])[:, steps.stop - 1]),
            rtol=1e-4,
            atol=1e-5,
        )


def test_ruin_terminates_without_truncation(small_env, small_params, step_env):
    params = small_params.replace(ruin_fraction=jnp.float32(0.999999))
    _, state = small_env.reset(jax.random.key(0), params)
    # Fully invested with large frictions: the marked value drops below 0.999999.
    params = params.replace(impact=jnp.float32(0.5))
    _, _, _, done, info = step_env(jax.random.key(1), state, jnp.int32(Regime.RISK_ON), params)
    assert bool(done) and bool(info["terminated"]) and not bool(info["truncated"])


def test_no_look_ahead(small_panel, small_market, small_env):
    """Perturbing every price and volume at or after the execution bar changes no observation."""
    rng = np.random.default_rng(0)
    n_steps = 24
    t0 = 40
    t_exec = t0 + n_steps  # the decision at this bar must not see its prices
    raw_cut = t_exec + WINDOW  # the same bar in the untrimmed panel
    noise = rng.uniform(0.5, 1.5, (small_panel.n_bars - raw_cut, small_panel.n_assets))
    changed = {
        name: np.concatenate([getattr(small_panel, name)[:raw_cut],
                              getattr(small_panel, name)[raw_cut:] * noise])
        for name in ("open", "high", "low", "close", "adj_close", "volume")
    }
    perturbed = build_market(
        dataclasses.replace(small_panel, **changed),
        episode_length=32,
        val_fraction=0.2,
        test_fraction=0.1,
        stats=small_market.stats,  # normalisation is fixed ahead of time
    )
    assert not np.allclose(perturbed.data.price[t_exec:], small_market.data.price[t_exec:])
    np.testing.assert_array_equal(perturbed.data.features[:t_exec],
                                  small_market.data.features[:t_exec])

    fn = _rollout_fn(small_env, n_steps)  # the env only supplies shapes: one compile serves both

    def observations(market):
        params = PortfolioEnv(market).make_params("train", episode_length=n_steps + 1, start=t0)
        keys = jax.random.split(jax.random.key(5), 16)
        actions = jax.random.randint(jax.random.key(6), (16, n_steps), 0, N_REGIMES)
        obs0, (obs, _, _, _, state) = fn(keys, actions, params)
        assert (np.asarray(state.t)[:, -1] == t_exec).all()
        return np.concatenate([np.asarray(obs0)[:, None], np.asarray(obs)], axis=1)

    before, after = observations(small_market), observations(perturbed)
    np.testing.assert_array_equal(before, after)


def test_step_compiles_once_and_runs_vmapped_over_4096_envs(small_env, small_params):
    step = jax.jit(chex.assert_max_traces(small_env.step, n=1))
    n_envs = 4096
    keys = jax.random.split(jax.random.key(0), n_envs)
    obs, state = jax.vmap(small_env.reset, in_axes=(0, None))(keys, small_params)

    def batched_step(keys, state, actions, params):
        return jax.vmap(small_env.step, in_axes=(0, 0, 0, None))(keys, state, actions, params)

    vstep = jax.jit(chex.assert_max_traces(batched_step, n=1))
    actions = jax.random.randint(jax.random.key(1), (n_envs,), 0, N_REGIMES)
    for _ in range(3):
        obs, state, reward, done, info = vstep(keys, state, actions, small_params)
        # New parameter values (same shapes) must not retrace either.
        small_params = small_params.replace(impact=small_params.impact * 0.5)
    assert obs.shape == (n_envs, small_env.obs_dim) and obs.dtype == jnp.float32
    assert reward.shape == (n_envs,) and done.shape == (n_envs,)
    assert np.isfinite(np.asarray(reward)).all()
    np.testing.assert_allclose(np.asarray(state.weights).sum(-1), 1.0, atol=1e-5)
    for i in range(3):
        one_state = jax.tree.map(lambda x, i=i: x[i], state)
        step(jax.random.key(i), one_state, jnp.int32(i),
             small_params.replace(spread=small_params.spread * i))


def test_spaces(small_env, small_params):
    assert small_env.action_space(small_params).n == 12
    obs, _ = small_env.reset(jax.random.key(0), small_params)
    space = small_env.observation_space(small_params)
    assert space.shape == obs.shape == (5 * 9 + 5 + 3,)
    assert bool(space.contains(obs))
    a = small_env.action_space().sample(jax.random.key(1))
    assert a.dtype == jnp.int32 and bool(small_env.action_space().contains(a))


def test_make_params_validates(small_env, small_market):
    with pytest.raises(ValueError, match="split must be one of train, validation, test"):
        small_env.make_params("eval")
    with pytest.raises(ValueError, match="too few for an episode of 5000 steps"):
        small_env.make_params("train", episode_length=5000)
    with pytest.raises(ValueError, match="impact must be"):
        small_env.make_params(impact=-0.1)
    with pytest.raises(ValueError, match="outside the validation range"):
        small_env.make_params("validation", start=3)
    # Each range reads no price after its last bar: training stops before validation, ...
    m = small_market
    train = small_env.make_params("train", episode_length=10)
    assert (int(train.start_min), int(train.end)) == (1, m.val_start - 1)
    assert int(train.start_max) + 10 == m.val_start - 1
    val = small_env.make_params("validation", episode_length=10)
    assert (int(val.start_min), int(val.end)) == (m.val_start, m.test_start - 1)
    test = small_env.make_params("test", episode_length=10)
    assert (int(test.start_min), int(test.end)) == (m.test_start, m.n_bars - 1)


@pytest.mark.slow
def test_synthetic_signal_lets_a_policy_beat_equal_weight_after_costs():
    """MOMENTUM every 20 bars (HOLD between) beats EQUAL_WEIGHT held throughout, on both
    ranges of the default market (train and test), and loses that edge when the signal is
    switched off."""
    markets = {s: build_market(synthetic_panel(SyntheticConfig(signal_strength=s)))
               for s in (1.0, 0.0)}
    env = PortfolioEnv(markets[1.0])  # same shapes for both markets: one compile

    @jax.jit
    def edge(params, key):
        """Mean episode log return of momentum-every-20 minus that of equal weight."""

        def episode(key, momentum):
            k0, k1 = jax.random.split(key)
            _, state = env.reset(k0, params)

            def body(state, k):
                rebalance = jnp.where(state.step % 20 == 0, Regime.MOMENTUM, Regime.HOLD)
                action = jnp.where(momentum, rebalance, Regime.EQUAL_WEIGHT).astype(jnp.int32)
                _, state, reward, _, _ = env.step(k, state, action, params)
                return state, reward

            _, r = jax.lax.scan(body, state, jax.random.split(k1, 256))
            return r.sum()

        keys = jax.random.split(key, 256)
        returns = jax.vmap(jax.vmap(episode, in_axes=(0, None)), in_axes=(None, 0))(
            keys, jnp.array([True, False])
        )
        return returns[0].mean() - returns[1].mean()

    edges = {
        (s, split): float(edge(PortfolioEnv(m).make_params(split), jax.random.key(0)))
        for s, m in markets.items()
        for split in ("train", "test")
    }
    assert edges[1.0, "train"] > 0.03 and edges[1.0, "test"] > 0.03, edges
    assert edges[0.0, "train"] < 0 and edges[0.0, "test"] < 0, edges


def test_bootstrap_paths_jump_within_the_range_and_stay_consistent(small_env, step_env):
    """--bootstrap-block L: each step's next bar is a random bar of the range with
    probability 1/L; the held return is that bar's, and the next step's drift is the same
    bar's, so value carries over exactly; a path never reads a bar past the range (it is
    truncated at the range's end, as a path in order is)."""
    params = small_env.make_params("train", episode_length=64, bootstrap_block=4.0,
                                   ruin_fraction=0.0)
    assert float(params.restart_prob) == pytest.approx(0.25)
    reset = jax.jit(small_env.reset_env)
    price = np.asarray(small_env._data.price, np.float64)
    lo, end = int(params.start_min), int(params.end)
    jumps, n = 0, 600
    keys = jax.random.split(jax.random.key(1), n)
    _, state = reset(jax.random.key(0), params)
    for i in range(n):
        action = jnp.int32(i % N_REGIMES)
        _, nxt, _, done, info = step_env(keys[i], state, action, params)
        t, t_next = int(state.t), int(nxt.t)
        assert lo <= t and t_next <= end  # the mark of the step is inside the range
        jumps += t_next != t + 1
        w = np.asarray(nxt.weights, np.float64)
        growth = price[t_next] / price[t_next - 1]
        expected = float(nxt.value) * (w[:-1] @ growth + w[-1])
        assert float(info["value"]) == pytest.approx(expected, rel=1e-5)
        if bool(info["truncated"]):
            assert int(nxt.step) == 64 or t_next + 1 > end
        state = reset(jax.random.fold_in(keys[i], 7), params)[1] if bool(done) else nxt
    assert 0.19 < jumps / n < 0.31
    # Evaluation passes walk the bars in order whatever training did.
    from jaxtrade.config import EnvConfig, PortfolioConfig
    from jaxtrade.evaluation import pass_params

    cfg = EnvConfig(portfolio=PortfolioConfig(bootstrap_block=4.0))
    assert float(pass_params(small_env, cfg, 1, 50).restart_prob) == 0.0
    with pytest.raises(ValueError, match=r"bootstrap_block must be 0 \(off\) or at least 2"):
        small_env.make_params("train", bootstrap_block=1.0)


def test_permute_is_the_market_with_its_assets_relabelled(small_env, step_env):
    """augment = permute: each episode draws an order of the assets, and its episode is the
    same env's on the market whose asset columns were put in that order (observations,
    rewards, values and weights alike); evaluation passes and worlds keep the data's order."""
    from jaxtrade.config import (
        Config,
        ConfigError,
        EnvConfig,
        PortfolioConfig,
        validate,
        with_values,
    )
    from jaxtrade.evaluation import pass_params

    n = small_env.n_assets
    params = small_env.make_params("train", episode_length=32, augment="permute",
                                   ruin_fraction=0.0)
    plain = small_env.make_params("train", episode_length=32, ruin_fraction=0.0)
    assert plain.permute is None  # no leaf: the plain env's state and programs are unchanged
    reset = jax.jit(small_env.reset_env)
    perms = {tuple(np.asarray(reset(jax.random.key(i), params)[1].perm)) for i in range(8)}
    assert all(sorted(p) == list(range(n)) for p in perms) and len(perms) > 1
    obs, state = reset(jax.random.key(3), params)
    perm = np.asarray(state.perm)
    relabelled = plain.replace(market=jax.tree.map(lambda x: x[:, perm], plain.market))
    obs_r, state_r = reset(jax.random.key(3), relabelled)
    assert state_r.perm is None and int(state_r.t) == int(state.t)
    np.testing.assert_array_equal(obs, obs_r)
    keys = jax.random.split(jax.random.key(4), 12)
    for i, key in enumerate(keys):
        action = jnp.int32(i % N_REGIMES)
        obs, state, reward, _, info = step_env(key, state, action, params)
        obs_r, state_r, reward_r, _, info_r = step_env(key, state_r, action, relabelled)
        np.testing.assert_allclose(obs, obs_r, rtol=1e-6)
        np.testing.assert_allclose(reward, reward_r, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.value, state_r.value, rtol=1e-6)
        np.testing.assert_allclose(state.weights, state_r.weights, rtol=1e-6, atol=1e-7)
    cfg = EnvConfig(portfolio=PortfolioConfig(augment="permute"))
    assert pass_params(small_env, cfg, 1, 50).permute is None
    with pytest.raises(ConfigError, match="augment='permute' must be none with --market worlds"):
        validate(with_values(Config(), augment="permute", market="worlds"))

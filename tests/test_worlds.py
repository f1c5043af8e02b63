"""Procedural worlds: the generator's draws, its model, and the jnp twin of the features."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade import worlds as W
from jaxtrade.data import features as F

N_BARS = 400


@pytest.fixture(scope="module")
def few():
    """Settings and bars of train worlds 0..5 (asset counts differ)."""
    return W.make_worlds(0, "train", range(6), N_BARS)


def test_features_match_the_pandas_definitions(few):
    settings, bars = few
    raw, scores = jax.jit(jax.vmap(W.features))(bars)
    for w in range(6):
        panel = W.to_panel(bars, w)
        n = len(panel.symbols)
        want, want_scores = F.compute(panel)
        got = np.asarray(raw[w])
        assert np.isnan(got[: F.WINDOW]).all()
        np.testing.assert_allclose(got[F.WINDOW:, :n], want[F.WINDOW:], rtol=1e-5, atol=5e-5)
        np.testing.assert_allclose(np.asarray(scores[w])[F.WINDOW:, :n], want_scores[F.WINDOW:],
                                   rtol=1e-5, atol=5e-5)
        assert not np.asarray(raw[w])[F.WINDOW:, n:].any(), "padding has no features"
    assert len({int(n) for n in settings.n_assets}) > 1


def test_features_read_no_future_bar(few):
    _, bars = few
    one = jax.tree.map(lambda x: x[1], bars)
    t = 200
    shaken = jax.tree.map(lambda x: x, one)
    for name in ("open", "high", "low", "close", "volume"):
        x = getattr(one, name)
        shaken = shaken.replace(**{name: x.at[t + 1:].multiply(1.7)})
    a, _ = W.features(one)
    b, _ = W.features(shaken)
    np.testing.assert_array_equal(np.asarray(a[: t + 1]), np.asarray(b[: t + 1]))
    assert not np.allclose(np.asarray(a[t + 1:]), np.asarray(b[t + 1:]), equal_nan=True)


def test_a_world_is_its_seed_stream_and_index_alone(few):
    settings, bars = few
    s3, b3 = W.make_worlds(0, "train", [3, 4, 5, 0, 1, 2], N_BARS)  # same program, reordered
    same = lambda a, b: jax.tree.map(  # noqa: E731
        lambda x, y: np.testing.assert_array_equal(np.asarray(x)[3], np.asarray(y)[0]), a, b)
    same(settings, s3)
    same(bars, b3)
    key = jax.random.split(W.world_key(0, "train", 3))[0]
    alone = W.sample_settings(key)  # another program: equal to float32 rounding
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x)[3], y, rtol=1e-6),
                 settings, jax.device_get(alone))
    for stream, seed in (("validation", 0), ("test", 0), ("train", 1)):
        _, other = W.make_worlds(seed, stream, range(6), N_BARS)
        assert not np.array_equal(np.asarray(other.close[3]), np.asarray(bars.close[3]))


def test_settings_stay_in_the_prior_and_cover_it():
    prior = W.WorldPrior()
    keys = jax.random.split(jax.random.key(1), 2000)
    s = jax.device_get(jax.jit(jax.vmap(lambda k: W.sample_settings(k, prior)))(keys))
    lo, hi = prior.n_assets
    assert s.n_assets.min() == lo and s.n_assets.max() == hi
    for name, low, high in (("drift", prior.drift_low, prior.drift_high),
                            ("vol", prior.vol_low, prior.vol_high),
                            ("idio_mult", prior.idio_mult_low, prior.idio_mult_high)):
        x = getattr(s, name)
        assert (x >= np.asarray(low, np.float32)).all() and (x <= np.asarray(high)).all(), name
    assert prior.duration[0] <= s.duration.min() and s.duration.max() <= prior.duration[1]
    # Log-uniform: half the worlds below the geometric midpoint.
    mid = np.sqrt(prior.duration[0] * prior.duration[1])
    assert abs(np.mean(s.duration < mid) - 0.5) < 0.05
    none = np.mean(s.signal_strength == 0)
    assert abs(none - prior.no_signal) < 4 * np.sqrt(0.25 * 0.75 / 2000)
    strong = s.signal_strength[s.signal_strength > 0]
    assert prior.signal_strength[0] <= strong.min() and strong.max() <= prior.signal_strength[1]
    spread = s.beta.max(1) - s.beta.min(1)
    assert (s.beta.min(1) >= prior.beta_low[0]).all()
    assert (spread <= prior.beta_spread[1] + 1e-6).all()
    assert (s.tail_df > 2).all()


def _fixed(**changes) -> W.WorldSettings:
    """Hand-set settings of a 10-asset world."""
    base = W.WorldSettings(
        n_assets=jnp.int32(10), drift=jnp.array([0.0005, -0.001, 0.0, 0.0003]),
        vol=jnp.array([0.01, 0.015, 0.03, 0.005]), idio_mult=jnp.array([1.0, 1.3, 1.8, 0.7]),
        duration=jnp.float32(100.0), signal_strength=jnp.float32(1.0),
        persistence=jnp.float32(0.98), beta=jnp.linspace(0.6, 1.4, 12),
        idio_vol=jnp.full((12,), 0.01), tail_df=jnp.float32(5.0))
    return dataclasses.replace(base, **changes)


def test_the_model_behaves_as_documented():
    n = 20_000
    gen = jax.jit(W.generate, static_argnums=2)
    bars = jax.device_get(gen(jax.random.key(7), _fixed(), n))
    mask = bars.mask
    assert mask.sum() == 10 and not mask[10:].any()
    assert (bars.close[:, 10:] == 1).all() and (bars.volume[:, 10:] == 0).all()
    assert (bars.low <= np.minimum(bars.open, bars.close) + 1e-3).all()
    assert (bars.high >= np.maximum(bars.open, bars.close) - 1e-3).all()
    # The signal: demeaned over the world's assets, AR(1) with the world's persistence.
    sig = bars.signal[:, :10]
    np.testing.assert_allclose(sig.sum(1), 0, atol=1e-4)
    assert not bars.signal[:, 10:].any()
    phi = np.sum(sig[1:] * sig[:-1]) / np.sum(sig[:-1] ** 2)
    assert abs(phi - 0.98) < 0.01
    # Regimes persist for about `duration` bars and each has its volatility.
    switches = np.count_nonzero(np.diff(bars.regime))
    assert 0.7 * n / 100 < switches < 1.3 * n / 100
    r = np.diff(np.log(bars.close[:, :10]), axis=0)
    index = r.mean(1)
    vol = [index[bars.regime[1:] == k].std() for k in range(4)]
    assert vol[2] > vol[1] > vol[0] > vol[3], vol
    # The signal pays: next bar's cross-sectional return follows today's signal.
    demeaned = r - r.mean(1, keepdims=True)
    corr = np.corrcoef(sig[:-1].ravel(), demeaned.ravel())[0, 1]
    assert corr > 0.02, corr
    none = jax.device_get(gen(jax.random.key(7), _fixed(signal_strength=jnp.float32(0)), n))
    r0 = np.diff(np.log(none.close[:, :10]), axis=0)
    corr0 = np.corrcoef(none.signal[:-1, :10].ravel(),
                        (r0 - r0.mean(1, keepdims=True)).ravel())[0, 1]
    assert abs(corr0) < 0.01, corr0


def test_prior_refuses_impossible_ranges():
    with pytest.raises(ValueError, match="n_assets"):
        W.WorldPrior(n_assets=(5, 4))
    with pytest.raises(ValueError, match="tail_df"):
        W.WorldPrior(tail_df=(2.0, 5.0))
    with pytest.raises(ValueError, match="per-regime"):
        W.WorldPrior(vol_low=(0.1, 0.1, 0.1))


def test_the_worlds_command_prints_and_plots(tmp_path, capsys):
    out = tmp_path / "w.png"
    # The fixture's shapes: the compiled program is shared.
    assert W.main(["--worlds", "6", "--bars", str(N_BARS), "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"train worlds 0..5 of seed 0, {N_BARS} bars each" in text
    assert out.stat().st_size > 10_000
    assert W.main(["--worlds", "6", "--bars", str(N_BARS), "--stream", "test", "--json"]) == 0
    assert '"stream": "test"' in capsys.readouterr().out


# --- a pool of worlds as the portfolio env's market -------------------------------------

POOL_BARS = 120  # 100 bars per world after the feature window


@pytest.fixture(scope="module")
def pool():
    market, settings = W.pool_market(0, "train", range(4), POOL_BARS)
    return market, settings


def test_regimes_count_only_the_assets_that_exist():
    from jaxtrade.envs import regimes

    scores = jax.random.normal(jax.random.key(0), (8, 4))
    current = jnp.full(9, 1 / 9)
    every = jnp.ones(8, bool)
    some = jnp.array([1, 0, 1, 1, 0, 1, 1, 0], bool)
    for action in range(regimes.N_REGIMES):
        a = jnp.int32(action)
        np.testing.assert_array_equal(regimes.target_weights(a, scores, current),
                                      regimes.target_weights(a, scores, current, every))
        w = np.asarray(regimes.target_weights(a, scores, current, some))
        np.testing.assert_allclose(w.sum(), 1, rtol=1e-6)
        if action != regimes.Regime.HOLD:
            assert not w[:8][~np.asarray(some)].any(), regimes.NAMES[action]
    ew = np.asarray(regimes.target_weights(jnp.int32(regimes.Regime.EQUAL_WEIGHT), scores,
                                           current, some))
    np.testing.assert_allclose(ew[:8][np.asarray(some)], 1 / 5, rtol=1e-6)  # all 5 that exist
    mom = np.asarray(regimes.target_weights(jnp.int32(regimes.Regime.MOMENTUM), scores,
                                            current, some))
    assert np.count_nonzero(mom[:8]) == 3  # top 50% of 5 assets: ceil(2.5)


def test_pool_market_lays_worlds_end_to_end(pool):
    market, settings = pool
    world_bars = POOL_BARS - F.WINDOW
    assert market.world_bars == world_bars and market.n_worlds == 4
    data = jax.device_get(market.data)
    assert data.features.shape == (4 * world_bars, 24, len(F.FEATURE_NAMES))
    for w in range(4):
        rows = slice(w * world_bars, (w + 1) * world_bars)
        n = int(settings.n_assets[w])
        assert (data.asset_mask[rows].sum(1) == n).all()
        assert not data.features[rows][:, n:].any() and np.isfinite(data.features).all()
    # The training pool fits the normalisation; its features are about standard.
    assert abs(float(data.features[data.asset_mask].mean())) < 0.3
    # A validation pool takes the training pool's statistics and draws other worlds.
    val, _ = W.pool_market(0, "validation", range(4), POOL_BARS, stats=market.stats)
    assert val.stats is market.stats
    assert not np.array_equal(np.asarray(val.data.price), data.price)


def test_pool_episodes_stay_in_one_world_and_never_hold_padding(pool):
    from jaxtrade.envs import PortfolioEnv

    market, _ = pool
    env = PortfolioEnv(market)
    params = env.make_params("train", episode_length=32)
    assert env.obs_dim == 24 * (len(F.FEATURE_NAMES) + 2) + 3
    n = 256

    def run(key):
        k_reset, k_steps, k_act = jax.random.split(key, 3)
        _, state = env.reset(k_reset, params)

        def body(state, ks):
            k_step, k_a = ks
            action = jax.random.randint(k_a, (), 0, env.num_actions)
            obs, nxt, _, done, info = env.step(k_step, state, action, params)
            return nxt, (state.t, done, info["weights"], obs)

        ks = (jax.random.split(k_steps, 64), jax.random.split(k_act, 64))
        return jax.lax.scan(body, state, ks)[1]

    t, done, weights, obs = jax.device_get(jax.jit(jax.vmap(run))(
        jax.random.split(jax.random.key(1), n)))
    world = t // market.world_bars
    # Within an episode (between dones) the world never changes, and t + 1 stays inside it.
    same_episode = ~done[:, :-1]
    assert (world[:, 1:][same_episode] == world[:, :-1][same_episode]).all()
    assert ((t + 1) // market.world_bars == world).all()
    assert len(np.unique(world)) == 4
    mask = np.asarray(market.data.asset_mask)[t]  # [n, 64, 24]
    assert not weights[..., :24][~mask].any()
    # Each asset's token ends with whether it exists.
    tokens, _ = env.obs_layout.split(jnp.asarray(obs))
    exists = np.asarray(tokens[..., env.obs_layout.mask_token])
    assert set(np.unique(exists)) <= {0.0, 1.0}


def test_the_equal_weight_benchmark_shifts_every_action_by_the_index_alone(pool):
    """reward_benchmark = equal_weight subtracts the log growth of the equal-weight index
    of the assets that exist (not the padding) over the held bar: the same amount for every
    action, so the best policy is unchanged; evaluation passes keep the plain reward."""
    from jaxtrade.config import EnvConfig, PortfolioConfig
    from jaxtrade.envs import PortfolioEnv
    from jaxtrade.evaluation import pass_params

    market, settings = pool
    env = PortfolioEnv(market)
    plain = env.make_params("train", episode_length=32)
    relative = env.make_params("train", episode_length=32, reward_benchmark="equal_weight")
    assert float(plain.benchmark_weight) == 0 and float(relative.benchmark_weight) == 1
    step = jax.jit(env.step_env)
    price = np.asarray(market.data.price, np.float64)
    mask = np.asarray(market.data.asset_mask)
    assert min(settings.n_assets) < 24  # some worlds have padding (excluded from the index)
    for world in range(4):
        state = env.reset_env(jax.random.key(world), plain)[1]
        state = state.replace(t=jnp.int32(world * market.world_bars + 40))
        t = int(state.t)
        exists = mask[t]
        assert exists.sum() == int(settings.n_assets[world])
        index = np.log(np.mean(price[t + 1, exists] / price[t, exists]))
        for action in range(env.num_actions):
            key = jax.random.key(action)
            _, _, r0, _, info = step(key, state, jnp.int32(action), plain)
            _, _, r1, _, _ = step(key, state, jnp.int32(action), relative)
            assert float(r0) == pytest.approx(float(info["log_return"]), abs=1e-7)
            assert float(r0) - float(r1) == pytest.approx(index, abs=2e-6)
    with pytest.raises(ValueError, match=r"reward_benchmark must be one of none\|equal_weight"):
        env.make_params("train", episode_length=32, reward_benchmark="index")
    cfg = EnvConfig(portfolio=PortfolioConfig(reward_benchmark="equal_weight"))
    assert float(pass_params(env, cfg, 1, 50).benchmark_weight) == 0


@pytest.mark.parametrize("encoder", ["set", "flat"])
def test_the_trainer_learns_on_a_pool_and_a_fresh_pool_does_not_retrace(pool, encoder):
    from jaxtrade.config import Config, resolve, with_values
    from jaxtrade.trainer import make_train

    market, _ = pool
    # tests/test_worlds_run.py's WORLDS sizes and its 2 iterations per call, on a pool of the
    # same shape: the set encoder's program is that run's (one compile in a session, shared
    # through the persistent cache); every call here runs the one program of k = 2.
    cfg = resolve(with_values(Config(), hidden_dim=8, n_gru_layers=1, n_envs=8, n_steps=8,
                              n_minibatches=2, ppo_epochs=1, critic_epochs=1,
                              episode_length=32, precision="fp32", encoder=encoder), "cpu")
    trainer = make_train(cfg, market)
    state, metrics = trainer.run(trainer.initial_state(jax.random.key(0)), 2)
    assert np.isfinite(np.asarray(metrics["policy_loss"])).all()
    state, _ = trainer.run(state, 2)  # the program for a state it returned itself
    # Refreshing the pool: new worlds of the same shape swap in as an argument.
    fresh, _ = W.pool_market(0, "train", range(4, 8), POOL_BARS, stats=market.stats)
    params = jax.device_put(trainer.env_params.replace(market=fresh.data),
                            jax.tree.map(lambda x: x.sharding, trainer.env_params))
    entries = trainer.program._cache_size()
    state, fresh_metrics = trainer.run(state, 2, params)
    assert trainer.program._cache_size() == entries
    assert np.isfinite(np.asarray(fresh_metrics["policy_loss"])).all()


def test_world_walks_pass_through_every_world_of_a_pool(pool):
    from jaxtrade.config import Config, EnvConfig, with_values
    from jaxtrade.envs import PortfolioEnv
    from jaxtrade.evaluation import (
        STRATEGIES,
        make_strategy_walk,
        make_world_walks,
        pass_params,
        walk_key,
        world_pass_params,
    )
    from jaxtrade.networks import init_params, make_network

    market, settings = pool
    env = PortfolioEnv(market)
    cfg = with_values(Config(), hidden_dim=8, n_gru_layers=1, precision="fp32",
                      encoder="set")
    network = make_network(cfg.network, env.obs_dim, env.num_actions, "cpu",
                           layout=env.obs_layout)
    params = init_params(network, jax.random.key(0))
    world_params = world_pass_params(env, EnvConfig())
    values, metrics = jax.device_get(jax.jit(make_world_walks(network, env))(
        params, world_params, walk_key(0), 252.0))
    tw = market.world_bars
    assert values.shape == (4, len(STRATEGIES), tw - 1)
    # World 2's pass is the single pass of its bars.
    single = pass_params(env, EnvConfig(), 2 * tw + 1, 3 * tw - 1)
    walk, one = jax.jit(make_strategy_walk(network, env, tw - 2))(params, single, walk_key(0),
                                                                  252.0)
    np.testing.assert_allclose(values[2], np.asarray(walk.values), rtol=1e-6)
    np.testing.assert_allclose(metrics["sharpe"][2], np.asarray(one["sharpe"]), rtol=1e-5)
    # Buy and hold: the world's own assets at equal weight, costs aside, no padding held.
    price = np.asarray(market.data.price)
    for w in range(4):
        n = int(settings.n_assets[w])
        first, last = w * tw + 1, (w + 1) * tw - 1
        index = np.mean(price[last, :n] / price[first, :n])
        held = values[w, STRATEGIES.index("buy_and_hold"), -1]
        assert abs(held / index - 1) < 0.03, (w, held, index)

"""The funding-rate arbitrage env: golden examples from exchange documentation, the numpy
reference step on random states, masks, and the accounting identity on random rollouts."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxtrade.envs.funding import (
    HOLD,
    N_ACTIONS,
    N_OPEN,
    N_SLOTS,
    REWARD_SCALE,
    SIZES,
    FundingEnv,
    FundingMarket,
    build_data,
    fund_apr,
    liquidation_prices,
)
from tests.envs import funding_reference as ref


def make_panel(T=240, S=4, E=3, vol=0.01, seed=0, intervals=(8, 8, 1), start="2025-01-01"):
    """A small hand-rolled panel: GBM prices per symbol with a small basis per exchange,
    noisy positive rates, symbol 0 not listed on the last exchange."""
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=T, freq="h")
    base = 100 * np.exp(np.cumsum(rng.normal(0, vol, (T, S)), 0))
    price = base[:, :, None] * (1 + rng.normal(0, 0.001, (T, S, E)))
    rate = 0.0001 + rng.normal(0, 0.0003, (T, S, E))
    listed = np.ones((T, S, E), bool)
    listed[:, 0, E - 1] = False
    price[~listed] = np.nan
    rate[~listed] = np.nan
    return types.SimpleNamespace(
        times=times, price=price, rate=rate, volume=np.full((T, S, E), 1e7), listed=listed,
        interval_hours=np.asarray(intervals), n_hours=T, n_symbols=S, n_exchanges=E)


@pytest.fixture(scope="module")
def env():
    return FundingEnv(FundingMarket(make_panel(), 160, 200))


@pytest.fixture(scope="module")
def wild():
    """Volatile prices (5% an hour) and high leverage: liquidations and stops happen."""
    return FundingEnv(FundingMarket(make_panel(vol=0.05, seed=3), 160, 200))


@pytest.fixture(scope="module")
def fns(env):
    """The env's functions, compiled once for every test here: an env instance holds only
    shapes, so `env`'s functions serve `wild`'s params too (same shapes)."""
    return types.SimpleNamespace(reset=jax.jit(env.reset), step=jax.jit(env.step),
                                 step_env=jax.jit(env.step_env),
                                 mask=jax.jit(env.action_mask))


# ------------------------------------------------------------------ golden examples
def test_liquidation_price_matches_bybit_usdt_examples():
    """Bybit, "Liquidation Price (USDT Contract)", isolated margin: 1 BTC at 20,000 USDT,
    50x, MMR 0.5%, no extra margin: IM 400, MM 100, long LP = 20,000 - (400 - 100) =
    19,700; short LP = 20,000 + 300 = 20,300. Extra margin (here, funding received) moves
    the price away by extra / size."""
    im = 20000.0 / 50
    long, short = liquidation_prices(20000.0, 20000.0, 1.0, im, im, 0.005)
    assert float(long) == pytest.approx(19700.0)
    assert float(short) == pytest.approx(20300.0)
    long, short = liquidation_prices(20000.0, 20000.0, 1.0, im + 50, im + 50, 0.005)
    assert float(long) == pytest.approx(19650.0)
    assert float(short) == pytest.approx(20350.0)
    # The closed form: entry x (1 - 1/L + MMR) and entry x (1 + 1/L - MMR).
    assert float(liquidation_prices(1.0, 1.0, 1.0, 1 / 8, 1 / 8, 0.005)[0]) == pytest.approx(
        1 - 1 / 8 + 0.005)


def test_fund_apr_annualises_each_leg_at_its_own_interval():
    # Short leg 0.03% per 8 h (1,095 settlements a year), long leg 0.001% per hour.
    assert fund_apr(0.00001, 0.0003, 1.0, 8.0) == pytest.approx(100 * (0.3285 - 0.0876))


def test_funding_payment_is_notional_times_rate_at_settlement():
    """Binance: funding fee = position value (mark x size) x rate; longs pay shorts when
    the rate is positive. One position, prices constant, one 8 h settlement at 08:00."""
    T, S, E = 40, 1, 2
    panel = types.SimpleNamespace(
        times=pd.date_range("2025-01-01", periods=T, freq="h"),
        price=np.full((T, S, E), 50000.0), rate=np.zeros((T, S, E)),
        volume=np.full((T, S, E), 1e8), listed=np.ones((T, S, E), bool),
        interval_hours=np.array([8, 8]), n_hours=T, n_symbols=S, n_exchanges=E)
    panel.rate[:, 0, 0] = -0.0002  # long leg's venue: negative, so the long receives
    panel.rate[:, 0, 1] = 0.0001  # short leg's venue: positive, so the short receives
    env = FundingEnv(FundingMarket(panel, 30, 35))
    params = env.make_params("train", start=7, fill_slippage=0.0, taker_fee=0.0,
                             leverage_min=2.0, leverage_max=2.0, utilisation_min=0.5,
                             utilisation_max=0.5, positions_min=1, positions_max=1,
                             buffer_min=0.0, buffer_max=0.0)
    _, state = env.reset(jax.random.key(0), params)
    assert int(state.t) == 7
    top = np.asarray(params.data.top[7, 0])
    assert tuple(top) == (0, 0, 1)  # long the negative rate, short the positive one
    a = 1 + 0 * len(SIZES) + SIZES.index(1.0)
    _, state, reward, _, info = env.step_env(jax.random.key(1), state, a, params)
    # Budget 0.5 x 1 / 1; each leg 0.25 margin, 0.5 notional = 1e-5 BTC at 50,000.
    size = 0.5 / 50000.0
    assert float(state.slots.size[0]) == pytest.approx(size)
    expected = size * 50000.0 * 0.0002 + size * 50000.0 * 0.0001  # both legs receive
    assert float(info["funding"]) == pytest.approx(expected, rel=1e-5)
    assert float(state.slots.margin_long[0]) == pytest.approx(0.25 + size * 50000 * 0.0002,
                                                              rel=1e-6)
    assert float(reward) == pytest.approx(REWARD_SCALE * expected, rel=1e-4)
    # No settlement at 09:00.
    _, _, _, _, info = env.step_env(jax.random.key(2), state, HOLD, params)
    assert float(info["funding"]) == 0.0


def test_build_data_ranks_opportunities_and_marks_settlements():
    panel = make_panel(T=30)
    data = build_data(panel)
    hour = 5
    ann = np.where(panel.listed[hour], panel.rate[hour], np.nan) * 8760 / panel.interval_hours
    best = []
    for s in range(panel.n_symbols):
        for lx in range(panel.n_exchanges):
            for sx in range(panel.n_exchanges):
                apr = 100 * (ann[s, sx] - ann[s, lx])
                if lx != sx and np.isfinite(apr) and apr > 0:
                    best.append((apr, s, lx, sx))
    best.sort(key=lambda r: -r[0])
    got = [tuple(int(v) for v in row) for row in data.top[hour][data.top_present[hour]]]
    assert got == [r[1:] for r in best[:len(got)]]
    assert len(got) == min(10, len(best))
    # 8 h venues settle at 00, 08, 16; the 1 h venue every hour.
    hours = np.asarray(panel.times.hour)
    np.testing.assert_array_equal(data.settles[:, 0], hours % 8 == 0)
    assert data.settles[:, 2].all()
    assert np.isfinite(data.price).all() and (data.price > 0).all()


# ------------------------------------------------------------- reference and masks
def _numpy_state(state):
    s = jax.tree.map(np.asarray, state)
    slots = [{f: (v[i].item()) for f, v in vars(s.slots).items() if not f.startswith("_")}
             for i in range(N_SLOTS)]
    return dict(t=int(s.t), step=int(s.step), cash=float(s.cash), equity=float(s.equity),
                slots=slots, liquidations=int(s.liquidations),
                config=dict(leverage=float(s.config.leverage),
                            utilisation=float(s.config.utilisation),
                            max_positions=int(s.config.max_positions),
                            buffer=float(s.config.buffer)))


def _random_state(fns, params, seed, n_steps):
    """A state reached by `n_steps` uniformly random valid actions from a reset."""
    key = jax.random.key(seed)
    _, state = fns.reset(key, params)
    for i in range(n_steps):
        mask = np.asarray(fns.mask(state, params))
        action = np.random.default_rng(seed * 1000 + i).choice(np.flatnonzero(mask))
        _, state, _, done, _ = fns.step(jax.random.fold_in(key, i), state, action, params)
    return state


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_steps=st.integers(0, 12), pick=st.integers(0, 10_000),
       wild_market=st.booleans())
def test_step_matches_the_numpy_reference(env, wild, fns, seed, n_steps, pick, wild_market):
    params = (wild if wild_market else env).make_params("train", buffer_max=0.02,
                                                        episode_length=8)
    state = _random_state(fns, params, seed, n_steps)
    mask = np.asarray(fns.mask(state, params))
    valid = np.flatnonzero(mask)
    action = int(valid[pick % len(valid)])
    _, new, reward, _, info = fns.step_env(jax.random.key(0), state, action, params)
    data = {k: np.asarray(v, np.float64) for k, v in vars(params.data).items()
            if not k.startswith("_")}
    data["top"] = np.asarray(params.data.top)
    data["settles"] = np.asarray(params.data.settles)
    p = {k: float(getattr(params, k)) for k in ("taker_fee", "slippage", "mmr",
                                                 "liquidation_penalty", "episode_length")}
    want, want_reward, flows = ref.step(data, p, _numpy_state(state), action)
    got = _numpy_state(new)
    tol = dict(rel=1e-5, abs=1e-6)
    assert got["cash"] == pytest.approx(want["cash"], **tol)
    assert got["equity"] == pytest.approx(want["equity"], **tol)
    assert got["liquidations"] == want["liquidations"]
    assert float(reward) == pytest.approx(want_reward, rel=1e-4, abs=2e-2)
    for k in ("funding", "price_pnl", "fees", "slippage", "liquidation_loss"):
        assert float(info[k]) == pytest.approx(flows[k], **tol), k
    for g, w in zip(got["slots"], want["slots"], strict=True):
        assert g["open"] == w["open"]
        if w["open"]:
            for f in ("symbol", "long_ex", "short_ex", "alive_long", "alive_short"):
                assert g[f] == w[f], f
            for f in ("size", "entry_long", "entry_short", "margin_long", "margin_short",
                      "funding"):
                assert g[f] == pytest.approx(w[f], rel=1e-5, abs=1e-9), f


def test_mask_rules(env):
    """Opening needs a free slot under the config's max positions, margin under the target
    utilisation and a pair not held; closing needs an open slot."""
    params = env.make_params("train", positions_min=2, positions_max=2, utilisation_min=0.4,
                             utilisation_max=0.4, leverage_min=3.0, leverage_max=3.0)
    _, state = env.reset(jax.random.key(0), params)
    mask = np.asarray(env.action_mask(state, params))
    assert mask[HOLD] and not mask[N_OPEN + 1:].any()  # nothing to close
    present = np.asarray(params.data.top_present[state.t])
    assert (mask[1:N_OPEN + 1].reshape(-1, len(SIZES)).any(1) == present).all()
    full = 1 + 0 * len(SIZES) + SIZES.index(1.0)
    _, state, _, _, _ = env.step_env(jax.random.key(1), state, full, params)
    mask = np.asarray(env.action_mask(state, params))
    assert mask[N_OPEN + 1]  # slot 0 can close
    # Half the budget is used: another full-size position fits, a pair already held not.
    held = (np.asarray(state.slots.symbol[0]), np.asarray(state.slots.long_ex[0]),
            np.asarray(state.slots.short_ex[0]))
    top = np.asarray(params.data.top[state.t])
    for k in range(len(top)):
        row = mask[1 + k * len(SIZES):1 + (k + 1) * len(SIZES)]
        if tuple(top[k]) == tuple(int(h) for h in held):
            assert not row.any()
    s2 = state
    for a in np.flatnonzero(mask[1:N_OPEN + 1]) + 1:
        _, s2, _, _, _ = env.step_env(jax.random.key(2), state, int(a), params)
        break
    mask2 = np.asarray(env.action_mask(s2, params))
    assert not mask2[1:N_OPEN + 1].any()  # two positions: the config's maximum
    assert mask2[N_OPEN + 1] and mask2[N_OPEN + 2] and not mask2[N_OPEN + 3:].any()


def test_masked_actions_are_never_sampled(env):
    """Through the engine's rollout with a fresh network: every action taken was valid."""
    from jaxtrade.config import Config, resolve, with_values
    from jaxtrade.networks import init_params
    from jaxtrade.rollout import initial_carry, make_rollout
    from jaxtrade.trainer import build_network

    cfg = resolve(with_values(Config(), hidden_dim=16, n_gru_layers=1, precision="fp32",
                              market="fixed", episode_length=24), "cpu")
    network = build_network(cfg, env)
    params = env.make_params("train")
    net_params = init_params(network, jax.random.key(0))
    rollout = make_rollout(network, env, 48)
    carry = initial_carry(network, env, params, jax.random.key(1), 16, stagger=True)
    _, traj = jax.jit(rollout)(net_params, params, carry, jax.random.key(2))
    action, mask = np.asarray(traj.action), np.asarray(traj.mask)
    assert mask.shape == (48, 16, N_ACTIONS)
    assert np.take_along_axis(mask, action[..., None], -1).all()
    assert (action != HOLD).any() and (action > N_OPEN).any()  # it opens and closes


# ------------------------------------------------------------ accounting identity
@pytest.fixture(scope="module")
def random_rollouts(env):
    """jit: (params, keys [n]) -> per step of 48 random valid actions in each of n envs:
    the identity's error, equity, liquidations, stops (compiled once for both markets)."""
    e = env

    def one(params, key):
        _, state = e.reset(key, params)

        def body(state, k):
            k_a, k_s = jax.random.split(k)
            mask = e.action_mask(state, params)
            a = jax.random.categorical(k_a, jnp.where(mask, 0.0, -jnp.inf))
            _, new, _, done, info = e.step_env(k_s, state, a, params)
            flows = (info["funding"] + info["price_pnl"] - info["fees"] - info["slippage"]
                     - info["liquidation_loss"])
            err = new.equity - state.equity - flows
            _, reset = e.reset(jax.random.fold_in(k, 7), params)
            state = jax.tree.map(lambda a, b: jnp.where(done, a, b), reset, new)
            return state, (err, new.equity, info["liquidations"], info["stops"])

        return jax.lax.scan(body, state, jax.random.split(jax.random.fold_in(key, 1), 48))[1]

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


@pytest.mark.parametrize("market", ["env", "wild"])
def test_accounting_identity_on_random_rollouts(market, request, random_rollouts):
    """equity[t+1] - equity[t] = funding + price PnL - fees - slippage - liquidation losses
    at every step of 64 envs x 48 random valid steps (liquidations included)."""
    params = request.getfixturevalue(market).make_params(
        "train", leverage_min=5.0, leverage_max=10.0, buffer_max=0.01)
    err, equity, liq, stops = random_rollouts(params, jax.random.split(jax.random.key(3), 64))
    assert np.abs(np.asarray(err)).max() < 2e-5 * np.abs(np.asarray(equity)).max()
    if market == "wild":
        assert int(np.asarray(liq).sum()) > 0 and int(np.asarray(stops).sum()) > 0


def test_config_is_drawn_per_episode_and_observed(env, fns):
    params = env.make_params("train")
    obs, states = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(
        jax.random.split(jax.random.key(0), 256), params)
    lev = np.asarray(states.config.leverage)
    assert 1.0 <= lev.min() and lev.max() <= 10.0 and lev.std() > 1.0
    pos = np.asarray(states.config.max_positions)
    assert set(pos) == {1, 2, 3, 4, 5}
    np.testing.assert_allclose(np.asarray(obs)[:, -4], lev / 10.0, rtol=1e-6)
    fixed = env.make_params("train", leverage_min=3.0, leverage_max=3.0, positions_min=3,
                            positions_max=3)
    _, s = fns.reset(jax.random.key(1), fixed)
    assert float(s.config.leverage) == 3.0 and int(s.config.max_positions) == 3


def test_a_funding_run_defaults_to_one_day_episodes(env):
    """Without --episode-length, a funding run trains the env's own one-day episodes."""
    import inspect

    from jaxtrade.config import Config, resolve, with_values

    cfg = resolve(with_values(Config(), name="funding"), "cpu")
    assert cfg.env.episode_length == FundingEnv.default_episode_length == 24
    signature = inspect.signature(FundingEnv.make_params).parameters
    assert signature["episode_length"].default == 24
    assert int(env.make_params("train", **cfg.env.params_kwargs()).episode_length) == 24


def test_bad_settings_are_refused(env):
    with pytest.raises(ValueError, match="unknown funding env settings"):
        env.make_params("train", levrage=3)
    with pytest.raises(ValueError, match="positions_max must be"):
        env.make_params("train", positions_max=9)
    with pytest.raises(ValueError, match="positions_min must be <="):
        env.make_params("train", positions_min=4, positions_max=2)
    with pytest.raises(ValueError, match="leaves no room"):
        env.make_params("train", leverage_max=500.0)
    with pytest.raises(ValueError, match="too few"):
        env.make_params("validation", episode_length=100)


# ------------------------------------------------------------------ the trading report
def test_baselines_take_valid_actions_and_never_trades_nothing(env):
    """The report's rule baselines through days of the validation hours under a fixed
    config: every action is valid, never-trade ends every day at exactly 1, greedy and the
    threshold rule open positions, and every day ends flat (the env closes what is open
    at the day's last hour)."""
    from jaxtrade.funding_report import day_metrics, day_params, rule_action

    days, axes, starts = day_params(env, "validation", 12, (3.0, 0.6, 3), {})
    assert len(starts) == 3 and (np.diff(starts) == 12).all()

    def walk(name):
        def one(params):
            _, state = env.reset(jax.random.key(0), params)

            def body(state, k):
                action = rule_action(name, env, state, params)
                ok = env.action_mask(state, params)[action]
                _, new, _, _, info = env.step_env(k, state, action, params)
                return new, (ok, action, info)

            return jax.lax.scan(body, state, jax.random.split(jax.random.key(1), 12))[1]

        return jax.jit(jax.vmap(one, in_axes=(axes,)))(days)

    for name in ("never", "greedy", "threshold"):
        ok, action, info = walk(name)
        assert np.asarray(ok).all(), name
        info = {k: np.asarray(v, np.float64) for k, v in info.items()}
        m = day_metrics(info, 12)
        if name == "never":
            assert m["total_return"] == 0.0 and m["positions_opened"] == 0
        else:
            assert m["positions_opened"] > 0
            assert not info["positions"][:, -1].any()  # each day ends flat
            assert not info["exit_cost"][:, -1].any()
            np.testing.assert_allclose(
                m["daily_returns"], info["equity"][:, -1] - info["exit_cost"][:, -1] - 1.0)
            assert m["fees"] > 0

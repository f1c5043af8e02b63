"""`jaxtrade.evaluation` in small pieces: a pass's params, the baselines' actions and the one
to beat, the market index, and the episode evaluation every env gets by default (the
trading walks end to end are tests/test_evaluate.py's)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade.config import Config, with_values
from jaxtrade.envs import N_REGIMES, Regime
from jaxtrade.evaluation import (
    BASELINES,
    CONTINUOUS,
    EPISODE_ENVS,
    REBALANCE_EVERY,
    EvaluationError,
    baseline_actions,
    choose_baseline,
    make_episode_evaluator,
    make_world_evaluator,
    market_returns,
    pass_params,
    world_baselines,
)
from jaxtrade.networks import init_params, make_network
from tests.envs.masked import RIGHT, SIZE, STAY, MaskedWalk

STEP_REWARD, GOAL_REWARD = -0.01, 1.0  # the masked walk's rewards


# ----------------------------------------------------------------------- a pass's params
@pytest.mark.parametrize("first, last", [(0, 10), (10, 10), (12, 10), (10, None)])
def test_pass_params_refuses_bars_outside_the_market(small_env, first, last):
    last = small_env.n_bars if last is None else last
    with pytest.raises(EvaluationError, match=rf"a pass needs 1 <= first < last < "
                                              rf"{small_env.n_bars} bars, got first={first}, "
                                              rf"last={last}$"):
        pass_params(small_env, Config().env, first, last)


def test_pass_params_fix_the_bars_and_switch_off_episode_ends(small_env):
    """Any bars of the market, whatever range they are in: the start is fixed, the end is the
    last bar, and neither truncation nor ruin cuts the pass; the frictions are the run's."""
    env_config = with_values(Config(), episode_length=32).env
    last = small_env.n_bars - 1
    params = pass_params(small_env, env_config, 1, last)
    assert (int(params.start_min), int(params.start_max), int(params.end)) == (1, 1, last)
    assert int(params.episode_length) == CONTINUOUS and float(params.ruin_fraction) == 0.0
    friction = env_config.params_kwargs()
    for name in ("slippage", "spread", "impact", "turnover_penalty", "drawdown_penalty"):
        assert float(getattr(params, name)) == pytest.approx(friction[name]), name


# ------------------------------------------------------------------------------ baselines
@pytest.mark.parametrize("n_steps", [1, 23])
def test_baseline_actions_are_each_strategys_regime_on_its_rebalance_bars(n_steps):
    actions = baseline_actions(n_steps)
    assert actions.shape == (len(BASELINES), n_steps) and actions.dtype == np.int32
    assert len(BASELINES) == 2 + 10 * len(REBALANCE_EVERY) == 32
    rows = dict(zip(BASELINES, actions, strict=True))
    assert (rows["cash"] == Regime.FULL_CASH).all()
    assert list(rows["buy_and_hold"]) == [Regime.EQUAL_WEIGHT] + [Regime.HOLD] * (n_steps - 1)
    for name in BASELINES[2:]:
        regime, k = name.split("/")
        trades = np.flatnonzero(rows[name] != Regime.HOLD)
        assert list(trades) == list(range(0, n_steps, int(k))), name
        assert (rows[name][trades] == Regime[regime]).all(), name
    assert {name.split("/")[0] for name in BASELINES[2:]} == {
        r.name for r in Regime if r not in (Regime.HOLD, Regime.FULL_CASH)}
    assert 0 <= actions.min() and actions.max() < N_REGIMES


def test_choose_baseline_takes_the_best_sharpe_and_the_earliest_on_a_tie():
    sharpes = dict.fromkeys(BASELINES, -1.0)
    assert choose_baseline(sharpes) == "cash"  # all tied: the first of BASELINES
    best = {**sharpes, "RISK_ON/20": 0.3, "MOMENTUM/5": 0.2}
    assert choose_baseline(best) == "RISK_ON/20"  # the highest, wherever it is
    tie = {**best, "EQUAL_WEIGHT/1": 0.3}  # RISK_ON/20 comes later in BASELINES
    assert BASELINES.index("EQUAL_WEIGHT/1") < BASELINES.index("RISK_ON/20")
    assert choose_baseline(tie) == "EQUAL_WEIGHT/1"


def test_market_returns_are_the_equal_weight_index_of_the_pass(small_env, small_params):
    first, n_steps = 37, 50
    params = small_params.replace(start_min=jnp.int32(first))
    got = np.asarray(jax.jit(market_returns, static_argnums=1)(params, n_steps))
    price = np.asarray(small_params.market.price, np.float64)
    expected = [np.mean(price[t + 1] / price[t]) - 1 for t in range(first, first + n_steps)]
    assert got.shape == (n_steps,)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------- compiled walks
HEALTH = {"explained_variance": 0.5, "entropy": 1.0, "approx_kl": 0.01, "clip_frac": 0.1}


def test_worlds_won_is_the_share_of_worlds_where_the_policy_beats_the_chosen_baseline():
    """The share won counts the worlds where the policy's Sharpe ratio (world_sharpe) is
    above the baseline's chosen on these worlds (`world_baselines`), whatever the
    parameters: the baseline's Sharpe ratios are fixed in the compiled program, the
    policy's are not."""
    from jaxtrade import worlds as W
    from jaxtrade.envs import PortfolioEnv

    market, _ = W.pool_market(0, "validation", range(6), 120)
    env = PortfolioEnv(market)
    cfg = with_values(Config(), hidden_dim=8, n_gru_layers=1, precision="fp32", encoder="set")
    network = make_network(cfg.network, env.obs_dim, env.num_actions, "cpu",
                           layout=env.obs_layout)
    params = init_params(network, jax.random.key(0))
    evaluate = make_world_evaluator(network, env, cfg.env, 252.0, 0, params)
    base = world_baselines(env, cfg.env, 0, 252.0)
    target = base["metrics"]["sharpe"][:, BASELINES.index(base["name"])]
    shares = set()
    perturb = jax.jit(lambda p, k: jax.tree.map(lambda x: x + jax.random.normal(k, x.shape), p))
    for key in jax.random.split(jax.random.key(1), 3):
        noisy = perturb(params, key)
        out = jax.device_get(evaluate(noisy, HEALTH))
        assert out["baseline"] == base["name"] and out["world_sharpe"].shape == (6,)
        won = np.mean(out["world_sharpe"] > target, dtype=np.float32)
        assert out["worlds_won"] == won
        shares.add(float(won))
    assert len(shares) > 1  # the parameters decide it, not a share baked in


# ------------------------------------------------------------ the default: episodes
VALIDATION_LENGTH = 7  # SplitWalk's validation episodes: long enough to reach the goal


class SplitWalk(MaskedWalk):
    """The masked walk with shorter validation episodes, so that a test sees which params
    the default evaluator walks."""

    def make_params(self, split="train", episode_length=16, **_ignored):
        return super().make_params(
            split, VALIDATION_LENGTH if split == "validation" else episode_length)


@pytest.fixture(scope="module")
def walker():
    """A tiny MLP on the masked walk, and parameters that always go right or always stay."""
    env = SplitWalk()
    network = make_network(with_values(Config(), kind="mlp", hidden_dim=8).network,
                           env.obs_dim, env.num_actions, "cpu")
    params = init_params(network, jax.random.key(0))

    def prefer(action):
        out = params["policy_head"]["out"]
        return {**params, "policy_head": {**params["policy_head"], "out": {
            **out, "bias": out["bias"].at[action].set(50.0)}}}

    return env, network, prefer(RIGHT), prefer(STAY)


def test_the_default_evaluator_scores_first_episodes_of_the_validation_params(walker):
    """`Environment.make_evaluator` without an override: the greedy policy's first episode in
    each of 64 envs of the validation params; score = mean return. Going right from cell p
    reaches the goal in SIZE - 1 - p steps; staying is cut by the end of a validation episode
    (shorter than a training one)."""
    env, network, right, stay = walker
    env_config = with_values(Config(), name="masked-walk", episode_length=16).env
    evaluate = env.make_evaluator(network, env_config, 0, right)
    out = {k: np.asarray(v).item() for k, v in evaluate(right, {}).items()}
    assert set(out) == {"return_mean", "return_std", "length_mean", "episodes", "score"}
    assert out["episodes"] == EPISODE_ENVS and out["score"] == out["return_mean"]
    # Starts are uniform on cells 0..SIZE-2 and no episode after the first counts, so the
    # mean length is that of first episodes: within 1..SIZE-1, and each return is its
    # length's: GOAL_REWARD + STEP_REWARD * length.
    assert 1 < out["length_mean"] < SIZE - 1
    assert out["return_mean"] == pytest.approx(GOAL_REWARD + STEP_REWARD * out["length_mean"],
                                               abs=1e-6)
    assert 0 < out["return_std"] < 0.01 * (SIZE - 1)
    again = evaluate(right, {})
    assert {k: np.asarray(v).item() for k, v in again.items()} == out  # one fixed key
    # The parameters are an argument of the compiled program, not baked into it.
    still = {k: np.asarray(v).item() for k, v in evaluate(stay, {}).items()}
    cut = VALIDATION_LENGTH * STEP_REWARD
    assert still == {"return_mean": pytest.approx(cut), "return_std": pytest.approx(0, abs=1e-6),
                     "length_mean": VALIDATION_LENGTH, "episodes": EPISODE_ENVS,
                     "score": pytest.approx(cut)}


def test_episodes_that_do_not_end_count_their_return_so_far(walker):
    """A walk shorter than the episodes: no first episode ends, so the means are over every
    env's return so far, and `episodes` says none ended."""
    env, network, _, stay = walker
    params = env.make_params("train", 16)
    short = make_episode_evaluator(network, env, params, 5, 0, stay)(stay, {})
    assert int(short["episodes"]) == 0 and float(short["length_mean"]) == 5.0
    assert float(short["return_mean"]) == pytest.approx(5 * STEP_REWARD)
    whole = make_episode_evaluator(network, env, params, 16, 0, stay, n_envs=8)(stay, {})
    assert int(whole["episodes"]) == 8 and float(whole["length_mean"]) == 16.0
    assert math.isclose(float(whole["score"]), 16 * STEP_REWARD, rel_tol=1e-6)

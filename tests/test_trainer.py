"""The fused program: compile-once, no recompiles on hyperparameter or market changes, every
runtime hyperparameter wired into the update, consistent re-runs of the GRU, minibatch
layout, any env (a masked one) and network (mlp) through the same engine, and (slow) that it
learns to beat equal weight."""

import dataclasses
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtrade import parallel
from jaxtrade.config import Config, resolve, with_values
from jaxtrade.data import SyntheticConfig, build_market, synthetic_panel
from jaxtrade.envs import Regime
from jaxtrade.evaluation import make_policy_walk
from jaxtrade.ppo import minibatch_assignment, take_minibatch
from jaxtrade.trainer import HPARAM_NAMES, env_step_metrics, make_train, set_hparams
from tests.conftest import SMALL
from tests.envs.masked import TELEPORT, MaskedWalk

TINY = dict(
    hidden_dim=16, n_gru_layers=2, dropout=0.1, n_envs=8, n_steps=16, n_minibatches=2,
    ppo_epochs=2, critic_epochs=2, episode_length=32, precision="fp32", market="fixed",
)


@pytest.fixture(scope="module")
def tiny(small_market):
    cfg = resolve(with_values(Config(), **TINY), "cpu")
    return make_train(cfg, small_market)


@pytest.fixture(scope="module")
def tiny_state(tiny):
    return tiny.initial_state(jax.random.key(0))


@pytest.fixture(scope="module")
def iterate(tiny):
    """One compiled `iterate` shared by every test here, and it may trace only once (on any
    env params of the same shapes: `tiny.env_params` unless given)."""
    fn = jax.jit(chex.assert_max_traces(tiny.iterate, n=1))
    return lambda state, env_params=None: fn(
        state, tiny.env_params if env_params is None else env_params)


def lr(opt_state) -> float:
    return float(opt_state.hyperparams["learning_rate"])


def test_iterate_compiles_once_and_hparams_do_not_recompile(iterate, tiny_state):
    state, m1 = iterate(tiny_state)
    state, _ = iterate(state)
    state = set_hparams(state, actor_lr=1e-3, critic_lr=2e-3, ent_coef=0.05, clip=0.1,
                        vf_coef=1.0, gae_lambda=0.9, gamma=0.95)
    state, m3 = iterate(state)
    assert int(state.iteration) == 3
    assert float(m3["actor_lr"]) == pytest.approx(1e-3, rel=1e-6)
    assert float(m3["gamma"]) == pytest.approx(0.95, rel=1e-6)
    assert lr(state.actor_opt) == pytest.approx(1e-3, rel=1e-6)
    assert lr(state.critic_opt) == pytest.approx(2e-3, rel=1e-6)
    for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac",
              "explained_variance", "episode_return_mean"):
        assert np.isfinite(float(m1[k])), k
    assert bool(m1["params_finite"])
    np.testing.assert_allclose(float(m1["action_freq"].sum()), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        set_hparams(state, learning_rate=1.0)


def test_dropout_does_not_distort_the_ratio(tiny, tiny_state, iterate):
    """With dropout on (0.1) but learning rates 0, the policy cannot change: the PPO ratio
    must be exactly 1 everywhere (the old policy is evaluated under the same mask)."""
    assert tiny.config.network.dropout > 0
    frozen = set_hparams(tiny_state, actor_lr=0.0, critic_lr=0.0)
    state, m = iterate(frozen)
    assert float(m["clip_frac"]) == 0.0
    assert abs(float(m["approx_kl"])) < 1e-7
    chex.assert_trees_all_equal(state.params, tiny_state.params)


def test_run_scans_iterations_and_matches_iterate(tiny, tiny_state, iterate):
    """k iterations in one call equal k separate iterations (same RNG stream)."""
    a, _ = iterate(tiny_state)
    a, ma = iterate(a)
    b, mb = tiny.run(parallel.copy(tiny_state), 2)  # run donates its input
    assert mb["policy_loss"].shape == (2,)
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mb["value_loss"][1], ma["value_loss"], rtol=1e-5)


def test_minibatches_split_envs_and_keep_whole_sequences():
    a = minibatch_assignment(jax.random.key(3), 12, 3)
    assert a.shape == (4, 3)  # 4 runs of 3 consecutive envs
    for row in np.asarray(a):
        assert sorted(row.tolist()) == [0, 1, 2]
    x = jnp.arange(5 * 12).reshape(5, 12)  # [T, n_envs]: whole sequences per env
    parts = [np.asarray(take_minibatch(x, a, jnp.int32(m), 1)) for m in range(3)]
    envs = [p[0].tolist() for p in parts]
    assert sorted(sum(envs, [])) == list(range(12))  # every env in exactly one minibatch
    for m, p in enumerate(parts):
        np.testing.assert_array_equal(p, np.asarray(x)[:, envs[m]])  # all T steps kept
        # one env from each run of 3 consecutive envs, in run order
        assert [e // 3 for e in envs[m]] == [0, 1, 2, 3]
    # a tree with the env axis first in some leaves (recurrent states [n, L, H]) and second
    # in others splits the same way
    h = jnp.arange(12 * 2 * 4).reshape(12, 2, 4)
    got = take_minibatch({"h": h, "x": x}, a, jnp.int32(1), {"h": 0, "x": 1})
    np.testing.assert_array_equal(got["h"], np.asarray(h)[envs[1]])
    np.testing.assert_array_equal(got["x"], np.asarray(x)[:, envs[1]])
    other = minibatch_assignment(jax.random.key(4), 12, 3)
    assert not np.array_equal(a, other)


@pytest.mark.slow
def test_learns_to_beat_equal_weight_on_test_dates():
    """A CPU run of well under 2 minutes on a market with a strong signal ends with a greedy
    policy whose test-range return beats holding EQUAL_WEIGHT throughout."""
    panel = synthetic_panel(SyntheticConfig(n_bars=1500, seed=0, signal_strength=2.0))
    market = build_market(panel, episode_length=128, val_fraction=0.0, test_fraction=0.3)
    cfg = resolve(
        with_values(
            Config(), hidden_dim=64, n_gru_layers=1, dropout=0.0, n_envs=64, n_steps=64,
            n_minibatches=2, ppo_epochs=4, critic_epochs=2, episode_length=128,
            precision="fp32", ent_coef=0.01, seed=0,
        ),
        "cpu",
    )
    trainer = make_train(cfg, market)
    state = trainer.init(jax.random.key(0))
    # Compiled as users' runs are, with LLVM at -O3 (tests/xla_flags.py sets -O0 for the
    # suite): this program runs 60 iterations, 24 s at -O0 against 8 s (+8 s of compile).
    program = trainer.compile(state, 60, {"xla_backend_optimization_level": 3})
    state, metrics = program(state, trainer.env_params, trainer.schedule)
    assert np.isfinite(np.asarray(metrics["policy_loss"])).all()
    assert metrics["episode_return_mean"][-10:].mean() > metrics["episode_return_mean"][:10].mean()

    n_walk = market.n_bars - market.test_start - 1
    eval_params = trainer.env.make_params("test", episode_length=n_walk, start=market.test_start)
    walk = jax.jit(make_policy_walk(trainer.network, trainer.env, n_walk))
    learned = float(walk(state.params, eval_params, jax.random.key(5))[1].reward.sum())

    def fixed(regime):
        _, s = trainer.env.reset(jax.random.key(0), eval_params)

        def body(s, k):
            _, s, r, _, _ = trainer.env.step(k, s, jnp.int32(regime), eval_params)
            return s, r

        return float(jax.lax.scan(body, s, jax.random.split(jax.random.key(5), n_walk))[1].sum())

    equal_weight = fixed(Regime.EQUAL_WEIGHT)
    assert learned > equal_weight + 0.05, (learned, equal_weight)


def test_same_seed_same_result(tiny, iterate):
    a = iterate(tiny.initial_state(jax.random.key(11)))[0]
    b = iterate(tiny.initial_state(jax.random.key(11)))[0]
    c = iterate(tiny.initial_state(jax.random.key(12)))[0]
    chex.assert_trees_all_equal(a.params, b.params)
    chex.assert_trees_all_equal(a.actor_opt, b.actor_opt)
    assert not np.allclose(a.params["value_head"]["out"]["kernel"],
                           c.params["value_head"]["out"]["kernel"])


def test_every_runtime_hyperparameter_reaches_the_fused_update(tiny, tiny_state, iterate):
    """Changing any one runtime hyperparameter (and nothing else: same state, same RNG)
    changes the parameters the compiled iteration returns, and only it: the compiled
    program reads each of them, not a constant baked in at trace time."""
    base = iterate(tiny_state)[0].params
    np.testing.assert_equal(jax.device_get(iterate(tiny_state)[0].params),
                            jax.device_get(base))  # deterministic
    changed = {"actor_lr": 3e-3, "critic_lr": 9e-3, "ent_coef": 0.5, "clip": 1e-3,
               "vf_coef": 5.0, "gae_lambda": 0.5, "gamma": 0.5, "max_grad_norm": 1e-3,
               "dropout": 0.5}
    assert set(changed) == set(HPARAM_NAMES)
    for name, value in changed.items():
        params = iterate(set_hparams(tiny_state, **{name: value}))[0].params
        moved = [float(jnp.abs(a - b).max()) for a, b in
                 zip(jax.tree.leaves(params), jax.tree.leaves(base), strict=True)]
        assert max(moved) > 1e-6, name


def test_max_grad_norm_caps_both_chains_in_the_compiled_program(tiny, tiny_state):
    """`set_hparams(max_grad_norm=c)` reaches both optimizer chains of the compiled program
    (no new entry in its cache): every clipped gradient has norm <= c, so Adam's first
    moment, an average of them with weights summing below 1, stays under c; under the
    default 0.5 the same iterations' moments are far larger. (Two iterations per call:
    the program `test_run_scans_iterations_and_matches_iterate` compiled.)"""
    mu = lambda opt: float(optax.tree.norm(optax.tree_utils.tree_get(opt, "mu")))
    free, _ = tiny.run(parallel.copy(tiny_state), 2)
    entries = tiny.program._cache_size()
    capped, m = tiny.run(set_hparams(parallel.copy(tiny_state), max_grad_norm=1e-4), 2)
    assert tiny.program._cache_size() == entries
    assert float(m["max_grad_norm"][0]) == pytest.approx(1e-4)
    assert float(capped.actor_opt.hyperparams["max_grad_norm"]) == pytest.approx(1e-4)
    assert float(m["actor_grad_norm"][0]) > 1e-3  # the cap binds
    for chain in ("actor_opt", "critic_opt"):
        assert mu(getattr(capped, chain)) <= 1e-4 * (1 + 1e-5), chain
        assert mu(getattr(free, chain)) > 1e-3, chain


def test_another_market_of_the_same_shape_runs_the_same_program(tiny, tiny_state, iterate):
    """The market is an argument of the compiled program: swapping it does not retrace
    (`iterate` may trace once, and the jitted `program` gains no entry), and the program
    reads the new prices (the results differ)."""
    other = build_market(synthetic_panel(dataclasses.replace(SMALL, seed=7)),
                         episode_length=32)
    other_params = jax.device_put(
        tiny.env.make_params("train", **tiny.config.env.params_kwargs()).replace(
            market=jax.device_put(other.data)),
        jax.tree.map(lambda x: x.sharding, tiny.env_params),
    )
    a, ma = iterate(tiny_state)
    b, mb = iterate(tiny_state, other_params)
    assert float(ma["reward_mean"]) != float(mb["reward_mean"])
    # the program of 2 iterations per call the tests above compiled
    tiny.run(parallel.copy(tiny_state), 2)
    entries = tiny.program._cache_size()
    tiny.run(parallel.copy(tiny_state), 2, other_params)
    assert tiny.program._cache_size() == entries


def _masked_trainer(small_market, **overrides):
    cfg = resolve(with_values(Config(), **{**TINY, "name": "masked-walk", "dropout": 0.0,
                                           "episode_length": 16, **overrides}), "cpu")
    return make_train(cfg, small_market)


def _prefer_teleport(params):
    """Parameters whose policy puts nearly all probability on teleport, everywhere."""
    bias = params["policy_head"]["out"]["bias"]
    return {**params, "policy_head": {**params["policy_head"], "out": {
        **params["policy_head"]["out"], "bias": bias.at[TELEPORT].set(50.0)}}}


def test_a_masked_env_trains_through_the_engine(small_market):
    """The tiny env with a mask trains in the same fused program: no invalid action in any
    iteration, the valid-action count is the mask's, and it learns to reach the goal."""
    trainer = _masked_trainer(small_market, n_envs=16, ppo_epochs=4, actor_lr=3e-3,
                              critic_lr=3e-3)
    state = trainer.initial_state(jax.random.key(0))
    state, metrics = trainer.run(state, 30)
    assert (np.asarray(metrics["invalid_rate"]) == 0).all()
    # 3 of 4 actions valid on cells 1.., 3 on cell 0 too (teleport but not left)
    np.testing.assert_allclose(np.asarray(metrics["valid_actions"]), 3.0)
    assert "cost_mean" not in metrics  # the portfolio's metrics are the portfolio's
    ret = np.asarray(metrics["episode_return_mean"])
    assert ret[-5:].mean() > ret[:5].mean() and ret[-5:].mean() > 0.8


def test_mlp_network_trains_the_portfolio(small_market):
    cfg = resolve(with_values(Config(), **{**TINY, "kind": "mlp"}), "cpu")
    trainer = make_train(cfg, small_market)
    assert trainer.network.initial_state(4) == ()
    state = trainer.initial_state(jax.random.key(0))
    state, metrics = trainer.run(state, 3)
    assert np.isfinite(np.asarray(metrics["policy_loss"])).all()
    assert "gru" not in state.params and int(state.iteration) == 3


def test_set_encoder_trains_the_portfolio(small_market):
    cfg = resolve(with_values(Config(), **{**TINY, "encoder": "set"}), "cpu")
    trainer = make_train(cfg, small_market)
    assert set(trainer.network.layout.blocks) <= {small_market.data.n_features, 1}
    state = trainer.initial_state(jax.random.key(0))
    before = np.asarray(state.params["encoder"]["asset_dense_0"]["kernel"])  # run donates
    state, metrics = trainer.run(state, 2)
    assert np.isfinite(np.asarray(metrics["policy_loss"])).all()
    assert "asset_dense_0" in state.params["encoder"]  # the per-asset blocks, trained
    assert not np.allclose(state.params["encoder"]["asset_dense_0"]["kernel"], before)


def test_no_market_data_is_folded_into_programs(tiny):
    """The env params (the market: gigabytes for a large pool of worlds) are arguments of
    the initial-state and training programs, never constants captured at lowering: a
    capture copies them into the program and XLA compiles them in."""
    market_bytes = sum(x.nbytes for x in jax.tree.leaves(tiny.env_params))
    assert market_bytes > 100_000
    before = {k: getattr(jax.config, k) for k in ("jax_captured_constants_warn_bytes",
                                                  "jax_captured_constants_report_frames")}
    jax.config.update("jax_captured_constants_warn_bytes", market_bytes // 10)
    jax.config.update("jax_captured_constants_report_frames", 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            state = tiny.initial_state(jax.random.key(1))
            tiny.program.lower(state, tiny.env_params, 1, tiny.schedule)
    finally:
        for k, v in before.items():
            jax.config.update(k, v)


def test_no_lapack_kernel_reaches_the_initial_state_or_training_programs(tiny):
    """jaxlib 0.10's batched CPU LAPACK kernels can block every XLA pool thread: the start-up
    hang of multi-device runs (`jaxtrade.networks.gru.orthonormal`). This covers the whole
    path a run compiles first (env reset, network init, optimizer, one iteration);
    `tests/test_train_startup.py` starts the CLI itself."""
    texts = [jax.jit(tiny.init).lower(jax.random.key(0), tiny.env_params).as_text(),
             tiny.program.lower(jax.eval_shape(tiny.init, jax.random.key(0)),
                                tiny.env_params, 1, tiny.schedule).as_text()]
    assert all("lapack" not in t.lower() for t in texts)


def test_step_metrics_that_read_undeclared_info_fail_in_words():
    """A training rollout keeps only `metric_info_keys` of the env's info: an env whose
    `step_metrics` reads another key is told which, not left with a bare KeyError."""

    class Undeclared(MaskedWalk):
        metric_info_keys = ()

    info = {"invalid": jnp.zeros((4, 2), bool)}
    assert set(env_step_metrics(MaskedWalk(), info)) == {"invalid_rate"}
    with pytest.raises(ValueError, match=r"step_metrics reads info\['invalid'\], which its "
                                         r"metric_info_keys \(\) does not name"):
        env_step_metrics(Undeclared(), {})

"""Tests for jaxtrade/networks/transformer.py: the protocol (shapes, dtypes, unroll equals a
step loop, resets isolate episodes, how far back the memory reaches), function-preserving
growth, the config's rules and flags, and a tiny training run through the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade import config as cfgmod
from jaxtrade import train
from jaxtrade.config import NetworkConfig
from jaxtrade.networks import (
    Step,
    TransformerActorCritic,
    TransformerState,
    Unroll,
    grow,
    init_params,
    make_network,
)

# T is not a multiple of K (the unroll pads its last block) and exceeds L x K.
T, B, D, H, A, K, HEADS, L = 9, 3, 5, 8, 4, 2, 2, 2


def _model(dtype=jnp.float32, **fields) -> TransformerActorCritic:
    kw = dict(hidden_dim=H, n_heads=HEADS, n_layers=L, context=K, dtype=dtype) | fields
    return TransformerActorCritic(D, A, **kw)


class Net:
    """A model with its jitted step and unroll."""

    def __init__(self, model: TransformerActorCritic, params):
        self.model, self.params = model, params
        key = jax.random.key(0)

        def step(p, s, o, r, deterministic=True):
            return model.apply({"params": p}, s, o, r, deterministic, rngs={"dropout": key})

        def unroll(p, s, o, r):
            return model.apply({"params": p}, s, o, r, method="unroll")

        self.step = jax.jit(step, static_argnames="deterministic")
        self.unroll = jax.jit(unroll)


@pytest.fixture(scope="module")
def params():
    return jax.jit(lambda k: init_params(_model(), k))(jax.random.key(1))


@pytest.fixture(scope="module")
def net(params) -> Net:
    return Net(_model(), params)


def _obs(seed: int, t: int = T) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (t, B, D))


def _warm_state(net: Net, seed: int) -> TransformerState:
    """A memory of 1 step (env 0: a reset at the last step) and full ones (envs 1, 2)."""
    reset = jnp.zeros((T, B), bool).at[T - 1, 0].set(True).at[T - 2, 1].set(True)
    return net.unroll(net.params, net.model.initial_state(B), _obs(seed), reset).state


def test_shapes_and_dtypes(net, params):
    assert {"encoder", "norm", "policy_head", "value_head"} < set(params)
    assert {f"blocks_{i}" for i in range(L)} < set(params)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    state = net.model.initial_state(B)
    assert (state.memory.shape, state.memory.dtype) == ((B, L, K, H), jnp.float32)
    assert (state.count.shape, state.count.dtype) == ((B,), jnp.int32)
    assert not state.memory.any() and not state.count.any()
    obs = _obs(2)
    step = net.step(params, state, obs[0], jnp.zeros(B, bool))
    assert isinstance(step, Step) and isinstance(step.state, TransformerState)
    assert (step.logits.shape, step.logits.dtype) == ((B, A), jnp.float32)
    assert (step.value.shape, step.value.dtype) == ((B,), jnp.float32)
    assert step.state.count.tolist() == [1, 1, 1]
    out = net.unroll(params, state, obs, jnp.zeros((T, B), bool))
    assert isinstance(out, Unroll)
    assert (out.logits.shape, out.logits.dtype) == ((T, B, A), jnp.float32)
    assert (out.value.shape, out.value.dtype) == ((T, B), jnp.float32)
    assert (out.trunk.shape, out.trunk.dtype) == ((T, B, H), jnp.float32)
    assert out.state.memory.shape == (B, L, K, H) and out.state.count.tolist() == [K] * B
    assert np.isfinite(np.asarray(out.logits)).all() and np.isfinite(np.asarray(out.value)).all()
    assert net.model.trunk_dim == H and "2 layers x 2 heads over the last 2 steps" in \
        net.model.describe()


def test_bfloat16_computes_in_bf16_and_tracks_float32(net, params):
    bf16 = _model(jnp.bfloat16)
    obs, reset = _obs(3), jnp.zeros((T, B), bool).at[4, 1].set(True)
    state = net.model.initial_state(B)
    out16 = jax.jit(lambda p: bf16.apply({"params": p}, state, obs, reset, method="unroll"))(
        params)
    out32 = net.unroll(params, state, obs, reset)
    assert out16.trunk.dtype == jnp.bfloat16
    assert out16.logits.dtype == out16.value.dtype == out16.state.memory.dtype == jnp.float32
    np.testing.assert_allclose(out16.logits, out32.logits, atol=0.1)
    np.testing.assert_allclose(out16.value, out32.value, atol=0.1)
    assert bf16.saved_bytes_per_step() < net.model.saved_bytes_per_step()


def test_unroll_equals_repeated_steps(net):
    state = _warm_state(net, 4)
    assert state.count.tolist() == [1, 2, K]
    obs = _obs(5)
    reset = jnp.zeros((T, B), bool).at[0, 0].set(True).at[3, 1].set(True).at[7, 1].set(True)
    out = net.unroll(net.params, state, obs, reset)
    s, logits, values = state, [], []
    for t in range(T):  # the reference loop, outside jit
        step = net.step(net.params, s, obs[t], reset[t])
        s = step.state
        logits.append(step.logits)
        values.append(step.value)
    # The same function summed in other orders (the whole window against one token at a
    # time): float32 rounding, up to 2.7e-5 on the logits when XLA code-generates at -O0
    # (tests/xla_flags.py); a wrong mask or position would move them by ~0.1.
    close = {"rtol": 1e-5, "atol": 5e-5}
    np.testing.assert_allclose(out.logits, jnp.stack(logits), **close)
    np.testing.assert_allclose(out.value, jnp.stack(values), **close)
    np.testing.assert_allclose(out.state.memory, s.memory, **close)
    np.testing.assert_array_equal(out.state.count, s.count)
    from_trunk = net.model.apply({"params": net.params}, out.trunk, method="value_from_trunk")
    np.testing.assert_allclose(from_trunk, out.value, rtol=1e-6, atol=1e-6)
    # A sequence shorter than the context keeps part of the old memory.
    short = net.unroll(net.params, state, obs[:1], jnp.zeros((1, B), bool))
    one = net.step(net.params, state, obs[0], jnp.zeros(B, bool))
    np.testing.assert_allclose(short.state.memory, one.state.memory, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(short.logits[0], one.logits, rtol=1e-5, atol=1e-5)


def test_reset_is_a_step_from_the_empty_memory(net):
    state, obs = _warm_state(net, 6), _obs(7)[0]
    empty = net.step(net.params, net.model.initial_state(B), obs, jnp.zeros(B, bool))
    reset = net.step(net.params, state, obs, jnp.ones(B, bool))
    for a, b in zip(jax.tree.leaves(empty), jax.tree.leaves(reset), strict=True):
        np.testing.assert_array_equal(a, b)
    carried = net.step(net.params, state, obs, jnp.zeros(B, bool))
    assert not np.allclose(carried.logits, empty.logits)


def test_reset_isolates_episodes(net):
    obs, t_reset = _obs(8), 4
    reset = jnp.zeros((T, B), bool).at[t_reset].set(True)
    other_obs = obs.at[:t_reset].set(obs[:t_reset] * -2.0 + 1.0)
    a = net.unroll(net.params, _warm_state(net, 9), obs, reset)
    b = net.unroll(net.params, _warm_state(net, 10), other_obs, reset)
    np.testing.assert_array_equal(a.logits[t_reset:], b.logits[t_reset:])
    np.testing.assert_array_equal(a.value[t_reset:], b.value[t_reset:])
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(b.state), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.allclose(a.logits[:t_reset], b.logits[:t_reset])  # the test can tell


def test_memory_reaches_back_context_steps_per_block(net):
    """Each block attends K steps back to inputs that themselves attended K back: step t
    reads obs t - L*K, and nothing before it."""
    obs, reset = _obs(11), jnp.zeros((T, B), bool).at[0].set(True)
    base = net.unroll(net.params, net.model.initial_state(B), obs, reset).logits
    t = T - 1
    for back, changes in ((L * K, True), (L * K + 1, False)):
        moved = obs.at[t - back].add(3.0)
        logits = net.unroll(net.params, net.model.initial_state(B), moved, reset).logits
        assert np.allclose(logits[t], base[t], atol=1e-6) != changes, back


def test_dropout_only_when_not_deterministic(params):
    drop = Net(_model(dropout=0.5), params)
    state, obs, reset = drop.model.initial_state(B), _obs(12)[0], jnp.ones(B, bool)
    det = drop.step(params, state, obs, reset)
    plain = Net(_model(), params).step(params, state, obs, reset)
    np.testing.assert_array_equal(det.logits, plain.logits)
    assert not np.allclose(drop.step(params, state, obs, reset, deterministic=False).logits,
                           det.logits)


def test_the_dropout_rate_is_an_argument_of_the_unroll(params):
    """The unroll's dropout rate is an array (one compile for all rates): 0 through the sites
    is the deterministic unroll, 0.5 is not."""
    model = _model(dropout=0.1)
    state, obs, reset = model.initial_state(B), _obs(13), jnp.zeros((T, B), bool)
    unroll = jax.jit(lambda rate: model.apply(
        {"params": params}, state, obs, reset, False, dropout_rate=rate, method="unroll",
        rngs={"dropout": jax.random.key(3)}).logits)
    det = Net(model, params).unroll(params, state, obs, reset).logits
    np.testing.assert_allclose(unroll(jnp.float32(0.0)), det, rtol=1e-5, atol=1e-6)
    assert not np.allclose(unroll(jnp.float32(0.5)), det, atol=1e-3)
    assert unroll._cache_size() == 1


# ------------------------------------------------------------------ growth


SMALL = dict(hidden_dim=16, n_heads=4, n_layers=2, context=3)
LARGE = dict(hidden_dim=16, n_heads=8, n_layers=3, context=3, head_dim=4)  # 16 / 4 heads


@pytest.fixture(scope="module")
def grown():
    small, large = TransformerActorCritic(D, A, **SMALL), TransformerActorCritic(D, A, **LARGE)
    params = jax.jit(lambda k: init_params(small, k))(jax.random.key(2))
    big = jax.jit(lambda p, k: grow(p, small, large, k))(params, jax.random.key(3))
    return small, large, params, big


def _run(model, params, obs, reset):
    return model.apply({"params": params}, model.initial_state(obs.shape[1]), obs, reset,
                       method="unroll")


def test_growth_preserves_the_function(grown):
    small, large, params, big = grown
    assert big["blocks_0"]["attention"]["query"]["kernel"].shape == (16, 8, 4)
    assert set(big) == set(params) | {"blocks_2"}
    obs = jax.random.normal(jax.random.key(13), (T, B, D))
    reset = jnp.zeros((T, B), bool).at[0].set(True).at[3, 1].set(True).at[6, 2].set(True)
    before = jax.jit(lambda p: _run(small, p, obs, reset))(params)
    after = jax.jit(lambda p: _run(large, p, obs, reset))(big)
    np.testing.assert_allclose(after.logits, before.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after.value, before.value, rtol=1e-5, atol=1e-6)
    # The new parameters are not all zeros: only the new paths' output projections are.
    new_query = big["blocks_0"]["attention"]["query"]["kernel"][:, 4:]
    assert np.abs(new_query).min() > 0
    assert not big["blocks_0"]["attention"]["out"]["kernel"][4:].any()
    assert np.abs(big["blocks_2"]["mlp_in"]["kernel"]).max() > 0
    assert not big["blocks_2"]["mlp_out"]["kernel"].any()


def test_grown_network_still_trains(grown):
    _, large, _, big = grown
    obs = jax.random.normal(jax.random.key(14), (T, B, D))
    reset = jnp.zeros((T, B), bool).at[0].set(True)

    def loss(p):
        out = _run(large, p, obs, reset)
        return jnp.sum(jax.nn.log_softmax(out.logits)[..., 0]) + jnp.sum(out.value ** 2)

    grad = jax.jit(jax.grad(loss))
    g = grad(big)
    new_paths = {
        "new heads' output rows": g["blocks_0"]["attention"]["out"]["kernel"][4:],
        "new layer's attention output": g["blocks_2"]["attention"]["out"]["kernel"],
        "new layer's MLP output": g["blocks_2"]["mlp_out"]["kernel"],
    }
    for name, value in new_paths.items():
        assert np.abs(value).max() > 1e-6, name
    # One step later the new heads' queries and the new layer's MLP input learn too.
    stepped = jax.jit(lambda p, d: jax.tree.map(lambda p, d: p - 0.1 * d, p, d))(big, g)
    g2 = grad(stepped)
    assert np.abs(g2["blocks_0"]["attention"]["query"]["kernel"][:, 4:]).max() > 1e-6
    assert np.abs(g2["blocks_2"]["mlp_in"]["kernel"]).max() > 1e-6


def test_growth_refuses_what_would_change_the_function(grown):
    small, _, params, _ = grown
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="another head_width: 4 -> 2; set head_dim"):
        grow(params, small, TransformerActorCritic(D, A, **(SMALL | dict(n_heads=8))), key)
    with pytest.raises(ValueError, match="cannot shrink a transformer: 4 heads x 2 layers"):
        grow(params, small, TransformerActorCritic(D, A, **(SMALL | dict(n_layers=1))), key)
    with pytest.raises(ValueError, match="another context: 3 -> 4"):
        grow(params, small, TransformerActorCritic(D, A, **(SMALL | dict(context=4))), key)


# ------------------------------------------------------------------ config and CLI


def test_config_builds_and_checks_the_transformer():
    nc = NetworkConfig(kind="transformer", hidden_dim=12, n_heads=3, n_layers=1, context=5,
                       precision="bf16")
    net = make_network(nc, D, A, platform="cpu")
    assert isinstance(net, TransformerActorCritic) and net.dtype == jnp.bfloat16
    assert (net.hidden_dim, net.n_heads, net.n_layers, net.context, net.head_width) == (
        12, 3, 1, 5, 4)
    bad = cfgmod.Config(network=NetworkConfig(kind="transformer", hidden_dim=10, n_heads=4))
    with pytest.raises(cfgmod.ConfigError,
                       match=r"hidden_dim=10 must be a multiple of n_heads=4 for the transformer"):
        cfgmod.validate(bad)
    with pytest.raises(ValueError, match="multiple of n_heads=4"):
        make_network(bad.network, D, A, platform="cpu")
    cfgmod.validate(cfgmod.with_values(bad, head_dim=3))  # explicit heads' width: fine
    cfgmod.validate(cfgmod.with_values(bad, kind="gru"))  # the GRU has no heads
    with pytest.raises(cfgmod.ConfigError, match="context=0 must be >= 1"):
        cfgmod.validate(cfgmod.Config(network=NetworkConfig(kind="transformer", context=0)))
    # More context and more layers keep more for the backward pass.
    sizes = [make_network(NetworkConfig(kind="transformer", hidden_dim=16, **kw), D, A,
                          platform="cpu").saved_bytes_per_step()
             for kw in ({}, dict(context=32), dict(n_layers=3))]
    assert sizes[0] < sizes[1] and sizes[0] < sizes[2]


def test_flags_set_the_transformer_fields():
    args = train.build_parser().parse_args(
        ["--network", "transformer", "--n-heads", "2", "--n-layers", "3", "--context", "8",
         "--head-dim", "5"])
    assert (args.kind, args.n_heads, args.n_layers, args.context, args.head_dim) == (
        "transformer", 2, 3, 8, 5)


def test_tiny_training_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # Big enough for the activations to dominate memory, so the estimate is checked.
    argv = ["--market", "fixed", "--network", "transformer", "--hidden-dim", "16",
            "--n-heads", "2", "--n-layers", "2", "--context", "8", "--n-envs", "32",
            "--n-steps", "32", "--n-minibatches", "2", "--ppo-epochs", "1", "--critic-epochs",
            "1", "--episode-length", "40", "--hyperparams", "n_bars=200,n_assets=3",
            "--iterations", "2", "--run-dir", str(run_dir)]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "model: transformer actor-critic, hidden 16 x 2 layers x 2 heads over the last 8" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("policy_loss", "value_loss", "entropy", "approx_kl"):
            assert np.isfinite(r[key]), (key, r)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    mem = summary["memory"]
    # 1.86x XLA's plan when written (activations ~90% of it); the GRU's lean 1.1x..1.6x high.
    assert 1.0 < mem["estimated_bytes"] / mem["peak_bytes"] < 2.5, mem

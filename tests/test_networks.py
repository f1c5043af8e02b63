"""Tests for jaxtrade/networks/: GRU layout, dtypes, resets, unroll parity, dropout; the
MLP network; building a network from its config."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade.config import NetworkConfig
from jaxtrade.networks import (
    Dropout,
    GRUActorCritic,
    MLPActorCritic,
    ObsLayout,
    Step,
    Unroll,
    count_params,
    dummy_inputs,
    init_params,
    make_network,
    orthonormal,
    param_shapes,
)
from jaxtrade.networks.base import max_over_assets

# Tiny shapes keep compilation short; the reference layout is only
# shape-evaluated.
T, B, D, H, L, A = 6, 3, 5, 8, 2, 4
REFERENCE_PARAMS = 941_457  # the reference network's documented size


def _key(seed: int) -> jax.Array:
    # XLA's RngBitGenerator compiles several times faster than threefry on CPU;
    # which key implementation draws the numbers is irrelevant to these tests.
    return jax.random.key(seed, impl="rbg")


KEY = _key(42)


def _inputs(seed: int):
    k_obs, k_hidden = jax.random.split(jax.random.key(seed))
    obs = jax.random.normal(k_obs, (T, B, D))
    hidden = jax.random.normal(k_hidden, (B, L, H))  # env axis first
    return obs, hidden


def _model(dtype=jnp.float32, dropout: float = 0.1) -> GRUActorCritic:
    return GRUActorCritic(D, A, hidden_dim=H, n_gru_layers=L, dropout=dropout, dtype=dtype)


class Net:
    """A model with its jitted step and unroll. Every variant shares one set of
    params (dtype and dropout do not change the tree), so init compiles once."""

    def __init__(self, params, dtype=jnp.float32, dropout: float = 0.1):
        self.model = model = _model(dtype, dropout)
        self.params = params

        # A dropout key is always passed, so that deterministic and stochastic
        # calls differ only in the static flag (one compile each).
        def step(p, h, o, r, key=KEY, deterministic=True):
            return model.apply(p, h, o, r, deterministic, rngs={"dropout": key})

        def unroll(p, h, o, r, key=KEY, deterministic=True):
            return model.apply(
                p, h, o, r, deterministic, method="unroll", rngs={"dropout": key}
            )

        self.step = jax.jit(step, static_argnames="deterministic")
        self.unroll = jax.jit(unroll, static_argnames="deterministic")


@pytest.fixture(scope="module")
def params():
    model = _model()
    return jax.jit(model.init)(_key(0), *dummy_inputs(model, B))


@pytest.fixture(scope="module")
def net(params) -> Net:
    return Net(params)


@pytest.fixture(scope="module")
def net_bf16(params) -> Net:
    return Net(params, jnp.bfloat16)


@pytest.fixture(scope="module")
def net_dropout(params) -> Net:
    return Net(params, dropout=0.5)


def test_reference_layout_parameter_count():
    model = GRUActorCritic(64, 16, hidden_dim=256, n_gru_layers=2, dropout=0.1)
    shapes = param_shapes(model)
    assert set(shapes) == {"encoder", "gru", "policy_head", "value_head"}
    n = count_params(shapes)
    # Same as torch: encoder 83,456 + 2 GRU layers 789,504 + policy 35,216 + value 33,281.
    assert n == 941_457
    assert abs(n - REFERENCE_PARAMS) / REFERENCE_PARAMS < 0.01


def test_recurrent_kernel_is_orthogonal_per_gate(net):
    gru = net.params["params"]["gru"]
    for layer in range(L):
        kernel = np.asarray(gru[f"layer_{layer}"]["recurrent"]["kernel"])
        assert kernel.shape == (H, 3 * H)
        for gate in np.split(kernel, 3, axis=-1):
            np.testing.assert_allclose(gate.T @ gate, np.eye(H), atol=1e-5)


def test_orthonormal_is_the_q_of_qr_with_a_positive_diagonal_of_r():
    a = np.random.default_rng(0).normal(size=(3, 48, 48)).astype(np.float32)
    q = np.asarray(jax.jit(orthonormal)(a))
    q64, r64 = np.linalg.qr(a.astype(np.float64))
    q64 = q64 * np.sign(np.diagonal(r64, axis1=-2, axis2=-1))[..., None, :]
    np.testing.assert_allclose(q, q64, atol=5e-6)
    np.testing.assert_allclose(np.swapaxes(q, -1, -2) @ q, np.broadcast_to(np.eye(48), q.shape),
                               atol=5e-6)


def test_init_calls_no_lapack_kernel():
    # jaxlib 0.10's batched CPU LAPACK kernels can block every XLA pool thread: the start-up
    # hang of multi-device runs (see `orthonormal`). Nothing LAPACK may reach a compiled init.
    model = GRUActorCritic(D, A, hidden_dim=64, n_gru_layers=2, dropout=0.0)
    text = jax.jit(lambda key: init_params(model, key)).lower(jax.random.key(0)).as_text()
    assert "lapack" not in text.lower()


def test_init_through_unroll_gives_the_same_tree(net):
    seq = jax.eval_shape(
        lambda k: net.model.init(
            k, net.model.initial_state(B), jnp.zeros((T, B, D)), jnp.ones((T, B), bool),
            method="unroll",
        ),
        jax.random.key(0),
    )
    step_shapes = jax.tree.map(lambda x: (x.shape, x.dtype), net.params)
    assert jax.tree.map(lambda x: (x.shape, x.dtype), seq) == step_shapes


@pytest.mark.parametrize("which", ["net", "net_bf16"])
def test_shapes_and_dtypes(which, request):
    n = request.getfixturevalue(which)
    compute = n.model.dtype
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(n.params))
    obs, hidden = _inputs(1)
    reset = jnp.zeros((T, B), bool)

    step = n.step(n.params, hidden, obs[0], reset[0])
    assert isinstance(step, Step)
    new_hidden, logits, value = step.state, step.logits, step.value
    assert (new_hidden.shape, new_hidden.dtype) == ((B, L, H), jnp.float32)
    assert (logits.shape, logits.dtype) == ((B, A), jnp.float32)
    assert (value.shape, value.dtype) == ((B,), jnp.float32)

    out = n.unroll(n.params, hidden, obs, reset)
    assert isinstance(out, Unroll)
    final, logits, values, trunk = out.state, out.logits, out.value, out.trunk
    assert (final.shape, final.dtype) == ((B, L, H), jnp.float32)
    assert (logits.shape, logits.dtype) == ((T, B, A), jnp.float32)
    assert (values.shape, values.dtype) == ((T, B), jnp.float32)
    assert (trunk.shape, trunk.dtype) == ((T, B, H), compute)
    assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(values)).all()


def test_bfloat16_tracks_float32(net, net_bf16):
    obs, hidden = _inputs(2)
    reset = jnp.zeros((T, B), bool)
    out32 = net.unroll(net.params, hidden, obs, reset)
    out16 = net_bf16.unroll(net.params, hidden, obs, reset)
    np.testing.assert_allclose(out16.logits, out32.logits, atol=0.1)
    np.testing.assert_allclose(out16.value, out32.value, atol=0.1)


def test_reset_is_a_step_from_zero_hidden(net):
    obs, hidden = _inputs(3)
    zeros = net.model.initial_state(B)
    assert (zeros.shape, zeros.dtype) == ((B, L, H), jnp.float32) and not zeros.any()
    from_zero = net.step(net.params, zeros, obs[0], jnp.zeros(B, bool))
    reset = net.step(net.params, hidden, obs[0], jnp.ones(B, bool))
    for a, b in zip(jax.tree.leaves(from_zero), jax.tree.leaves(reset), strict=True):
        np.testing.assert_array_equal(a, b)

    carried = net.step(net.params, hidden, obs[0], jnp.zeros(B, bool))
    for a, b in zip(jax.tree.leaves(from_zero), jax.tree.leaves(carried), strict=True):
        assert not np.allclose(a, b)


def test_reset_applies_per_env(net):
    obs, hidden = _inputs(4)
    mask = jnp.array([True, False, True])
    zeros = net.model.initial_state(B)
    mixed = net.step(net.params, hidden, obs[0], mask)
    from_zero = net.step(net.params, zeros, obs[0], jnp.zeros(B, bool))
    carried = net.step(net.params, hidden, obs[0], jnp.zeros(B, bool))
    np.testing.assert_allclose(mixed.logits[mask], from_zero.logits[mask], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixed.logits[~mask], carried.logits[~mask], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixed.state[mask], from_zero.state[mask], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mixed.state[~mask], carried.state[~mask], rtol=1e-6, atol=1e-6)


def _np_forward(params, hidden, obs, reset):
    """Plain numpy forward pass of one step, written from the layer definitions."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params["params"])
    dense = lambda q, x: x @ q["kernel"] + q["bias"]
    norm = lambda q, x: (x - x.mean(-1, keepdims=True)) / np.sqrt(
        x.var(-1, keepdims=True) + 1e-6
    ) * q["scale"] + q["bias"]
    relu = lambda x: np.maximum(x, 0.0)
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))

    x = np.asarray(obs, np.float64)
    for i in range(2):
        x = norm(p["encoder"][f"norm_{i}"], relu(dense(p["encoder"][f"dense_{i}"], x)))
    hidden = np.where(np.asarray(reset)[:, None, None], 0.0, np.asarray(hidden, np.float64))
    new_hidden = []
    for layer in range(L):
        q, h = p["gru"][f"layer_{layer}"], hidden[:, layer]
        i_r, i_z, i_n = np.split(dense(q["input"], x), 3, axis=-1)
        h_r, h_z, h_n = np.split(dense(q["recurrent"], h), 3, axis=-1)
        r, z = sigmoid(i_r + h_r), sigmoid(i_z + h_z)
        x = (1 - z) * np.tanh(i_n + r * h_n) + z * h
        new_hidden.append(x)

    def head(q):
        return dense(q["out"], norm(q["norm"], relu(dense(q["dense"], x))))

    return np.stack(new_hidden, axis=1), head(p["policy_head"]), head(p["value_head"])[:, 0]


def test_step_matches_numpy_forward(net):
    obs, hidden = _inputs(11)
    reset = jnp.array([False, True, False])
    out = net.step(net.params, hidden, obs[0], reset)
    ref = _np_forward(net.params, hidden, obs[0], reset)
    for name, a, b in zip(("hidden", "logits", "value"), (out.state, out.logits, out.value), ref,
                          strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def test_unroll_equals_repeated_steps(net):
    obs, hidden = _inputs(5)
    reset = jnp.zeros((T, B), bool).at[2, 0].set(True).at[4, 2].set(True)
    out = net.unroll(net.params, hidden, obs, reset)
    final, logits, values, trunk = out.state, out.logits, out.value, out.trunk

    h = hidden
    step_logits, step_values = [], []
    for t in range(T):  # the reference loop, outside jit
        step = net.step(net.params, h, obs[t], reset[t])
        h = step.state
        step_logits.append(step.logits)
        step_values.append(step.value)
    np.testing.assert_allclose(final, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, jnp.stack(step_logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values, jnp.stack(step_values), rtol=1e-5, atol=1e-5)

    from_trunk = net.model.apply(net.params, trunk, method="value_from_trunk")
    np.testing.assert_allclose(from_trunk, values, rtol=1e-6, atol=1e-6)


def test_reset_cuts_dependence_on_the_past(net):
    obs, hidden = _inputs(6)
    t_reset = 3
    reset = jnp.zeros((T, B), bool).at[t_reset].set(True)
    other_obs = obs.at[:t_reset].set(obs[:t_reset] * -2.0 + 1.0)
    other_hidden = hidden * 3.0

    a = net.unroll(net.params, hidden, obs, reset)
    b = net.unroll(net.params, other_hidden, other_obs, reset)
    logits_a, values_a, logits_b, values_b = a.logits, a.value, b.logits, b.value
    np.testing.assert_array_equal(logits_a[t_reset:], logits_b[t_reset:])
    np.testing.assert_array_equal(values_a[t_reset:], values_b[t_reset:])
    # ...while before the reset the perturbation does show.
    assert not np.allclose(logits_a[:t_reset], logits_b[:t_reset])
    assert not np.allclose(values_a[:t_reset], values_b[:t_reset])


def test_dropout_only_when_not_deterministic(net, net_dropout):
    obs, hidden = _inputs(7)
    reset = jnp.zeros((T, B), bool)
    key_a, key_b = _key(8), _key(9)

    plain = net.unroll(net.params, hidden, obs, reset)
    det = net_dropout.unroll(net.params, hidden, obs, reset, key_a)
    np.testing.assert_array_equal(plain.logits, det.logits)

    drop_a = net_dropout.unroll(net.params, hidden, obs, reset, key_a, deterministic=False)
    drop_a2 = net_dropout.unroll(net.params, hidden, obs, reset, key_a, deterministic=False)
    drop_b = net_dropout.unroll(net.params, hidden, obs, reset, key_b, deterministic=False)
    np.testing.assert_array_equal(drop_a.logits, drop_a2.logits)
    assert not np.allclose(drop_a.logits, plain.logits)
    assert not np.allclose(drop_a.logits, drop_b.logits)

    step_det = net.step(net.params, hidden, obs[0], reset[0])
    step_drop = net_dropout.step(net.params, hidden, obs[0], reset[0], key_a, deterministic=False)
    assert not np.allclose(step_det.logits, step_drop.logits)


def test_unroll_dropout_masks_differ_across_time(net_dropout):
    """With a constant input and zero state, identical steps differ only by their masks."""
    obs = jnp.ones((T, B, D))
    reset = jnp.ones((T, B), bool)  # every step starts from zeros
    logits = net_dropout.unroll(
        net_dropout.params, net_dropout.model.initial_state(B), obs, reset, _key(10),
        deterministic=False,
    ).logits
    assert not np.allclose(logits[0], logits[1])


def test_dropout_keeps_one_minus_the_rate_it_is_given():
    """`Dropout`'s rate is an array: one compiled function masks at 0.5 and 0.1, keeping
    about 1 - rate of 262,144 values (the count's std is ~0.001) scaled by 1 / (1 - rate) in
    the input's dtype; rate 0 is the identity; at a fixed rate it draws flax's
    `nn.Dropout` mask (runs saved before the rate was an array continue with the same
    masks)."""
    x = jnp.ones((512, 512), jnp.bfloat16)

    @jax.jit
    def drop(x, rate):
        return Dropout().apply({}, x, rate, False, rngs={"dropout": _key(11)})

    for rate in (0.5, 0.1):
        y = drop(x, jnp.float32(rate))
        kept = np.asarray(y != 0)
        assert y.dtype == jnp.bfloat16
        assert abs(kept.mean() - (1 - rate)) < 0.005, rate
        np.testing.assert_allclose(np.asarray(y, np.float32)[kept], 1 / (1 - rate), rtol=4e-3)
    np.testing.assert_array_equal(drop(x, jnp.float32(0.0)), x)
    assert drop._cache_size() == 1  # three rates, one program
    x32 = jax.random.normal(_key(12), (64, 64))
    flax = nn.Dropout(0.1).apply({}, x32, False, rngs={"dropout": _key(11)})
    ours = drop(x32, jnp.float32(0.1))
    np.testing.assert_array_equal(ours == 0, flax == 0)
    np.testing.assert_allclose(ours, flax, rtol=1e-6)  # x / 0.9: at most an ulp apart
    # rate 1 drops everything, with a finite (zero) gradient
    grad = jax.grad(lambda x: jnp.sum(drop(x, jnp.float32(1.0))))(x32)
    assert not np.asarray(drop(x32, jnp.float32(1.0))).any() and not np.asarray(grad).any()


def test_the_rate_given_at_apply_time_drives_the_dropout_sites(params):
    """`dropout_rate` overrides the network's field (a network built with 0.1 run at 0.5 is
    one built with 0.5); rate 0 through the sites is the deterministic network, exactly;
    and a network without dropout (field 0) has no sites: its training forward draws no
    random numbers whatever the rate."""
    obs, hidden = _inputs(7)
    reset = jnp.zeros((T, B), bool)

    def unroll(model, rate=None, deterministic=False):
        return jax.jit(lambda r: model.apply(
            params, hidden, obs, reset, deterministic, dropout_rate=r, method="unroll",
            rngs={"dropout": KEY}).logits)(rate)

    # Equal up to float32 rounding: the programs differ (XLA fuses them otherwise).
    close = dict(rtol=1e-5, atol=1e-6)
    det = unroll(_model(dropout=0.1), deterministic=True)
    np.testing.assert_allclose(unroll(_model(dropout=0.1), jnp.float32(0.0)), det, **close)
    np.testing.assert_allclose(unroll(_model(dropout=0.1), jnp.float32(0.5)),
                               unroll(_model(dropout=0.5)), **close)
    assert not np.allclose(unroll(_model(dropout=0.1), jnp.float32(0.5)), det, atol=1e-3)
    none = _model(dropout=0.0)
    np.testing.assert_allclose(unroll(none, jnp.float32(0.5)), det, **close)

    def draws(model) -> bool:
        jaxpr = str(jax.make_jaxpr(lambda r: model.apply(
            params, hidden, obs, reset, False, dropout_rate=r, method="unroll",
            rngs={"dropout": KEY}))(jnp.float32(0.5)))
        return "random_bits" in jaxpr

    assert draws(_model(dropout=0.1)) and not draws(none)


# ------------------------------------------------------------------ building by kind


def _gru_param_shapes() -> dict:
    """The GRU's params tree as shapes (the `params` fixture's tree), nothing computed."""
    model = _model()
    return jax.eval_shape(model.init, _key(0), *dummy_inputs(model, B))["params"]


def test_make_network_builds_the_configured_kind():
    gru = make_network(NetworkConfig(hidden_dim=H, n_gru_layers=L, dropout=0.1, precision="bf16"),
                       D, A, platform="cpu")
    assert isinstance(gru, GRUActorCritic)
    assert (gru.obs_dim, gru.n_actions, gru.hidden_dim, gru.n_gru_layers, gru.dropout) == (
        D, A, H, L, 0.1)
    assert gru.dtype == jnp.bfloat16
    # The tree `init_params` and `param_shapes` build is the one `init` builds.
    shapes = jax.tree.map(lambda x: (x.shape, x.dtype), param_shapes(gru))
    assert shapes == jax.tree.map(lambda x: (x.shape, x.dtype), _gru_param_shapes())

    mlp = make_network(NetworkConfig(kind="mlp", hidden_dim=H, dropout=0.0), D, A, platform="cpu")
    assert isinstance(mlp, MLPActorCritic) and mlp.dtype == jnp.float32  # auto: fp32 on CPU
    assert (mlp.obs_dim, mlp.n_actions, mlp.hidden_dim) == (D, A, H)
    assert make_network(NetworkConfig(), D, A, platform="gpu").dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="unknown network kind 'lstm'; choose one of gru, mlp"):
        make_network(NetworkConfig(kind="lstm"), D, A, platform="cpu")


def test_dummy_inputs_are_what_init_traces_with():
    model = _model()
    state, obs, reset = dummy_inputs(model, 3)
    assert (state.shape, state.dtype) == ((3, L, H), jnp.float32)
    assert (obs.shape, obs.dtype) == ((3, D), jnp.float32)
    assert (reset.shape, reset.dtype) == ((3,), jnp.bool_) and reset.all()


def test_mlp_is_the_gru_network_without_its_recurrence():
    model = MLPActorCritic(D, A, hidden_dim=H, dropout=0.0)
    assert model.initial_state(B) == ()
    params = jax.jit(lambda k: init_params(model, k))(_key(1))
    assert set(params) == {"encoder", "policy_head", "value_head"}
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
    # Same encoder and heads as the GRU network of the same width.
    gru = {k: v for k, v in _gru_param_shapes().items() if k != "gru"}
    assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape, gru)
    assert count_params(params) == count_params(gru)

    step = jax.jit(lambda p, o, r: model.apply({"params": p}, (), o, r))
    unroll = jax.jit(lambda p, o, r: model.apply({"params": p}, (), o, r, method="unroll"))
    obs, _ = _inputs(12)
    no_reset = jnp.zeros((T, B), bool)
    out = unroll(params, obs, no_reset)
    assert isinstance(out, Unroll) and out.state == ()
    assert (out.logits.shape, out.logits.dtype) == ((T, B, A), jnp.float32)
    assert (out.value.shape, out.value.dtype) == ((T, B), jnp.float32)
    assert (out.trunk.shape, out.trunk.dtype) == ((T, B, H), jnp.float32)
    assert np.isfinite(np.asarray(out.logits)).all()
    # No memory: each step sees its observation alone, whatever came before or was reset.
    for t in range(T):
        s = step(params, obs[t], no_reset[t])
        assert isinstance(s, Step) and s.state == ()
        np.testing.assert_allclose(s.logits, out.logits[t], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s.value, out.value[t], rtol=1e-5, atol=1e-5)
    reset = unroll(params, obs, jnp.ones((T, B), bool))
    np.testing.assert_array_equal(reset.logits, out.logits)
    shuffled = unroll(params, obs[::-1], no_reset)
    np.testing.assert_allclose(shuffled.logits[::-1], out.logits, rtol=1e-6, atol=1e-6)
    from_trunk = model.apply({"params": params}, out.trunk, method="value_from_trunk")
    np.testing.assert_allclose(from_trunk, out.value, rtol=1e-6, atol=1e-6)


# --- the set encoder: any number of assets, in any order ------------------------------

LAYOUT = ObsLayout(n_assets=5, blocks=(3, 1), n_globals=3)  # 5 x (3 features + weight) + 3


def _set_net(layout: ObsLayout, kind: str = "gru"):
    nc = NetworkConfig(kind=kind, encoder="set", hidden_dim=H, n_gru_layers=1,
                       precision="fp32")
    return make_network(nc, layout.obs_dim, A, "cpu", layout=layout)


def _permuted(obs: jax.Array, layout: ObsLayout, perm: np.ndarray) -> jax.Array:
    """obs [..., D] with its assets reordered by `perm` (every per-asset block)."""
    tokens, globals_ = layout.split(obs)
    tokens = tokens[..., perm, :]
    blocks, at = [], 0
    for width in layout.blocks:
        blocks.append(tokens[..., at:at + width].reshape(*obs.shape[:-1], -1))
        at += width
    return jnp.concatenate([*blocks, globals_], axis=-1)


def test_layout_splits_the_flat_observation_asset_by_asset():
    obs = jnp.arange(LAYOUT.obs_dim, dtype=jnp.float32)
    tokens, globals_ = LAYOUT.split(obs)
    assert tokens.shape == (5, 4) and globals_.tolist() == [20.0, 21.0, 22.0]
    assert tokens[2].tolist() == [6.0, 7.0, 8.0, 17.0]  # asset 2's features, then its weight
    with pytest.raises(ValueError, match="observation width 7"):
        LAYOUT.split(obs[:7])


@pytest.mark.parametrize("kind", ["gru", "mlp", "transformer"])
def test_set_encoder_is_blind_to_asset_order(kind):
    net = _set_net(LAYOUT, kind)
    params = init_params(net, KEY)
    obs = jax.random.normal(jax.random.key(3), (T, B, LAYOUT.obs_dim))
    reset = jnp.zeros((T, B), bool).at[0].set(True)
    state = net.initial_state(B)
    run = jax.jit(lambda o: net.apply({"params": params}, state, o, reset, method="unroll"))
    base = run(obs)
    for seed in range(3):
        perm = np.random.default_rng(seed).permutation(LAYOUT.n_assets)
        moved = run(_permuted(obs, LAYOUT, perm))
        np.testing.assert_allclose(moved.logits, base.logits, atol=2e-5)
        np.testing.assert_allclose(moved.value, base.value, atol=2e-5)
    # The flat encoder is not: the test can tell.
    flat = make_network(NetworkConfig(kind=kind, hidden_dim=H, n_gru_layers=1,
                                      precision="fp32"), LAYOUT.obs_dim, A, "cpu")
    fp = init_params(flat, KEY)
    f = lambda o: flat.apply({"params": fp}, state, o, reset, method="unroll").logits  # noqa: E731
    assert not np.allclose(f(obs), f(_permuted(obs, LAYOUT, np.array([4, 0, 1, 2, 3]))))


def test_one_set_of_parameters_reads_any_number_of_assets():
    params = init_params(_set_net(LAYOUT), KEY)
    for n in (3, 40):
        layout = LAYOUT.with_assets(n)
        net = _set_net(layout)
        assert jax.tree.map(jnp.shape, init_params(net, KEY)) == jax.tree.map(jnp.shape, params)
        obs = jax.random.normal(jax.random.key(n), (B, layout.obs_dim))
        out = net.apply({"params": params}, net.initial_state(B), obs, jnp.ones(B, bool))
        assert out.logits.shape == (B, A) and np.isfinite(out.logits).all()


def test_set_encoder_needs_a_layout_of_the_observation_width():
    nc = NetworkConfig(encoder="set", hidden_dim=H)
    with pytest.raises(ValueError, match="no asset layout"):
        make_network(nc, 10, A, "cpu")
    with pytest.raises(ValueError, match="23 wide, not obs_dim=10"):
        make_network(nc, 10, A, "cpu", layout=LAYOUT)
    assert "set encoder" in _set_net(LAYOUT).describe()
    assert _set_net(LAYOUT).saved_bytes_per_step() > make_network(
        NetworkConfig(hidden_dim=H, n_gru_layers=1, precision="fp32"), LAYOUT.obs_dim, A,
        "cpu").saved_bytes_per_step()


def test_portfolio_layout_reads_its_observation():
    from jaxtrade.data import SyntheticConfig, build_market, synthetic_panel
    from jaxtrade.envs import PortfolioEnv

    market = build_market(synthetic_panel(SyntheticConfig(n_assets=3, n_bars=120)),
                          episode_length=16)
    env = PortfolioEnv(market)
    params = env.make_params("train", episode_length=16)
    obs, state = env.reset(jax.random.key(0), params)
    tokens, globals_ = env.obs_layout.split(obs)
    np.testing.assert_array_equal(tokens[:, :-1], params.market.features[state.t - 1])
    np.testing.assert_array_equal(tokens[:, -1], state.weights[:3])
    assert globals_[0] == state.weights[3]  # cash, then drawdown and progress


def test_set_encoder_pools_only_the_assets_that_exist():
    """With a mask token, padding changes nothing: a 3-asset observation padded to 5 gives
    the 3-asset network's logits."""
    layout = ObsLayout(n_assets=5, blocks=(4, 1), n_globals=3, mask_token=3)
    net = _set_net(layout)
    params = init_params(net, KEY)
    obs = jax.random.normal(jax.random.key(5), (B, layout.obs_dim))
    tokens, globals_ = layout.split(obs)
    exists = jnp.array([1.0, 1.0, 1.0, 0.0, 0.0])
    tokens = tokens.at[..., 3].set(exists)
    padded = jnp.concatenate([tokens[..., :4].reshape(B, -1), tokens[..., 4], globals_], -1)
    small = layout.with_assets(3)
    real = jnp.concatenate([tokens[:, :3, :4].reshape(B, -1), tokens[:, :3, 4], globals_], -1)
    run = lambda n, o: n.apply({"params": params}, n.initial_state(B), o,  # noqa: E731
                               jnp.ones(B, bool)).logits
    np.testing.assert_allclose(run(net, padded), run(_set_net(small), real), atol=2e-5)


def test_max_over_assets_is_the_max_with_a_gradient_that_is_never_nan():
    """The set encoder's max pooling: `x.max(-2)`'s values; its gradient is the upstream
    gradient at the first largest element (ties too), where `jnp.max` splits it by a count
    of equal elements that can be 0 (`max_over_assets`)."""
    x = jnp.array([[1.0, 3.0], [2.0, 3.0], [2.0, -1.0]])  # [assets 3, features 2]
    np.testing.assert_array_equal(max_over_assets(x), x.max(-2))
    g = jax.grad(lambda x: (max_over_assets(x) * jnp.array([5.0, 7.0])).sum())(x)
    np.testing.assert_array_equal(g, [[0.0, 7.0], [5.0, 0.0], [0.0, 0.0]])
    batch = jax.random.normal(KEY, (4, 6, 5, 8))
    np.testing.assert_array_equal(max_over_assets(batch), batch.max(-2))


def test_remat_recomputes_the_gru_gates_for_the_same_gradients_in_less_memory():
    """--remat: the unroll's gradients are the plain unroll's (the same arithmetic, done
    again in the backward pass), XLA's plan keeps fewer temporaries, and the memory
    estimate counts the recurrent state alone."""
    from jaxtrade import train

    t, b, d = 16, 32, 8
    obs = jax.random.normal(jax.random.key(1), (t, b, d))
    reset = jnp.zeros((t, b), bool).at[5, :4].set(True)
    grads, temp, saved = {}, {}, {}
    for remat in (False, True):
        net = GRUActorCritic(obs_dim=d, n_actions=5, hidden_dim=32, n_gru_layers=2,
                             remat=remat)
        h = net.initial_state(b)
        params = net.init(jax.random.key(0), h, obs[0], reset[0])

        def loss(p, net=net, h=h):
            u = net.apply(p, h, obs, reset, method="unroll")
            return jnp.sum(u.logits ** 2) + jnp.sum(u.value ** 2)

        fn = jax.jit(jax.grad(loss))
        temp[remat] = fn.lower(params).compile().memory_analysis().temp_size_in_bytes
        grads[remat], saved[remat] = fn(params), net.saved_bytes_per_step()
    # Recomputed gates are the same arithmetic, but sums over 16 x 32 steps may round
    # differently in another fusion (XLA code-generating at -O0, tests/xla_flags.py: 2e-5
    # in leaves whose largest values are ~100): each leaf to 1e-6 of its largest value.
    for a, b in zip(jax.tree.leaves(grads[True]), jax.tree.leaves(grads[False]), strict=True):
        assert np.abs(a - b).max() <= 1e-6 * np.abs(b).max()
    assert temp[True] < temp[False] and saved[True] == saved[False] - 2 * 3 * 32 * 4
    cfg = train.config_from_args(train.build_parser().parse_args(["--remat"]))
    assert cfg.network.remat and not train.config_from_args(
        train.build_parser().parse_args([])).network.remat
    assert "the mlp network has none" in "; ".join(
        dataclasses.replace(cfg.network, kind="mlp").problems())

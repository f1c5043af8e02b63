"""Tests for jaxtrade/networks.py: layout, dtypes, GRU resets, unroll parity, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade.networks import ActorCritic, count_params, initial_hidden, orthonormal

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
    hidden = jax.random.normal(k_hidden, (L, B, H))
    return obs, hidden


def _model(dtype=jnp.float32, dropout: float = 0.1) -> ActorCritic:
    return ActorCritic(A, hidden_dim=H, n_gru_layers=L, dropout=dropout, dtype=dtype)


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
                p, h, o, r, deterministic, method=ActorCritic.unroll, rngs={"dropout": key}
            )

        self.step = jax.jit(step, static_argnames="deterministic")
        self.unroll = jax.jit(unroll, static_argnames="deterministic")


@pytest.fixture(scope="module")
def params():
    return jax.jit(_model().init)(
        _key(0), initial_hidden(L, B, H), jnp.zeros((B, D)), jnp.ones(B, bool)
    )


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
    model = ActorCritic(16, hidden_dim=256, n_gru_layers=2, dropout=0.1)
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), initial_hidden(2, 1, 256), jnp.zeros((1, 64)),
        jnp.ones(1, bool),
    )["params"]
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
    model = ActorCritic(A, hidden_dim=64, n_gru_layers=2, dropout=0.0)
    text = jax.jit(model.init).lower(
        jax.random.key(0), initial_hidden(2, 1, 64), jnp.zeros((1, D)), jnp.ones((1,), bool)
    ).as_text()
    assert "lapack" not in text.lower()


def test_init_through_unroll_gives_the_same_tree(net):
    seq = jax.eval_shape(
        lambda k: net.model.init(
            k, initial_hidden(L, B, H), jnp.zeros((T, B, D)), jnp.ones((T, B), bool),
            method=ActorCritic.unroll,
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

    new_hidden, logits, value = n.step(n.params, hidden, obs[0], reset[0])
    assert (new_hidden.shape, new_hidden.dtype) == ((L, B, H), jnp.float32)
    assert (logits.shape, logits.dtype) == ((B, A), jnp.float32)
    assert (value.shape, value.dtype) == ((B,), jnp.float32)

    final, logits, values, trunk = n.unroll(n.params, hidden, obs, reset)
    assert (final.shape, final.dtype) == ((L, B, H), jnp.float32)
    assert (logits.shape, logits.dtype) == ((T, B, A), jnp.float32)
    assert (values.shape, values.dtype) == ((T, B), jnp.float32)
    assert (trunk.shape, trunk.dtype) == ((T, B, H), compute)
    assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(values)).all()


def test_bfloat16_tracks_float32(net, net_bf16):
    obs, hidden = _inputs(2)
    reset = jnp.zeros((T, B), bool)
    _, logits32, values32, _ = net.unroll(net.params, hidden, obs, reset)
    _, logits16, values16, _ = net_bf16.unroll(net.params, hidden, obs, reset)
    np.testing.assert_allclose(logits16, logits32, atol=0.1)
    np.testing.assert_allclose(values16, values32, atol=0.1)


def test_reset_is_a_step_from_zero_hidden(net):
    obs, hidden = _inputs(3)
    zeros = initial_hidden(L, B, H)
    from_zero = net.step(net.params, zeros, obs[0], jnp.zeros(B, bool))
    reset = net.step(net.params, hidden, obs[0], jnp.ones(B, bool))
    for a, b in zip(from_zero, reset, strict=True):
        np.testing.assert_array_equal(a, b)

    carried = net.step(net.params, hidden, obs[0], jnp.zeros(B, bool))
    for a, b in zip(from_zero, carried, strict=True):
        assert not np.allclose(a, b)


def test_reset_applies_per_env(net):
    obs, hidden = _inputs(4)
    mask = jnp.array([True, False, True])
    zeros = initial_hidden(L, B, H)
    mixed = net.step(net.params, hidden, obs[0], mask)
    from_zero = net.step(net.params, zeros, obs[0], jnp.zeros(B, bool))
    carried = net.step(net.params, hidden, obs[0], jnp.zeros(B, bool))
    new_hidden, logits, _ = mixed
    np.testing.assert_allclose(logits[mask], from_zero[1][mask], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logits[~mask], carried[1][~mask], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_hidden[:, ~mask], carried[0][:, ~mask], rtol=1e-6, atol=1e-6)


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
    hidden = np.where(np.asarray(reset)[None, :, None], 0.0, np.asarray(hidden, np.float64))
    new_hidden = []
    for layer in range(L):
        q, h = p["gru"][f"layer_{layer}"], hidden[layer]
        i_r, i_z, i_n = np.split(dense(q["input"], x), 3, axis=-1)
        h_r, h_z, h_n = np.split(dense(q["recurrent"], h), 3, axis=-1)
        r, z = sigmoid(i_r + h_r), sigmoid(i_z + h_z)
        x = (1 - z) * np.tanh(i_n + r * h_n) + z * h
        new_hidden.append(x)

    def head(q):
        return dense(q["out"], norm(q["norm"], relu(dense(q["dense"], x))))

    return np.stack(new_hidden), head(p["policy_head"]), head(p["value_head"])[:, 0]


def test_step_matches_numpy_forward(net):
    obs, hidden = _inputs(11)
    reset = jnp.array([False, True, False])
    out = net.step(net.params, hidden, obs[0], reset)
    ref = _np_forward(net.params, hidden, obs[0], reset)
    for name, a, b in zip(("hidden", "logits", "value"), out, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=name)


def test_unroll_equals_repeated_steps(net):
    obs, hidden = _inputs(5)
    reset = jnp.zeros((T, B), bool).at[2, 0].set(True).at[4, 2].set(True)
    final, logits, values, trunk = net.unroll(net.params, hidden, obs, reset)

    h = hidden
    step_logits, step_values = [], []
    for t in range(T):  # the reference loop, outside jit
        h, lg, v = net.step(net.params, h, obs[t], reset[t])
        step_logits.append(lg)
        step_values.append(v)
    np.testing.assert_allclose(final, h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logits, jnp.stack(step_logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values, jnp.stack(step_values), rtol=1e-5, atol=1e-5)

    from_trunk = net.model.apply(net.params, trunk, method=ActorCritic.value_from_trunk)
    np.testing.assert_allclose(from_trunk, values, rtol=1e-6, atol=1e-6)


def test_reset_cuts_dependence_on_the_past(net):
    obs, hidden = _inputs(6)
    t_reset = 3
    reset = jnp.zeros((T, B), bool).at[t_reset].set(True)
    other_obs = obs.at[:t_reset].set(obs[:t_reset] * -2.0 + 1.0)
    other_hidden = hidden * 3.0

    _, logits_a, values_a, _ = net.unroll(net.params, hidden, obs, reset)
    _, logits_b, values_b, _ = net.unroll(net.params, other_hidden, other_obs, reset)
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
    np.testing.assert_array_equal(plain[1], det[1])

    drop_a = net_dropout.unroll(net.params, hidden, obs, reset, key_a, deterministic=False)
    drop_a2 = net_dropout.unroll(net.params, hidden, obs, reset, key_a, deterministic=False)
    drop_b = net_dropout.unroll(net.params, hidden, obs, reset, key_b, deterministic=False)
    np.testing.assert_array_equal(drop_a[1], drop_a2[1])
    assert not np.allclose(drop_a[1], plain[1])
    assert not np.allclose(drop_a[1], drop_b[1])

    step_det = net.step(net.params, hidden, obs[0], reset[0])
    step_drop = net_dropout.step(net.params, hidden, obs[0], reset[0], key_a, deterministic=False)
    assert not np.allclose(step_det[1], step_drop[1])


def test_unroll_dropout_masks_differ_across_time(net_dropout):
    """With a constant input and zero state, identical steps differ only by their masks."""
    obs = jnp.ones((T, B, D))
    reset = jnp.ones((T, B), bool)  # every step starts from zeros
    _, logits, _, _ = net_dropout.unroll(
        net_dropout.params, initial_hidden(L, B, H), obs, reset, _key(10),
        deterministic=False,
    )
    assert not np.allclose(logits[0], logits[1])

"""GRU actor-critic (Flax Linen), the default network (``kind = "gru"``).

Linen's pure ``apply`` drops straight into ``lax.scan`` bodies (rollout, PPO
epochs) with no module state to thread. Layout, for ``D`` observation
features, ``H = hidden_dim`` and ``L = n_gru_layers``; the recurrent state is
``[B, L, H]`` float32, env axis first::

    encoder      Dense(H) -> ReLU -> LayerNorm -> Dense(H) -> ReLU -> LayerNorm -> Dropout
    gru          L stacked GRU layers of width H, Dropout between layers
    policy_head  Dense(H/2) -> ReLU -> LayerNorm -> Dense(n_actions)
    value_head   Dense(H/2) -> ReLU -> LayerNorm -> Dense(1)

The top-level parameter keys are exactly ``encoder``, ``gru``, ``policy_head``
and ``value_head``: the optimizer gives ``value_head`` to the critic chain and
everything else to the actor chain (``ppo.split_params``).

Precision: parameters are float32; matmuls run in ``dtype`` (the compute
dtype, bfloat16 on GPU); the recurrent state, GRU gate arithmetic, logits and
values are float32.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrade.networks.base import (
    Dropout,
    Dtype,
    Head,
    ObsLayout,
    Step,
    Unroll,
    dropout_rate,
    encoder_and_heads_bytes,
    encoder_bytes,
    loss_bytes,
    make_encoder,
)


def orthonormal(a: jax.Array) -> jax.Array:
    """The Q of ``a = QR`` with ``diag(R) > 0``, for square matrices ``a [..., n, n]``.

    Classical Gram-Schmidt with every column projected twice ("twice is enough"), in
    matmuls only, so a compiled init holds no LAPACK call. That is deliberate: jaxlib
    0.10's CPU LAPACK kernels (``jnp.linalg.qr`` included) split a batch of matrices over
    XLA's intra-op thread pool and block the calling pool thread until the pieces are
    done. When as many such calls run at once as the pool has threads (two simulated
    devices each initialising a GRU on a 2-core machine, or one program's two GRU
    layers), every pool thread waits on work queued behind itself and the process hangs
    forever at 0% CPU. jax removed that path from open-source builds in commit
    859992407d ("Don't try to parallelize LAPACK kernels in opensource builds",
    jax-ml/jax#36927), after 0.11.0; `tests/test_networks.py` keeps LAPACK out of the
    network's compiled init whatever the version.

    For a full-rank ``a`` this is the same matrix as ``jnp.linalg.qr`` with the signs of
    ``diag(R)`` made positive (to float rounding), so Gaussian ``a`` gives Haar-distributed Q.
    """
    n = a.shape[-1]
    hi = jax.lax.Precision.HIGHEST  # TF32 matmuls on a GPU would cost orthogonality

    def column(j, q):
        v = jax.lax.dynamic_index_in_dim(a, j, axis=-1, keepdims=False)  # [..., n]
        for _ in range(2):  # columns j.. of q are still 0, so they take nothing off v
            v = v - jnp.einsum("...ij,...j->...i", q,
                               jnp.einsum("...ij,...i->...j", q, v, precision=hi), precision=hi)
        v = v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True))
        return jax.lax.dynamic_update_index_in_dim(q, v[..., None], j, axis=-1)

    return jax.lax.fori_loop(0, n, column, jnp.zeros_like(a))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _gate_orthogonal_kernel(key: jax.Array, n_gates: int, rows: int, dtype: Dtype) -> jax.Array:
    q = orthonormal(jax.random.normal(key, (n_gates, rows, rows), jnp.float32))
    return jnp.moveaxis(q, 0, 1).reshape(rows, n_gates * rows).astype(dtype)


def _gate_orthogonal(n_gates: int) -> nn.initializers.Initializer:
    """Orthogonal init of each gate's square block of a fused ``[H, n_gates * H]`` kernel.

    One orthogonal init of the whole kernel would make its rows orthonormal
    but not each gate's block, which is what keeps the recurrence well
    conditioned at init.

    The init is jitted with ``n_gates``, ``rows`` and ``dtype`` static, so it is traced
    once per shape, dtype and key type (raw or typed). Linen's ``apply`` evaluates every
    parameter's initializer abstractly (`jax.eval_shape`) to check the parameter's shape,
    in every trace of a forward pass; tracing ``orthonormal``'s loop each time took about
    0.3 s of a 1.3-1.5 s trace of the tests' tiny training program (2-core CPU,
    2026-12-01). The values are the same to the bit.
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        rows, cols = shape
        if cols != n_gates * rows:
            raise ValueError(f"expected a [H, {n_gates}*H] recurrent kernel, got {shape}")
        return _gate_orthogonal_kernel(key, n_gates, rows, dtype)

    return init


class GRUCell(nn.Module):
    """One GRU layer, one step, with ``torch.nn.GRU``'s gates and biases.

    ``r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)``,
    ``z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``,
    ``h' = (1 - z) * n + z * h``.

    The three gates share one fused input and one fused recurrent matmul. The
    torch bias layout (``b_hr``, ``b_hz`` are redundant with ``b_ir``,
    ``b_iz``) is kept so that the parameter count and a weight mapping match
    the reference network.
    """

    hidden_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, x: jax.Array) -> jax.Array:
        """Args: h [B, H] float32, x [B, H_in]. Returns the new state [B, H] float32."""
        gi = nn.Dense(3 * self.hidden_dim, dtype=self.dtype, name="input")(x)
        gh = nn.Dense(
            3 * self.hidden_dim,
            dtype=self.dtype,
            kernel_init=_gate_orthogonal(3),
            name="recurrent",
        )(h)
        # Gate arithmetic in float32: the state is carried across hundreds of
        # steps and bf16 rounding there would compound.
        i_r, i_z, i_n = jnp.split(gi.astype(jnp.float32), 3, axis=-1)
        h_r, h_z, h_n = jnp.split(gh.astype(jnp.float32), 3, axis=-1)
        r = nn.sigmoid(i_r + h_r)
        z = nn.sigmoid(i_z + h_z)
        n = jnp.tanh(i_n + r * h_n)
        return (1.0 - z) * n + z * h


class StackedGRU(nn.Module):
    """``n_layers`` GRU layers for one time step, with reset at episode starts."""

    hidden_dim: int
    n_layers: int
    dropout: float  # > 0: dropout sites between the layers
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, hidden: jax.Array, x: jax.Array, reset: jax.Array, deterministic: bool,
        rate: jax.Array | float | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """One step.

        Args:
            hidden: [B, L, H] state before the step.
            x: [B, H] encoded observation.
            reset: [B] bool, True where the state must start from zeros.
            deterministic: disables the between-layer dropout.
            rate: the dropout rate (float32 []); None: ``dropout``.

        Returns:
            new_hidden [B, L, H] float32, output [B, H] in the compute dtype.
        """
        hidden = jnp.where(reset[:, None, None], 0.0, hidden.astype(jnp.float32))
        new_hidden = []
        for i in range(self.n_layers):
            if i > 0 and self.dropout > 0:
                x = Dropout()(x, dropout_rate(self.dropout, rate), deterministic)
            h = GRUCell(self.hidden_dim, dtype=self.dtype, name=f"layer_{i}")(hidden[:, i], x)
            new_hidden.append(h)
            x = h.astype(self.dtype)
        return jnp.stack(new_hidden, axis=1), x


class GRUActorCritic(nn.Module):
    """GRU actor-critic with a shared trunk (encoder + GRU) and two heads.

    Attributes:
        obs_dim: observation features ``D`` (for `dummy_inputs`).
        n_actions: number of discrete actions.
        hidden_dim: width ``H`` of the encoder and the GRU (heads use ``H/2``).
        n_gru_layers: number of stacked GRU layers ``L``.
        dropout: > 0: dropout after the encoder and between GRU layers, at this rate
            unless ``dropout_rate`` is passed; active only when ``deterministic=False``
            (needs the ``'dropout'`` rng). 0: no dropout sites.
        dtype: compute dtype of the matmuls; parameters stay float32 and
            logits/values are returned in float32 whatever it is.
        encoder_kind: "flat" (the encoder of the layout above) or "set" (the same blocks
            per asset, pooled over assets: `jaxtrade.networks.base.SetEncoder`).
        layout: the env's observation layout, which the set encoder needs.
    """

    obs_dim: int
    n_actions: int
    hidden_dim: int = 256
    n_gru_layers: int = 2
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    encoder_kind: str = "flat"  # "flat" or "set" (`jaxtrade.networks.base.make_encoder`)
    layout: ObsLayout | None = None  # the env's observation layout (the set encoder's)
    remat: bool = False  # unroll: recompute each step's gates in the backward pass

    def setup(self) -> None:
        self.encoder = make_encoder(self.encoder_kind, self.hidden_dim, self.dropout,
                                    self.layout, self.dtype)
        self.gru = StackedGRU(self.hidden_dim, self.n_gru_layers, self.dropout, dtype=self.dtype)
        self.policy_head = Head(self.hidden_dim // 2, self.n_actions, dtype=self.dtype)
        self.value_head = Head(self.hidden_dim // 2, 1, dtype=self.dtype)

    @nn.nowrap
    def initial_state(self, n: int) -> jax.Array:
        """Zero recurrent state of ``n`` envs, ``[n, L, H]`` float32."""
        return jnp.zeros((n, self.n_gru_layers, self.hidden_dim), jnp.float32)

    @nn.nowrap
    def saved_bytes_per_step(self) -> int:
        """Forward values of one env and step that a backward pass keeps: matmul outputs
        in the compute dtype; the GRU's gates and state, logits and values in float32."""
        h, c, f32 = self.hidden_dim, jnp.dtype(self.dtype).itemsize, 4
        # per layer: gates r, z, n (3H) and the new state; with remat the state alone (XLA
        # keeps less still: 193 MiB for 333 at T 64, B 256, H 128, L 2; a safe side)
        gru = self.n_gru_layers * (1 if self.remat else 4) * h * f32
        trunk = h * c  # the GRU output both heads read
        dropout = 0
        if self.dropout > 0:
            # A mask per dropout site (after the encoder, between GRU layers) and the
            # old policy's logits, re-evaluated under the same masks.
            dropout = (self.n_gru_layers * h + self.n_actions) * f32
        return (encoder_and_heads_bytes(h, self.dtype)
                + encoder_bytes(self.encoder_kind, h, self.layout, self.dtype) + gru + trunk
                + loss_bytes(self.n_actions) + dropout)

    @nn.nowrap
    def describe(self) -> str:
        return (f"GRU actor-critic, hidden {self.hidden_dim} x {self.n_gru_layers} layers"
                + (", set encoder over assets" if self.encoder_kind == "set" else "")
                + (", gates recomputed in the backward pass (remat)" if self.remat else ""))

    @property
    def trunk_dim(self) -> int:
        return self.hidden_dim

    def __call__(
        self,
        hidden: jax.Array,
        obs: jax.Array,
        reset: jax.Array,
        deterministic: bool = True,
        dropout_rate: jax.Array | float | None = None,
    ) -> Step:
        """One time step.

        Args:
            hidden: [B, L, H] recurrent state.
            obs: [B, D] observations.
            reset: [B] bool; True zeroes the state before the step (the previous
                step ended an episode, or this is the first step).
            deterministic: False enables dropout.
            dropout_rate: its rate (float32 []); None: the field ``dropout``.

        Returns:
            `Step`: state [B, L, H] float32, logits [B, n_actions] float32, value [B] float32.
        """
        x = self.encoder(obs, deterministic, dropout_rate)
        new_hidden, trunk = self.gru(hidden, x, reset, deterministic, dropout_rate)
        return Step(new_hidden, self.policy_head(trunk), self.value_from_trunk(trunk))

    def unroll(
        self,
        hidden: jax.Array,
        obs: jax.Array,
        reset: jax.Array,
        deterministic: bool = True,
        dropout_rate: jax.Array | float | None = None,
    ) -> Unroll:
        """A whole time-major sequence; equal to ``T`` calls of ``__call__``.

        Only the GRU is scanned over time; the encoder and heads are applied to
        all ``T * B`` rows at once.

        Args:
            hidden: [B, L, H] state before the first step.
            obs: [T, B, D] observations.
            reset: [T, B] bool; ``reset[t]`` zeroes the state before step t.
            deterministic: False enables dropout (fresh masks at every step).
            dropout_rate: its rate (float32 []); None: the field ``dropout``.

        Returns:
            `Unroll`: final state [B, L, H] float32, logits [T, B, n_actions] float32,
            value [T, B] float32, trunk [T, B, H] in the compute dtype (the GRU output
            both heads read; cached for critic-only epochs).
        """
        x = self.encoder(obs, deterministic, dropout_rate)

        def step(gru: StackedGRU, h: jax.Array, xs: tuple[jax.Array, jax.Array]):
            x_t, reset_t = xs
            return gru(h, x_t, reset_t, deterministic, dropout_rate)

        scan = nn.scan(
            nn.remat(step) if self.remat else step,
            variable_broadcast="params",
            split_rngs={"params": False, "dropout": True},
            in_axes=0,
            out_axes=0,
        )
        final_hidden, trunk = scan(self.gru, hidden, (x, reset))
        return Unroll(final_hidden, self.policy_head(trunk), self.value_from_trunk(trunk), trunk)

    def value_from_trunk(self, trunk: jax.Array) -> jax.Array:
        """Value head only. ``trunk [..., H] -> value [...]`` float32."""
        return self.value_head(trunk)[..., 0]

"""The network protocol, its named outputs, and the blocks the shipped networks share.

A jaxtrade network is a Flax Linen module with

* ``__call__(state, obs [B, D], reset [B], deterministic=True, dropout_rate=None) ->
  Step``: one step;
* ``unroll(state, obs [T, B, D], reset [T, B], deterministic=True, dropout_rate=None) ->
  Unroll``: a time-major sequence, equal to ``T`` calls of ``__call__``;
* ``value_from_trunk(trunk) -> value``: the value head alone, on cached trunk features
  (the critic-only epochs);
* ``initial_state(n)`` (``nn.nowrap``): the zero recurrent state of ``n`` envs, a pytree
  whose leaves have the env axis first (an empty tuple for a network without memory);
* ``saved_bytes_per_step()`` (``nn.nowrap``) and ``trunk_dim``: what the memory
  estimate needs (`jaxtrade.memory`);
* fields ``obs_dim`` and ``n_actions``, and a top-level ``value_head`` parameter key:
  the critic chain trains it, the actor chain everything else (`jaxtrade.ppo`).

``reset[b]`` means "env b starts a new episode at this step": a recurrent network zeroes
its state there. Logits and values are float32 whatever the compute dtype.

Dropout: a network whose field ``dropout`` is > 0 has dropout sites (`Dropout`), active
when ``deterministic=False`` (with a ``'dropout'`` rng) at the rate ``dropout_rate``
(float32 [], the run's runtime hyperparameter; None: ``dropout``), so a new rate compiles
nothing; with ``dropout = 0`` there are none.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

Dtype = Any
_F32 = 4


@struct.dataclass
class Step:
    """One step of B envs."""

    state: Any  # recurrent state after the step, leaves [B, ...]
    logits: jax.Array  # [B, n_actions] float32
    value: jax.Array  # [B] float32


@struct.dataclass
class Unroll:
    """A time-major sequence of B envs."""

    state: Any  # recurrent state after the last step, leaves [B, ...]
    logits: jax.Array  # [T, B, n_actions] float32
    value: jax.Array  # [T, B] float32
    trunk: jax.Array  # [T, B, trunk_dim] compute dtype, what both heads read


def encoder_and_heads_bytes(hidden_dim: int, dtype) -> int:
    """Values per env and step the shared `Encoder` (2 Dense + 2 LayerNorm outputs of width
    H) and the two `Head`s (Dense + LayerNorm of width H/2 each) keep for a backward pass,
    in the compute dtype."""
    h, c = hidden_dim, jnp.dtype(dtype).itemsize
    return 4 * h * c + 2 * 2 * (h // 2) * c


def loss_bytes(n_actions: int) -> int:
    """float32 values per env and step the PPO loss keeps for its backward pass: logits,
    log-softmax, value, ratio and loss terms."""
    return (2 * n_actions + 8) * _F32


@dataclasses.dataclass(frozen=True)
class ObsLayout:
    """How an env's flat observation splits into per-asset tokens and global values, for
    the set encoder: first `blocks`, each a [n_assets, width] block stored asset-major
    (asset 0's width values, then asset 1's, ...), then `n_globals` values for the whole
    portfolio. The portfolio env's is blocks (F, 1) (features, then each asset's weight)
    and 3 globals (cash weight, drawdown, episode progress)."""

    n_assets: int
    blocks: tuple[int, ...]
    n_globals: int
    # The position in a token of a flag that is 1 for an asset that exists and 0 for
    # padding (a pool of worlds pads their assets); pooling then skips padding. None: all exist.
    mask_token: int | None = None

    @property
    def obs_dim(self) -> int:
        return self.n_assets * sum(self.blocks) + self.n_globals

    @property
    def token_dim(self) -> int:
        return sum(self.blocks)

    def split(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        """obs [..., obs_dim] -> (tokens [..., n_assets, token_dim], globals [..., n_globals])."""
        if obs.shape[-1] != self.obs_dim:
            raise ValueError(f"observation width {obs.shape[-1]} is not the layout's "
                             f"{self.obs_dim} ({self})")
        lead, a, at, parts = obs.shape[:-1], self.n_assets, 0, []
        for width in self.blocks:
            parts.append(obs[..., at:at + a * width].reshape(*lead, a, width))
            at += a * width
        return jnp.concatenate(parts, axis=-1), obs[..., at:]

    def with_assets(self, n_assets: int) -> ObsLayout:
        """The same layout for another number of assets (the set encoder's parameters do
        not depend on it)."""
        return dataclasses.replace(self, n_assets=n_assets)


class Dropout(nn.Module):
    """Inverted dropout whose rate is an array (float32 [], traced or not): a mask drawn
    from the ``'dropout'`` rng keeps each value with probability 1 - rate and scales it by
    1 / (1 - rate), in the input's dtype, so a rate that changes between calls compiles
    once. ``deterministic=True`` returns the input. flax's `nn.Dropout` needs a Python
    rate; this one draws the same mask for the same key, rate and shape."""

    @nn.compact
    def __call__(self, x: jax.Array, rate: jax.Array | float, deterministic: bool) -> jax.Array:
        if deterministic:
            return x
        keep = 1.0 - jnp.asarray(rate, jnp.float32)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
        # rate 1 masks everything; dividing by 1 then keeps x / 0 (and a NaN gradient) out
        safe = jnp.where(keep > 0, keep, 1.0).astype(x.dtype)
        return jax.lax.select(mask, x / safe, jnp.zeros_like(x))


def dropout_rate(default: float, rate: jax.Array | float | None) -> jax.Array | float:
    """The rate a network's dropout sites use: `rate` given at apply time (the run's
    runtime hyperparameter), else the network's own `default`."""
    return default if rate is None else rate


ENCODERS = ("flat", "set")  # NetworkConfig.encoder: how the trunk reads an observation


def max_over_assets(x: jax.Array) -> jax.Array:
    """``x.max(-2)``, whose gradient goes to the first largest element, never divided.

    `jnp.max`'s own gradient is ``g * (x == max) / count(x == max)``. When XLA computes ``x``
    in two places (the fusion that reduces and the one that compares) and they round
    differently (a multiply-add contracted in one and not the other, say), no element
    equals the max: the count is 0 and the gradient 0 / 0 = NaN. It happened: NaN
    gradients in every set-encoder parameter after one update, with LLVM at -O0 on CPU
    (the test suite's setting, `tests/xla_flags.py`). Here the max is the sum of the
    argmax's value and zeros (exact), so the gradient is a select: no count, no gather or
    scatter.
    """
    i = jnp.argmax(x, axis=-2, keepdims=True)
    first = jnp.arange(x.shape[-2])[:, None] == i  # [..., A, H]: the argmax of each column
    return jnp.where(first, x, jnp.zeros((), x.dtype)).sum(-2)


class SetEncoder(nn.Module):
    """The same two Dense-ReLU-LayerNorm blocks applied to every asset's token, pooled over
    assets (mean and max), joined with the globals by a third block, then dropout.
    ``[..., D] -> [..., H]``, for any number of assets and invariant to their order
    (DeepSets): the parameters do not depend on ``layout.n_assets``."""

    hidden_dim: int
    dropout: float  # > 0: the dropout site exists (its rate when none is passed)
    layout: ObsLayout
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array, deterministic: bool,
                 rate: jax.Array | float | None = None) -> jax.Array:
        tokens, globals_ = self.layout.split(obs)
        x = tokens
        for i in range(2):
            x = nn.Dense(self.hidden_dim, dtype=self.dtype, name=f"asset_dense_{i}")(x)
            x = nn.LayerNorm(dtype=self.dtype, name=f"asset_norm_{i}")(nn.relu(x))
        if self.layout.mask_token is None:
            mean, top = x.mean(-2), max_over_assets(x)
        else:  # pool over the assets that exist only
            exists = tokens[..., self.layout.mask_token:self.layout.mask_token + 1] > 0.5
            count = jnp.maximum(exists.sum(-2), 1).astype(x.dtype)
            mean = jnp.where(exists, x, 0).sum(-2) / count
            top = max_over_assets(jnp.where(exists, x, jnp.finfo(x.dtype).min))
            top = jnp.where(exists.any(-2), top, 0)  # no asset at all: nothing, not -3e38
        pooled = jnp.concatenate([mean, top, globals_.astype(x.dtype)], axis=-1)
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="pool_dense")(pooled)
        x = nn.LayerNorm(dtype=self.dtype, name="pool_norm")(nn.relu(x))
        if self.dropout > 0:
            x = Dropout()(x, dropout_rate(self.dropout, rate), deterministic)
        return x


def make_encoder(kind: str, hidden_dim: int, dropout: float, layout: ObsLayout | None,
                 dtype) -> nn.Module:
    """The trunk's encoder `kind` ("flat": `Encoder`; "set": `SetEncoder` over `layout`).

    Raises:
        ValueError: an unknown kind, or "set" without a layout (the env has no assets).
    """
    if kind == "flat":
        return Encoder(hidden_dim, dropout, dtype=dtype)
    if kind == "set":
        if layout is None:
            raise ValueError("the set encoder reads per-asset observations, and this env's "
                             "observation has no asset layout (Environment.obs_layout); use "
                             "--encoder flat")
        return SetEncoder(hidden_dim, dropout, layout, dtype=dtype)
    raise ValueError(f"unknown encoder {kind!r}; choose one of {', '.join(ENCODERS)}")


def encoder_bytes(kind: str, hidden_dim: int, layout: ObsLayout | None, dtype) -> int:
    """Values per env and step the encoder keeps for a backward pass, in the compute dtype,
    beyond the flat encoder's (counted by `encoder_and_heads_bytes`): the set encoder's two
    blocks run once per asset."""
    if kind != "set" or layout is None:
        return 0
    h, c = hidden_dim, jnp.dtype(dtype).itemsize
    return (4 * h * layout.n_assets + 2 * h + layout.n_globals) * c


class Encoder(nn.Module):
    """Two Dense-ReLU-LayerNorm blocks, then dropout. ``[..., D] -> [..., H]``."""

    hidden_dim: int
    dropout: float  # > 0: the dropout site exists (its rate when none is passed)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array, deterministic: bool,
                 rate: jax.Array | float | None = None) -> jax.Array:
        x = obs
        for i in range(2):
            x = nn.Dense(self.hidden_dim, dtype=self.dtype, name=f"dense_{i}")(x)
            x = nn.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(nn.relu(x))
        if self.dropout > 0:
            x = Dropout()(x, dropout_rate(self.dropout, rate), deterministic)
        return x


class Head(nn.Module):
    """Dense(H/2) -> ReLU -> LayerNorm -> Dense(out). ``[..., H] -> [..., out]`` float32."""

    hidden_dim: int
    out_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, trunk: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="dense")(trunk)
        x = nn.LayerNorm(dtype=self.dtype, name="norm")(nn.relu(x))
        # The last projection is tiny and runs in float32: PPO ratios are
        # exp(log-prob differences), where bf16 rounding of the logits would
        # show up as spurious policy change.
        return nn.Dense(self.out_dim, dtype=jnp.float32, name="out")(x)

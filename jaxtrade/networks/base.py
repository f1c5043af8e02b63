"""The network protocol, its named outputs, and the blocks the shipped networks share.

A jaxtrade network is a Flax Linen module with

* ``__call__(state, obs [B, D], reset [B], deterministic=True) -> Step``: one step;
* ``unroll(state, obs [T, B, D], reset [T, B], deterministic=True) -> Unroll``: a
  time-major sequence, equal to ``T`` calls of ``__call__``;
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
"""

from __future__ import annotations

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


class Encoder(nn.Module):
    """Two Dense-ReLU-LayerNorm blocks, then dropout. ``[..., D] -> [..., H]``."""

    hidden_dim: int
    dropout: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, obs: jax.Array, deterministic: bool) -> jax.Array:
        x = obs
        for i in range(2):
            x = nn.Dense(self.hidden_dim, dtype=self.dtype, name=f"dense_{i}")(x)
            x = nn.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(nn.relu(x))
        return nn.Dropout(self.dropout)(x, deterministic=deterministic)


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

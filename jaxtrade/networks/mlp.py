"""Feed-forward actor-critic (``kind = "mlp"``): no recurrence, each step seen alone.

Layout: the GRU network's encoder (two Dense-ReLU-LayerNorm blocks of width ``H``, then
dropout) is the trunk both heads read, ``Dense(H/2) -> ReLU -> LayerNorm -> Dense``. It
has no state (`initial_state` is an empty tuple) and ignores `reset`, so an unroll is
the encoder and heads applied to all ``T * B`` rows at once: cheaper than the GRU, and a
check on what memory adds.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrade.networks.base import (
    Dtype,
    Head,
    ObsLayout,
    Step,
    Unroll,
    encoder_and_heads_bytes,
    encoder_bytes,
    loss_bytes,
    make_encoder,
)


class MLPActorCritic(nn.Module):
    """Encoder trunk and two heads. Fields as `jaxtrade.networks.gru.GRUActorCritic`'s."""

    obs_dim: int
    n_actions: int
    hidden_dim: int = 256
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    encoder_kind: str = "flat"  # "flat" or "set" (`jaxtrade.networks.base.make_encoder`)
    layout: ObsLayout | None = None  # the env's observation layout (the set encoder's)

    def setup(self) -> None:
        self.encoder = make_encoder(self.encoder_kind, self.hidden_dim, self.dropout,
                                    self.layout, self.dtype)
        self.policy_head = Head(self.hidden_dim // 2, self.n_actions, dtype=self.dtype)
        self.value_head = Head(self.hidden_dim // 2, 1, dtype=self.dtype)

    @nn.nowrap
    def initial_state(self, n: int) -> tuple:
        """No memory: an empty state whatever ``n``."""
        return ()

    @nn.nowrap
    def saved_bytes_per_step(self) -> int:
        dropout = (self.hidden_dim + self.n_actions) * 4 if self.dropout > 0 else 0
        return (encoder_and_heads_bytes(self.hidden_dim, self.dtype)
                + encoder_bytes(self.encoder_kind, self.hidden_dim, self.layout, self.dtype)
                + loss_bytes(self.n_actions) + dropout)

    @nn.nowrap
    def describe(self) -> str:
        return (f"MLP actor-critic (no memory), hidden {self.hidden_dim}"
                + (", set encoder over assets" if self.encoder_kind == "set" else ""))

    @property
    def trunk_dim(self) -> int:
        return self.hidden_dim

    def __call__(self, state: tuple, obs: jax.Array, reset: jax.Array,
                 deterministic: bool = True,
                 dropout_rate: jax.Array | float | None = None) -> Step:
        trunk = self.encoder(obs, deterministic, dropout_rate)
        return Step(state, self.policy_head(trunk), self.value_from_trunk(trunk))

    def unroll(self, state: tuple, obs: jax.Array, reset: jax.Array,
               deterministic: bool = True,
               dropout_rate: jax.Array | float | None = None) -> Unroll:
        trunk = self.encoder(obs, deterministic, dropout_rate)
        return Unroll(state, self.policy_head(trunk), self.value_from_trunk(trunk), trunk)

    def value_from_trunk(self, trunk: jax.Array) -> jax.Array:
        return self.value_head(trunk)[..., 0]

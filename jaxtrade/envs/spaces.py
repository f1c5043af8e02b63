"""Minimal gymnax-compatible spaces (so that no gymnax dependency is needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


class Discrete:
    """Integers in [0, n)."""

    def __init__(self, n: int):
        self.n = n
        self.shape = ()
        self.dtype = jnp.int32

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, self.shape, 0, self.n, dtype=self.dtype)

    def contains(self, x) -> jax.Array:
        return jnp.logical_and(x >= 0, x < self.n)


class Box:
    """Real vectors with elementwise bounds."""

    def __init__(self, low, high, shape: tuple[int, ...], dtype=jnp.float32):
        self.low = low
        self.high = high
        self.shape = shape
        self.dtype = dtype

    def sample(self, key: jax.Array) -> jax.Array:
        low = jnp.maximum(jnp.broadcast_to(self.low, self.shape), -1e6)
        high = jnp.minimum(jnp.broadcast_to(self.high, self.shape), 1e6)
        return jax.random.uniform(key, self.shape, self.dtype, low, high)

    def contains(self, x) -> jax.Array:
        return jnp.logical_and(jnp.all(x >= self.low), jnp.all(x <= self.high))

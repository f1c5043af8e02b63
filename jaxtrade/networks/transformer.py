"""Causal transformer actor-critic (``kind = "transformer"``): attention over the current
step and the ``context`` steps before it, within the episode.

Layout, for ``H = hidden_dim``, ``L = n_layers``, ``n = n_heads`` heads of width
``d = head_dim`` (default ``H / n``) and ``K = context``::

    encoder      the GRU network's (flat or set): one token of width H per step
    blocks_i     L pre-LayerNorm blocks on a float32 residual stream x:
                   x += Dropout(Attention(LN(x)))   n heads, over this step and the K before
                   x += Dropout(MLP(LN(x)))         Dense(4H) -> GELU -> Dense(H)
    norm         LayerNorm: the trunk both heads read
    policy_head  Dense(H/2) -> ReLU -> LayerNorm -> Dense(n_actions)
    value_head   Dense(H/2) -> ReLU -> LayerNorm -> Dense(1)

Memory, the recurrent state (`TransformerState`, env axis first): every block's input at
the last K steps, ``[B, L, K, H]`` float32, oldest first, and ``count [B]`` int32, how
many of those steps belong to the current episode (the last ``count``; the others are
zeros). A step attends to its block's stored inputs as keys and values, as Transformer-XL
does, so `unroll` over T steps (blocks of K queries against 2K keys, a banded causal
mask) equals T calls of ``__call__``; a block reads K steps back, and the inputs it reads
read K further, so the trunk sees up to ``L * K`` steps back. ``reset`` sets ``count`` to
0: a new episode attends to nothing before it. Position is a learned bias per head and
distance (0..K) on the attention logits: relative, so a sliding window needs no absolute
positions.

Why pre-LayerNorm blocks and not GTrXL's gates: a pre-LN block whose two output
projections are zero is exactly the identity (its residual stream is never normalised),
which is what `grow` relies on to add layers without changing the function; GTrXL's GRU
gates reach the identity only approximately (a gate bias). Parisotto et al. (2019) found
the pre-LN reordering ("TrXL-I") already trains stably in RL; the gates add speed there,
and could be added later as a separate kind.

Growth: `grow` turns the parameters of a network of ``n1`` heads and ``L1`` blocks into
those of one of ``n2 >= n1`` heads and ``L2 >= L1`` blocks that computes the same logits
and values (new heads and blocks start with zero output projections); growing heads at a
fixed width needs ``head_dim`` set to the small network's head width.

Precision: parameters, the residual stream and the memory are float32; matmuls run in
``dtype`` (bfloat16 on GPU); the attention softmax, logits and values are float32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

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

_F32 = 4
MLP_RATIO = 4  # the MLP's inner width, in units of H


@struct.dataclass
class TransformerState:
    """The memory of B envs."""

    memory: jax.Array  # [B, L, K, H] float32: each block's input at the last K steps, oldest first
    count: jax.Array  # [B] int32: how many of those steps belong to the current episode


class Attention(nn.Module):
    """Multi-head attention of the last ``Q`` tokens of a window over the whole window."""

    n_heads: int
    head_dim: int
    hidden_dim: int
    context: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, allowed: jax.Array, distance: jax.Array) -> jax.Array:
        """Args:
            tokens: [N, S, H] normalised block inputs; the queries are the last Q of them.
            allowed: [N, Q, S] bool, which keys each query may read (itself always).
            distance: [Q, S] int32, steps from each key to each query, clipped to 0..K.

        Returns:
            [N, Q, H] in the compute dtype.
        """
        q_len = allowed.shape[-2]
        qkv = lambda name: nn.DenseGeneral((self.n_heads, self.head_dim),  # noqa: E731
                                           dtype=self.dtype, name=name)
        q = qkv("query")(tokens[:, -q_len:])
        k, v = qkv("key")(tokens), qkv("value")(tokens)
        logits = jnp.einsum("nqhd,nshd->nhqs", q, k).astype(jnp.float32)
        bias = self.param("distance_bias", nn.initializers.zeros,
                          (self.n_heads, self.context + 1), jnp.float32)
        logits = logits / math.sqrt(self.head_dim) + bias[:, distance]
        # The float32 minimum, not -inf: exp() makes it an exact 0 weight, with no NaN.
        logits = jnp.where(allowed[:, None], logits, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("nhqs,nshd->nqhd", probs, v)
        return nn.DenseGeneral(self.hidden_dim, axis=(-2, -1), dtype=self.dtype, name="out")(out)


class Block(nn.Module):
    """Pre-LN transformer block: attention, then MLP, each added to the residual stream."""

    hidden_dim: int
    n_heads: int
    head_dim: int
    context: int
    dropout: float  # > 0: dropout sites on the two residual branches
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, allowed: jax.Array, distance: jax.Array,
                 deterministic: bool, rate: jax.Array | float | None = None) -> jax.Array:
        """tokens [N, S, H] float32 block inputs -> the last Q tokens' outputs [N, Q, H]
        float32 (Q = allowed.shape[-2]; see `Attention`); `rate`: the dropout rate
        (float32 []; None: ``dropout``)."""

        def drop(h: jax.Array) -> jax.Array:
            if self.dropout > 0:
                h = Dropout()(h, dropout_rate(self.dropout, rate), deterministic)
            return h.astype(jnp.float32)

        x = tokens[:, -allowed.shape[-2]:]
        h = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(tokens)
        h = Attention(self.n_heads, self.head_dim, self.hidden_dim, self.context,
                      dtype=self.dtype, name="attention")(h, allowed, distance)
        x = x + drop(h)
        h = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
        h = nn.gelu(nn.Dense(MLP_RATIO * self.hidden_dim, dtype=self.dtype, name="mlp_in")(h))
        h = nn.Dense(self.hidden_dim, dtype=self.dtype, name="mlp_out")(h)
        return x + drop(h)


def _valid_slots(count: jax.Array, context: int) -> jax.Array:
    """count [B] -> [B, K] bool: the memory slots of the current episode (the last count)."""
    return jnp.arange(context)[None] >= (context - count)[:, None]


class TransformerActorCritic(nn.Module):
    """Causal transformer actor-critic: shared trunk (encoder + blocks + norm), two heads.

    Attributes:
        obs_dim, n_actions, hidden_dim, dropout, dtype, encoder_kind, layout: as
            `jaxtrade.networks.gru.GRUActorCritic`'s (dropout acts on the blocks' two
            residual branches and after the encoder).
        n_heads: attention heads per block.
        n_layers: blocks ``L``.
        context: steps ``K`` before the current one a step attends to.
        head_dim: width of a head; None: ``hidden_dim // n_heads``.
    """

    obs_dim: int
    n_actions: int
    hidden_dim: int = 256
    n_heads: int = 4
    n_layers: int = 2
    context: int = 16
    head_dim: int | None = None
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    encoder_kind: str = "flat"  # "flat" or "set" (`jaxtrade.networks.base.make_encoder`)
    layout: ObsLayout | None = None  # the env's observation layout (the set encoder's)

    @property
    def head_width(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_dim // self.n_heads

    def setup(self) -> None:
        self.encoder = make_encoder(self.encoder_kind, self.hidden_dim, self.dropout,
                                    self.layout, self.dtype)
        self.blocks = [Block(self.hidden_dim, self.n_heads, self.head_width, self.context,
                             self.dropout, dtype=self.dtype) for _ in range(self.n_layers)]
        self.norm = nn.LayerNorm(dtype=self.dtype)
        self.policy_head = Head(self.hidden_dim // 2, self.n_actions, dtype=self.dtype)
        self.value_head = Head(self.hidden_dim // 2, 1, dtype=self.dtype)

    @nn.nowrap
    def initial_state(self, n: int) -> TransformerState:
        """Empty memory of ``n`` envs: zeros ``[n, L, K, H]`` float32, count 0."""
        return TransformerState(
            jnp.zeros((n, self.n_layers, self.context, self.hidden_dim), jnp.float32),
            jnp.zeros((n,), jnp.int32))

    @nn.nowrap
    def saved_bytes_per_step(self) -> int:
        """Forward values of one env and step that a backward pass keeps (the count is
        per block, for an `unroll` in blocks of K queries against 2K keys):

        * compute dtype: the attention LayerNorm output (H), query (n d), the 2K-key
          windows of keys and values (4 n d: each step is read by two query blocks),
          the heads' output (n d), the MLP LayerNorm output (H) and the MLP's inner
          layer before and after GELU (2 x 4H);
        * float32: attention logits and probabilities (2 x n x 2K), the residual
          stream after each branch (2H);
        * a block's keys and values are computed once per step and once more for each
          of the K memory steps a sequence starts from: one more step's LN, keys and
          values (H + 2 n d) while ``n_steps >= context``.

        Plus the encoder and heads, the trunk's LayerNorm output (H), the loss, and with
        dropout a float32 mask per dropout site and the old policy's logits. Against XLA's
        CPU buffer plan of the whole training program (fp32, activations ~90% of it) the
        memory estimate came out 1.6x..1.9x (hidden 16..64, context 8..16, n_steps 32..64):
        high, as the GRU's, on purpose.
        """
        h, nd, k = self.hidden_dim, self.n_heads * self.head_width, self.context
        c = jnp.dtype(self.dtype).itemsize
        block = ((h + nd + 4 * nd + nd + h + 2 * MLP_RATIO * h) * c
                 + (2 * self.n_heads * 2 * k + 2 * h) * _F32
                 + (h + 2 * nd) * c)
        dropout = 0
        if self.dropout > 0:
            dropout = (h + 2 * self.n_layers * h + self.n_actions) * _F32
        return (encoder_and_heads_bytes(h, self.dtype)
                + encoder_bytes(self.encoder_kind, h, self.layout, self.dtype)
                + self.n_layers * block + h * c + loss_bytes(self.n_actions) + dropout)

    @nn.nowrap
    def describe(self) -> str:
        return (f"transformer actor-critic, hidden {self.hidden_dim} x {self.n_layers} layers "
                f"x {self.n_heads} heads over the last {self.context} steps"
                + (", set encoder over assets" if self.encoder_kind == "set" else ""))

    @property
    def trunk_dim(self) -> int:
        return self.hidden_dim

    def __call__(self, state: TransformerState, obs: jax.Array, reset: jax.Array,
                 deterministic: bool = True,
                 dropout_rate: jax.Array | float | None = None) -> Step:
        """One time step.

        Args:
            state: memory of B envs (`TransformerState`).
            obs: [B, D] observations.
            reset: [B] bool; True empties the memory before the step.
            deterministic: False enables dropout.
            dropout_rate: its rate (float32 []); None: the field ``dropout``.

        Returns:
            `Step`: the memory with this step's block inputs added, logits [B, n_actions]
            float32, value [B] float32.
        """
        k = self.context
        x = self.encoder(obs, deterministic, dropout_rate).astype(jnp.float32)  # [B, H]
        count = jnp.where(reset, 0, state.count)
        memory = jnp.where(_valid_slots(count, k)[:, None, :, None], state.memory, 0.0)
        allowed = jnp.concatenate([_valid_slots(count, k), jnp.ones_like(reset)[:, None]],
                                  axis=-1)[:, None]  # [B, 1, K + 1]: the memory, then itself
        distance = (k - jnp.arange(k + 1))[None]  # [1, K + 1]
        inputs = []
        for i, block in enumerate(self.blocks):
            tokens = jnp.concatenate([memory[:, i], x[:, None]], axis=1)  # [B, K + 1, H]
            inputs.append(tokens[:, 1:])
            x = block(tokens, allowed, distance, deterministic, dropout_rate)[:, 0]
        count = jnp.minimum(count + 1, k)
        new_memory = jnp.where(_valid_slots(count, k)[:, None, :, None],
                               jnp.stack(inputs, axis=1), 0.0)
        trunk = self.norm(x)
        return Step(TransformerState(new_memory, count), self.policy_head(trunk),
                    self.value_from_trunk(trunk))

    def unroll(self, state: TransformerState, obs: jax.Array, reset: jax.Array,
               deterministic: bool = True,
               dropout_rate: jax.Array | float | None = None) -> Unroll:
        """A whole time-major sequence; equal to ``T`` calls of ``__call__``.

        Each block reads its memory and the sequence's inputs as one stream of ``K + T``
        tokens, split into blocks of K queries that attend to their own block and the one
        before (2K keys) under a mask: a key at most K steps back, of the query's episode.

        Args:
            state: memory before the first step.
            obs: [T, B, D] observations.
            reset: [T, B] bool; ``reset[t]`` empties the memory before step t.
            deterministic: False enables dropout (fresh masks at every step).
            dropout_rate: its rate (float32 []); None: the field ``dropout``.

        Returns:
            `Unroll`: the memory after the last step, logits [T, B, n_actions] float32,
            value [T, B] float32, trunk [T, B, H] in the compute dtype.
        """
        k = self.context
        t_len, b = reset.shape
        n_blocks = -(-t_len // k)
        pad = n_blocks * k - t_len
        x = self.encoder(obs, deterministic, dropout_rate).astype(jnp.float32).swapaxes(0, 1)
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        starts = jnp.pad(reset.T, ((0, 0), (0, pad)), constant_values=True)  # [B, T + pad]
        # Episode of every token of the stream: the memory's is 0, a reset starts the next.
        episode = jnp.concatenate([jnp.zeros((b, k), jnp.int32),
                                   jnp.cumsum(starts, axis=1, dtype=jnp.int32)], axis=1)
        readable = jnp.concatenate([_valid_slots(state.count, k), jnp.ones_like(starts)], 1)

        def windows(a: jax.Array) -> jax.Array:
            """[B, K + P, ...] stream -> [B, n_blocks, 2K, ...]: block i's keys."""
            tail = a.shape[2:]
            prev = a[:, :n_blocks * k].reshape(b, n_blocks, k, *tail)
            own = a[:, k:].reshape(b, n_blocks, k, *tail)
            return jnp.concatenate([prev, own], axis=2)

        steps = jnp.arange(k)[:, None] + k - jnp.arange(2 * k)[None]  # [K, 2K] query - key
        key_episode, key_readable = windows(episode), windows(readable)  # [B, n, 2K]
        allowed = ((key_episode[:, :, None, :] == key_episode[:, :, k:, None])
                   & key_readable[:, :, None, :] & (steps >= 0) & (steps <= k))
        allowed = allowed.reshape(b * n_blocks, k, 2 * k)
        distance = jnp.clip(steps, 0, k)

        memory = []
        for i, block in enumerate(self.blocks):
            stream = jnp.concatenate([state.memory[:, i], x], axis=1)  # [B, K + P, H]
            memory.append(stream[:, t_len:t_len + k])  # the last K steps' inputs
            tokens = windows(stream).reshape(b * n_blocks, 2 * k, -1)
            x = block(tokens, allowed, distance, deterministic, dropout_rate)
            x = x.reshape(b, n_blocks * k, -1)

        count = state.count
        last = jnp.max(jnp.where(reset, jnp.arange(t_len)[:, None], -1), axis=0)  # [B]
        count = jnp.minimum(jnp.where(last >= 0, t_len - last, count + t_len), k)
        memory = jnp.where(_valid_slots(count, k)[:, None, :, None],
                           jnp.stack(memory, axis=1), 0.0)
        trunk = self.norm(x[:, :t_len]).swapaxes(0, 1)  # [T, B, H]
        return Unroll(TransformerState(memory, count), self.policy_head(trunk),
                      self.value_from_trunk(trunk), trunk)

    def value_from_trunk(self, trunk: jax.Array) -> jax.Array:
        """Value head only. ``trunk [..., H] -> value [...]`` float32."""
        return self.value_head(trunk)[..., 0]


def grow(params: dict, small: TransformerActorCritic, large: TransformerActorCritic,
         key: jax.Array) -> dict:
    """Parameters of `large` that compute the same function as `params` of `small`.

    `large` may have more heads and more layers (same width, head width, context,
    encoder, observation and actions). Old heads and layers keep their parameters; a new
    head's query, key and value are drawn as `large`'s init draws them (from `key`) and
    its rows of the attention's output projection are zero, so it adds nothing; a new
    layer (appended on top) is drawn likewise with both output projections (attention
    and MLP, weights and biases) zero, so the pre-LN block is the identity. Training
    then moves the zeros: their gradients are not zero (`tests/test_transformer.py`).

    Args:
        params: `small`'s "params" collection.
        small, large: the two networks.
        key: draws the new parameters.

    Returns:
        `large`'s "params" collection, float32.

    Raises:
        ValueError: `large` is not a grown `small` (fewer heads or layers, or another
            width, head width, context, encoder, observation or action count).
    """
    same = ("obs_dim", "n_actions", "hidden_dim", "head_width", "context", "encoder_kind",
            "layout")
    for name in same:
        if getattr(small, name) != getattr(large, name):
            raise ValueError(f"cannot grow a transformer into one of another {name}: "
                             f"{getattr(small, name)!r} -> {getattr(large, name)!r}"
                             + ("; set head_dim to keep the heads' width"
                                if name == "head_width" else ""))
    if large.n_heads < small.n_heads or large.n_layers < small.n_layers:
        raise ValueError(f"cannot shrink a transformer: {small.n_heads} heads x "
                         f"{small.n_layers} layers -> {large.n_heads} x {large.n_layers}")
    obs = jnp.zeros((1, large.obs_dim), jnp.float32)
    fresh = large.init({"params": key}, large.initial_state(1), obs, jnp.ones((1,), bool))
    grown = dict(jax.tree.map(jnp.asarray, fresh["params"]))
    h1 = small.n_heads
    for name, value in params.items():
        if not name.startswith("blocks_"):
            grown[name] = value
            continue
        attention = dict(grown[name]["attention"])  # fresh: the new heads' draws
        for part in ("query", "key", "value"):
            attention[part] = jax.tree.map(lambda new, old: new.at[..., :h1, :].set(old),
                                           attention[part], value["attention"][part])
        attention["distance_bias"] = attention["distance_bias"].at[:h1].set(
            value["attention"]["distance_bias"])
        out_kernel = jnp.zeros_like(attention["out"]["kernel"])  # new heads add nothing
        attention["out"] = {"kernel": out_kernel.at[:h1].set(value["attention"]["out"]["kernel"]),
                            "bias": value["attention"]["out"]["bias"]}
        grown[name] = {**value, "attention": attention}
    for i in range(small.n_layers, large.n_layers):  # new layers: the identity
        block = dict(grown[f"blocks_{i}"])
        attention = dict(block["attention"])
        attention["out"] = jax.tree.map(jnp.zeros_like, attention["out"])
        block["attention"] = attention
        block["mlp_out"] = jax.tree.map(jnp.zeros_like, block["mlp_out"])
        grown[f"blocks_{i}"] = block
    return grown

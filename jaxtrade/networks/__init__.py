"""Actor-critic networks behind one protocol (`jaxtrade.networks.base`), chosen by kind.

`make_network(config.network, obs_dim, n_actions)` builds the network a config names
(`kind`: "gru", the default, "mlp" or "transformer"; `encoder`: "flat", the default, or
"set", which applies the same blocks to every asset of the env's `obs_layout` and pools
over them, so one model reads any number of assets in any order); `init_params` and
`param_shapes` initialise any of them from its own dummy inputs, so no caller writes
input shapes by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtrade.networks.base import ENCODERS, Dropout, ObsLayout, Step, Unroll
from jaxtrade.networks.gru import GRUActorCritic, orthonormal
from jaxtrade.networks.mlp import MLPActorCritic
from jaxtrade.networks.transformer import TransformerActorCritic, TransformerState, grow

Network = nn.Module


def _gru(nc, obs_dim: int, n_actions: int, dtype, layout) -> GRUActorCritic:
    return GRUActorCritic(obs_dim=obs_dim, n_actions=n_actions, hidden_dim=nc.hidden_dim,
                          n_gru_layers=nc.n_gru_layers, dropout=nc.dropout, dtype=dtype,
                          encoder_kind=nc.encoder, layout=layout,
                          remat=getattr(nc, "remat", False))


def _mlp(nc, obs_dim: int, n_actions: int, dtype, layout) -> MLPActorCritic:
    return MLPActorCritic(obs_dim=obs_dim, n_actions=n_actions, hidden_dim=nc.hidden_dim,
                          dropout=nc.dropout, dtype=dtype, encoder_kind=nc.encoder,
                          layout=layout)


def _transformer(nc, obs_dim: int, n_actions: int, dtype, layout) -> TransformerActorCritic:
    if problems := nc.problems():  # the heads do not split the width
        raise ValueError("; ".join(problems))
    return TransformerActorCritic(obs_dim=obs_dim, n_actions=n_actions,
                                  hidden_dim=nc.hidden_dim, n_heads=nc.n_heads,
                                  n_layers=nc.n_layers, context=nc.context,
                                  head_dim=nc.head_dim, dropout=nc.dropout, dtype=dtype,
                                  encoder_kind=nc.encoder, layout=layout)


NETWORKS: dict[str, Callable[..., Network]] = {
    "gru": _gru, "mlp": _mlp, "transformer": _transformer}
KINDS = tuple(NETWORKS)


def make_network(network_config, obs_dim: int, n_actions: int, platform: str | None = None,
                 layout: ObsLayout | None = None) -> Network:
    """The network `network_config` (a `jaxtrade.config.NetworkConfig`) describes, in the
    compute dtype of its precision on `platform` (default: JAX's default backend), with the
    encoder it names (`encoder`: "set" reads `layout`, the env's `obs_layout`).

    Raises:
        ValueError: an unknown `kind` or encoder, the set encoder without a layout, or a
            layout of another width than `obs_dim`.
    """
    from jaxtrade.config import compute_dtype

    kind = network_config.kind
    if kind not in NETWORKS:
        raise ValueError(f"unknown network kind {kind!r}; choose one of {', '.join(KINDS)}")
    if network_config.encoder != "set":
        layout = None  # the flat encoder reads the observation as one vector
    elif layout is None:
        raise ValueError("the set encoder reads per-asset observations, and this env's "
                         "observation has no asset layout (Environment.obs_layout); use "
                         "--encoder flat")
    elif layout.obs_dim != obs_dim:
        raise ValueError(f"the observation layout {layout} is {layout.obs_dim} wide, not "
                         f"obs_dim={obs_dim}")
    dtype = compute_dtype(network_config.precision, platform or jax.default_backend())
    return NETWORKS[kind](network_config, obs_dim, n_actions, dtype, layout)


def dummy_inputs(network: Network, n: int = 1) -> tuple[Any, jax.Array, jax.Array]:
    """(state, obs, reset) of `n` envs: what `init` traces the network with."""
    return (network.initial_state(n), jnp.zeros((n, network.obs_dim), jnp.float32),
            jnp.ones((n,), bool))


def init_params(network: Network, key: jax.Array) -> dict:
    """The network's float32 "params" collection, initialised from `key`."""
    return network.init({"params": key}, *dummy_inputs(network))["params"]


def param_shapes(network: Network) -> dict:
    """`init_params`'s tree as `jax.ShapeDtypeStruct`s: nothing is computed or placed."""
    return jax.eval_shape(lambda key: init_params(network, key), jax.random.key(0))


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree (arrays or ``jax.ShapeDtypeStruct``)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


__all__ = [
    "ENCODERS", "KINDS", "NETWORKS", "Dropout", "GRUActorCritic", "MLPActorCritic", "Network",
    "ObsLayout", "Step", "TransformerActorCritic", "TransformerState", "Unroll",
    "count_params", "dummy_inputs", "grow", "init_params", "make_network", "orthonormal",
    "param_shapes",
]

"""Device-memory estimates for the fused training program, and the n_envs that fits a budget.

Host-only. `estimate(config, env)` adds up what one device holds while
`jaxtrade.trainer`'s program runs, from the shapes alone (nothing is compiled):

* fixed, independent of n_envs: float32 parameters, their gradient, the Adam
  moments of the actor and critic chains, the copy of the parameters the PPO
  ratio is measured against, and the market arrays every env reads;
* per env on its device: the carry between iterations, the rollout's
  `Transition [n_steps]` (of the env's info, the `metric_info_keys` it keeps), the
  slots of its pending bootstraps, GAE's float32 advantages and returns, the gathered
  minibatch copy, the activations the minibatch backward pass keeps (a
  minibatch holds 1/n_minibatches of the envs at a time) and the trunk
  features of the critic-only epochs.

Activations are counted as the forward values of the network (its
`saved_bytes_per_step`, `jaxtrade.networks.base`) times `ACTIVATION_OVERHEAD`, the one calibrated
constant: the backward pass holds a cotangent beside most saved values, and
XLA keeps further temporaries (layout copies, fused-op inputs, heap
fragmentation). It was calibrated against `compiled_bytes` of the real program
on CPU: over 24 programs (n_envs 8..2048, hidden 16..256, 1 and 2 GRU layers,
n_steps 16..128, 1..8 minibatches, dropout on and off) the fp32 estimates were
1.1x..1.6x XLA's plan, leaning high on purpose (an estimate sizes n_envs, and a
shortfall is an out-of-memory error); 1.1x..1.2x where per-env memory dominates,
2.1x at 8 envs, where the market arrays dominate (XLA compiles them in as
constants, which its plan does not count; the device holds them all the same).
bf16 programs were 0.8x: XLA's CPU backend keeps bf16 matmul results in float32,
so the plan barely shrinks, while the estimate counts them in bf16 as an
accelerator stores them (not measured on one here).

Units: bytes throughout; `format_bytes` prints binary units (GiB = 2**30 bytes),
while `--max-vram` takes decimal gigabytes (GB = 1e9 bytes), as GPU vendors
quote memory.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp

from jaxtrade.config import Config, with_values
from jaxtrade.envs import Environment
from jaxtrade.rollout import bootstrap_capacity
from jaxtrade.trainer import build_network, count_network_params

ACTIVATION_OVERHEAD = 3.0  # saved forward values -> bytes XLA plans for the backward pass
GPU_FRACTION = 0.9  # share of a GPU's memory a run may plan for (the rest: XLA's own use)
CPU_FRACTION = 0.5  # share of physical RAM the CPU devices may plan for, all together
GB = 10**9  # unit of --max-vram

_F32 = 4
_BOOL = 1


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """What one device holds while the training program runs (see the module docstring)."""

    n_envs: int  # total over all devices
    n_devices: int
    fixed_bytes: int  # per device, independent of n_envs
    per_env_bytes: int  # per env on its device
    breakdown: dict[str, int]  # per device, named parts summing to per_device_bytes

    @property
    def envs_per_device(self) -> int:
        return self.n_envs // self.n_devices

    @property
    def per_device_bytes(self) -> int:
        """fixed + per_env * envs on one device."""
        return self.fixed_bytes + self.per_env_bytes * self.envs_per_device


def tree_bytes(tree) -> int:
    """Bytes of the leaves of a tree of arrays or `jax.ShapeDtypeStruct`s."""
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _params_shapes(config: Config, env: Environment):
    """The training env params as shapes: nothing is placed on a device (the estimate comes
    before the banner, and before a run places anything)."""
    return jax.eval_shape(lambda: env.make_params("train", **config.env.params_kwargs()))


def _fixed_parts(config: Config, env: Environment) -> dict[str, int]:
    """Per-device bytes that do not depend on n_envs (parameters are replicated)."""
    p = count_network_params(config, env) * _F32
    return {
        "params": p,
        "grads": p,  # one minibatch gradient at a time
        "optimizer": 2 * p,  # Adam mu and nu; the actor and critic chains split the tree
        "old_params": p,  # the rollout-time parameters of the joint epochs
        # The env's arrays (for the portfolio, the market's features, scores and prices):
        # one copy for all envs.
        "market": tree_bytes(_params_shapes(config, env)),
    }


def _env_step_bytes(config: Config, env: Environment) -> tuple[int, int]:
    """Bytes of one env's state, and of what a training rollout stores of one step's info
    (the keys `env.metric_info_keys` names) with the action mask."""
    params = _params_shapes(config, env)
    key = jax.random.key(0)
    _, state = jax.eval_shape(env.reset, key, params)
    *_, info = jax.eval_shape(env.step, key, state, jax.ShapeDtypeStruct((), jnp.int32), params)
    info = {k: info[k] for k in env.metric_info_keys}
    # The action mask a rollout stores: none if the env never masks, or masks nothing with
    # these params (its `action_mask` gives None).
    mask = jax.eval_shape(env.action_mask, state, params) if env.masks_actions else None
    return tree_bytes(state), tree_bytes(info) + tree_bytes(mask)


def _transition_bytes(env: Environment, info_bytes: int, dtype: jnp.dtype) -> int:
    """One env's `jaxtrade.rollout.Transition` for one step (`info_bytes`: its info and
    action mask)."""
    return (
        env.obs_dim * jnp.dtype(dtype).itemsize  # obs, stored in the compute dtype
        + 3 * _BOOL  # reset, done, terminated
        + 6 * _F32  # action (int32), log_prob, value, reward, final_value, episode_return
        + info_bytes  # the env's info that training keeps (e.g. cost, turnover); the mask
    )


def _per_env_parts(config: Config, env: Environment) -> dict[str, int]:
    """Bytes per env on its device, by part (rounded up to whole bytes)."""
    pc = config.ppo
    t, n_mb = pc.n_steps, pc.n_minibatches
    network = build_network(config, env)
    dtype = network.dtype
    state_bytes, info_bytes = _env_step_bytes(config, env)
    hidden = tree_bytes(jax.eval_shape(lambda: network.initial_state(1)))  # recurrent state
    transition = _transition_bytes(env, info_bytes, dtype)
    # Carry: env state, float32 obs, recurrent state, reset flag, running return; plus
    # the recurrent state before the rollout, which the update re-runs sequences from.
    carry = state_bytes + env.obs_dim * _F32 + hidden + _BOOL + _F32 + hidden
    # The rollout's pending bootstraps (`jaxtrade.rollout.PendingBootstraps`): per slot a
    # float32 final observation, a recurrent state and a step; an end count.
    slots = bootstrap_capacity(t, config.env.steps_per_episode())
    bootstrap = slots * (env.obs_dim * _F32 + hidden + _F32) + _F32
    gae = t * 3 * _F32  # advantages and returns [T] float32, and the next values they read
    # The minibatch is gathered into its own buffers: transitions, advantages,
    # returns and initial recurrent state of 1/n_minibatches of the envs.
    minibatch = (t * (transition + 2 * _F32) + hidden) / n_mb
    # What the network's forward pass keeps for the backward pass (`saved_bytes_per_step`).
    activations = ACTIVATION_OVERHEAD * t * network.saved_bytes_per_step() / n_mb
    critic = t * network.trunk_dim * jnp.dtype(dtype).itemsize / n_mb  # cached trunk [T, M, H]
    return {
        "carry": carry,
        "rollout": t * transition,
        "bootstrap": bootstrap,
        "advantages": gae,
        "minibatch": math.ceil(minibatch),
        "activations": math.ceil(activations),
        "critic_features": math.ceil(critic),
    }


def estimate(config: Config, env: Environment, n_devices: int = 1) -> MemoryEstimate:
    """Device memory of `jaxtrade.trainer.make_train(config, market)`'s program, per device.

    Args:
      config: a resolved config (`config.ppo.n_envs` set); n_envs is the total over
        all devices.
      env: the environment over the run's market (obs size, assets, market arrays).
      n_devices: devices the envs are sharded over; parameters are replicated.

    Raises:
      ValueError: n_envs unset, or n_devices < 1.
    """
    if config.ppo.n_envs is None:
        raise ValueError("n_envs is not set; call jaxtrade.config.resolve first")
    if n_devices < 1:
        raise ValueError(f"n_devices must be >= 1, got {n_devices}")
    fixed = _fixed_parts(config, env)
    per_env = _per_env_parts(config, env)
    n_local = config.ppo.n_envs // n_devices
    return MemoryEstimate(
        n_envs=config.ppo.n_envs,
        n_devices=n_devices,
        fixed_bytes=sum(fixed.values()),
        per_env_bytes=sum(per_env.values()),
        breakdown={**fixed, **{k: v * n_local for k, v in per_env.items()}},
    )


def max_n_envs(config: Config, env: Environment, budget_bytes: int, n_devices: int = 1) -> int:
    """The largest n_envs (all devices) whose estimate fits `budget_bytes` per device.

    The result is a multiple of `n_devices * config.ppo.n_minibatches` (the sizes
    `jaxtrade.config.validate` accepts), or 0 when even one such step does not fit.
    """
    step = n_devices * config.ppo.n_minibatches
    unit = estimate(with_values(config, n_envs=step), env, n_devices)
    # per_device_bytes is fixed + per_env * n_envs / n_devices: solve for whole steps.
    per_step = unit.per_env_bytes * (step // n_devices)
    return max(0, (budget_bytes - unit.fixed_bytes) // per_step) * step


def device_budget(max_vram_gb: float | None = None, device=None) -> tuple[int, str]:
    """Bytes per device the run may plan for, and how they were chosen (for the log).

    Args:
      max_vram_gb: a per-device limit in GB (1e9 bytes), as given to `--max-vram`.
      device: the device to ask; the first device of the default backend when None.

    Without a limit: `GPU_FRACTION` of the memory an accelerator reports, or, on
    CPU (which reports none), `CPU_FRACTION` of physical RAM split evenly over
    the CPU devices of this process.

    Raises:
      ValueError: max_vram_gb <= 0.
    """
    if max_vram_gb is not None:
        if max_vram_gb <= 0:
            raise ValueError(f"--max-vram must be a positive number of GB, got {max_vram_gb:g}")
        return int(max_vram_gb * GB), f"--max-vram {max_vram_gb:g} GB"
    device = jax.local_devices()[0] if device is None else device
    stats = device.memory_stats()
    if stats and "bytes_limit" in stats:
        limit = int(stats["bytes_limit"])
        return int(GPU_FRACTION * limit), (
            f"{GPU_FRACTION:.0%} of {format_bytes(limit)} device memory"
        )
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    n = len(jax.local_devices(backend=device.platform))
    return int(CPU_FRACTION * ram / n), (
        f"{CPU_FRACTION:.0%} of {format_bytes(ram)} RAM shared by {n} "
        f"{device.platform.upper()} device(s)"
    )


def peak_bytes(device=None) -> int | None:
    """The device's peak bytes in use so far, from JAX's memory statistics; None on CPU."""
    device = jax.local_devices()[0] if device is None else device
    stats = device.memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


def measured_peak(compiled: jax.stages.Compiled, device=None) -> tuple[int, bool]:
    """Peak bytes per device of a run of `compiled`, and whether they come from the device.

    Where the backend keeps memory statistics (GPU) that is `peak_bytes` (True); else
    (CPU) XLA's buffer plan of `compiled`, `compiled_bytes` (False).
    """
    peak = peak_bytes(device)
    return (peak, True) if peak is not None else (compiled_bytes(compiled), False)


def compiled_bytes(compiled: jax.stages.Compiled) -> int:
    """XLA's buffer plan of a compiled function, per device: arguments + outputs + temporaries,
    less the outputs that reuse (donated) argument buffers.

    On CPU, where no peak is measured, this is the measured counterpart of `estimate`.

    Raises:
      ValueError: the backend gives no memory analysis.
    """
    m = compiled.memory_analysis()
    if m is None:
        raise ValueError("this backend gives no memory analysis of compiled programs")
    return (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: int) -> str:
    """`n` bytes in binary units: "512 B", "1.50 KiB", "512.0 MiB", "139.8 GiB"."""
    if abs(n) < 1024:
        return f"{n} B"
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.2f} {_UNITS[unit]}" if abs(value) < 10 else f"{value:.1f} {_UNITS[unit]}"

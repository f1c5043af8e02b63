"""Devices and hosts: the 1-D mesh the envs are sharded over, and multi-host start-up.

Data parallelism, one code path for 1..N devices: the env axis of every per-env
array (env states, observations, recurrent states, rollout buffers) is split over a
1-D mesh whose axis is named `AXIS`; parameters, optimizer states, market data
and hyperparameters are replicated. The training program is one `jax.jit` with
these shardings on its inputs and outputs; XLA partitions it, so reductions
over envs (losses, gradients, metrics) become cross-device all-reduces and the
gradient every device applies is the mean over all envs. A single CPU is the
1-device case of the same program.

Several hosts join through `jax.distributed` (`initialize`); every process then
runs the same program on its own devices, each holding its slice of the envs.

A population (`jaxtrade.population`) runs on a 2-D mesh (`population_mesh`): axis
`MEMBERS` splits the member axis into groups, axis `AXIS` splits each member's envs, so
G groups x D/G devices place N members x n_envs envs (N/G members per device row, each
member's envs over its row's D/G devices). Members never exchange data while they train
(their gradients reduce over `AXIS` only); exploit/explore copies between them.

Host-only helpers; nothing here runs under `jit` except through `constrain`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"  # the mesh axis envs are split over
MEMBERS = "members"  # a population's mesh axis its members are split over

# Environment variables `jax.distributed.initialize` reads when no flag is given.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


class ParallelError(ValueError):
    """Devices or hosts that cannot be used as asked; the message is one line."""


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins a multi-process run through `jax.distributed`; False (nothing done) for one process.

    The three values come from the arguments (the CLI's --coordinator HOST:PORT,
    --num-processes N and --process-id I) or else from the environment variables
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. Call it before
    anything asks JAX for its devices.

    Raises:
        ParallelError: some but not all of the three are given, or they are invalid,
            or the coordinator cannot be reached.
    """
    values = {
        "--coordinator": coordinator or os.environ.get(ENV_COORDINATOR) or None,
        "--num-processes": num_processes if num_processes is not None
        else _env_int(ENV_NUM_PROCESSES),
        "--process-id": process_id if process_id is not None else _env_int(ENV_PROCESS_ID),
    }
    given = [k for k, v in values.items() if v is not None]
    if not given:
        return False
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise ParallelError(
            f"a multi-process run needs --coordinator HOST:PORT, --num-processes N and "
            f"--process-id I (or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); "
            f"missing {', '.join(missing)}"
        )
    address, n, i = values["--coordinator"], values["--num-processes"], values["--process-id"]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ParallelError(f"--coordinator must be HOST:PORT, got {address!r}")
    if n < 1:
        raise ParallelError(f"--num-processes must be >= 1, got {n}")
    if not 0 <= i < n:
        raise ParallelError(f"--process-id must be in [0, {n - 1}], got {i}")
    if jax.distributed.is_initialized():
        return True
    try:
        jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=i)
    except Exception as e:  # noqa: BLE001 - one line naming the coordinator instead
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ParallelError(
            f"process {i} of {n} could not join the run at {address}: {first}"
        ) from None
    return True


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ParallelError(f"{name} must be an integer, got {text!r}") from None


def select_devices(n_devices: int | None = None) -> list[jax.Device]:
    """The devices a run uses: all of them, or `n_devices` taken evenly from every process.

    Raises:
        ParallelError: more devices than there are, or a count the processes cannot
            share equally.
    """
    devices = jax.devices()
    if n_devices is None:
        return devices
    n_proc = jax.process_count()
    if n_devices < 1:
        raise ParallelError(f"--devices must be >= 1, got {n_devices}")
    if n_devices > len(devices):
        raise ParallelError(
            f"--devices {n_devices}: only {len(devices)} {devices[0].platform} device(s) "
            f"are visible{f' over {n_proc} processes' if n_proc > 1 else ''}"
        )
    if n_devices % n_proc:
        raise ParallelError(
            f"--devices {n_devices} must be a multiple of the {n_proc} processes (each "
            f"process contributes the same number of devices)"
        )
    per_process = n_devices // n_proc
    chosen = []
    for p in range(n_proc):
        chosen += [d for d in devices if d.process_index == p][:per_process]
    return chosen


def make_mesh(n_devices: int | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The 1-D mesh (axis `AXIS`) over `devices`, or over `select_devices(n_devices)`.

    The axis type is Auto: shardings are given on inputs and outputs and propagated
    by XLA, not carried in the types.
    """
    devices = list(devices) if devices is not None else select_devices(n_devices)
    return Mesh(np.array(devices), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def population_mesh(groups: int, n_devices: int | None = None,
                    devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The 2-D mesh (`MEMBERS`, `AXIS`) of a population: `groups` rows of member groups,
    each row's devices splitting its members' envs.

    Raises:
        ParallelError: `groups` does not divide the device count.
    """
    devices = list(devices) if devices is not None else select_devices(n_devices)
    if groups < 1 or len(devices) % groups:
        raise ParallelError(f"{groups} member group(s) cannot share {len(devices)} device(s) "
                            f"equally: the groups must divide the devices")
    grid = np.array(devices).reshape(groups, len(devices) // groups)
    return Mesh(grid, (MEMBERS, AXIS), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def data_size(mesh: Mesh) -> int:
    """Devices one run's (one member's) envs are split over: the size of axis `AXIS`."""
    return int(mesh.shape[AXIS])


def member_groups(mesh: Mesh) -> int:
    """Groups a population's members are split into (1 on a single run's 1-D mesh)."""
    return int(mesh.shape.get(MEMBERS, 1))


def members_sharding(mesh: Mesh, single: NamedSharding | None = None) -> NamedSharding:
    """A population leaf `[N, ...]`: its member axis split over `MEMBERS`, the rest placed
    as a single run's leaf (`single`, default replicated) is placed within a group."""
    spec = () if single is None else tuple(single.spec)
    return NamedSharding(mesh, PartitionSpec(MEMBERS, *spec))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (params, optimizer states, market data)."""
    return NamedSharding(mesh, PartitionSpec())


def env_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Axis `axis` (the env axis) split over the mesh; the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), AXIS))


def constrain(tree, mesh: Mesh, axis: int):
    """Inside `jit`: pins every leaf of `tree` to be split over the mesh along `axis`.

    Keeps the per-env work of scans (rollout steps, minibatches) on the devices that
    hold those envs; a no-op on a 1-device mesh.
    """
    if mesh.size == 1:
        return tree
    sharding = env_sharding(mesh, axis)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def copy(tree):
    """Fresh buffers for every array of `tree`, each placed where it is: a snapshot that
    donating `tree` afterwards cannot free (e.g. for a checkpoint written in the background).

    A device-to-device copy, shard by shard. In one process it compiles nothing, where
    `jax.tree.map(jnp.copy, tree)` compiles a program per leaf shape the first time; across
    processes jax copies a global array with an identity program (one compile per leaf
    shape and sharding, as `jnp.copy`). Host leaves (numpy, Python scalars) go to the
    default device."""
    return jax.device_put(tree, jax.tree.map(lambda x: getattr(x, "sharding", None), tree),
                          may_alias=False)


def put_replicated(tree, mesh: Mesh):
    """Host or single-device arrays as arrays replicated over `mesh` (also across processes).

    Every process must pass the same values (e.g. the market, built from the same data).
    """
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def is_primary() -> bool:
    """True in the process that writes logs and run metadata (process 0)."""
    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True when `flag` is True in any process (all processes must call it together).

    With one process it is `flag`; with several, a tiny all-gather, so that every
    process takes the same decision (e.g. to stop after a signal reached only one).
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def min_over_processes(value: int) -> int:
    """The smallest of every process's `value` (all processes call it together), so that
    choices made from local facts, like a memory budget, agree across hosts."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils

    # JAX arrays are 32-bit by default: send the value as two 31-bit halves.
    value = int(value)
    halves = np.asarray([value >> 31, value & (2**31 - 1)], np.int32)
    rows = np.asarray(multihost_utils.process_allgather(halves)).reshape(-1, 2)
    hi, lo = min((int(h), int(lo)) for h, lo in rows)
    return (hi << 31) | lo


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name`; nothing with one process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def describe(mesh: Mesh) -> str:
    """E.g. "4 x cpu (1 process)" or "16 x NVIDIA H100 80GB HBM3 (2 processes)"; a
    population's 2-D mesh adds its shape, e.g. "4 x cpu (1 process) as 2 member groups x
    2 env shards"."""
    devices = mesh.devices.reshape(-1)
    n_proc = len({d.process_index for d in devices})
    text = (f"{len(devices)} x {devices[0].device_kind} "
            f"({n_proc} process{'es' if n_proc > 1 else ''})")
    if MEMBERS in mesh.shape and len(devices) > 1:
        g, d = member_groups(mesh), data_size(mesh)
        text += (f" as {g} member group{'s' if g > 1 else ''} x {d} env "
                 f"shard{'s' if d > 1 else ''}")
    return text

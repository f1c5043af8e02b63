"""Run as `python -m tests.population_mesh_worker`; prints JSON.

A population of 4 members on 4 simulated CPU devices laid out as a 2-D mesh (members x
envs): 4 groups x 1 and 2 groups x 2 env shards, against the same population
on 1 device, from the same key, float32, 2 iterations, then one exploit/explore and one
more iteration. Reports how far each layout's parameters are from the 1-device run's,
how the arrays are placed, which collectives each program uses, and whether the second
call traced again. `tests/test_population_mesh.py` runs it in a subprocess because the
device count is fixed when JAX starts.
"""

import json
import os
import re

from tests import xla_flags

N_DEVICES = 4
os.environ["XLA_FLAGS"] = xla_flags.flags(N_DEVICES)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxtrade import config as C  # noqa: E402
from jaxtrade import parallel  # noqa: E402
from jaxtrade import population as P  # noqa: E402
from jaxtrade.data import SyntheticConfig, build_market, synthetic_panel  # noqa: E402
from jaxtrade.trainer import make_train  # noqa: E402

MEMBERS = 4
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute",
               "reduce-scatter")


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def flat(tree) -> np.ndarray:
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def main() -> None:
    market = build_market(
        synthetic_panel(SyntheticConfig(n_assets=5, n_bars=400, seed=1)),
        episode_length=32, val_fraction=0.2, test_fraction=0.1,
    )
    cfg = C.resolve(C.with_values(
        C.Config(), hidden_dim=16, n_gru_layers=1, n_envs=16, n_steps=8, n_minibatches=2,
        episode_length=32, ppo_epochs=1, critic_epochs=1, precision="fp32",
    ), "cpu")
    devices = jax.devices()
    layouts = {"1x1": parallel.population_mesh(1, devices=devices[:1]),
               "4x1": parallel.population_mesh(4, devices=devices),
               "2x2": parallel.population_mesh(2, devices=devices)}
    scores = jnp.asarray([0.3, -1.0, 2.0, 0.5], jnp.float32)  # slot 1 copies slot 2
    out, params, first = {}, {}, None
    for name, mesh in layouts.items():
        trainer = make_train(cfg, market, mesh)
        pop = P.init_population(trainer, jax.random.key(0), MEMBERS)
        if first is None:
            first = jax.device_get(pop.members.params)
        program = P.train_population(trainer, 2)
        lowered = program.lower(pop, trainer.env_params)
        text = lowered.compile().as_text()
        traces = []
        pop, _ = program(pop, trainer.env_params)
        traces.append(program._cache_size())
        ee = P.make_exploit_explore(placement=P.shardings(trainer))
        pop = ee(pop, scores)
        pop, metrics = program(pop, trainer.env_params)
        traces.append(program._cache_size())
        leaf = jax.tree.leaves(pop.members.params)[0]
        out[name] = {
            "collectives": {op: len(re.findall(rf"= \S+ {op}(?:-start)?\(", text))
                            for op in COLLECTIVES},
            "params_spec": str(leaf.sharding.spec),
            "obs_spec": str(pop.members.carry.obs.sharding.spec),
            "obs_shard_shape": list(pop.members.carry.obs.addressable_shards[0].data.shape),
            "params_shard_shape": list(leaf.addressable_shards[0].data.shape),
            "key_spec": str(pop.key.sharding.spec),
            "traces": traces,
            "describe": parallel.describe(mesh),
            "finite": bool(np.isfinite(flat(jax.device_get(metrics))).all()),
        }
        params[name] = jax.device_get(pop.members.params)
    base = flat(params["1x1"])
    for name in layouts:
        out[name]["params_rel"] = rel(base, flat(params[name]))
        # member 1 became a copy of member 2 and trained on: per member too
        out[name]["members_rel"] = [
            rel(flat(jax.tree.map(lambda x, i=i: x[i], params["1x1"])),
                flat(jax.tree.map(lambda x, i=i: x[i], params[name]))) for i in range(MEMBERS)]
    out["changed_rel"] = rel(flat(first), base)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

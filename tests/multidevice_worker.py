"""Run as `python -m tests.multidevice_worker N` (N simulated CPU devices); prints JSON.

Trains the same tiny config from the same seed for 3 iterations on a 1-device mesh and
on an N-device mesh (float32) and reports how far apart their losses and parameters
are, and which collectives the N-device program uses. `tests/test_parallel.py` runs it
in a subprocess because the device count is fixed when JAX starts.
"""

import json
import os
import re
import sys

from tests import xla_flags

N = int(sys.argv[1])
os.environ["XLA_FLAGS"] = xla_flags.flags(N)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxtrade import config as C  # noqa: E402
from jaxtrade import parallel  # noqa: E402
from jaxtrade.data import SyntheticConfig, build_market, synthetic_panel  # noqa: E402
from jaxtrade.trainer import make_train  # noqa: E402

ITERATIONS = 3
LOSSES = ("policy_loss", "value_loss", "entropy", "approx_kl", "critic_loss_after")


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))


def main() -> None:
    market = build_market(
        synthetic_panel(SyntheticConfig(n_assets=5, n_bars=400, seed=1)),
        episode_length=32, val_fraction=0.2, test_fraction=0.1,
    )
    cfg = C.resolve(C.with_values(
        C.Config(), hidden_dim=16, n_gru_layers=1, n_envs=32, n_steps=16, n_minibatches=2,
        episode_length=32, ppo_epochs=2, critic_epochs=2, precision="fp32",
    ), "cpu")
    out, runs = {}, {}
    for n in (1, N):
        trainer = make_train(cfg, market, parallel.make_mesh(n))
        state = trainer.initial_state(jax.random.key(0))
        compiled = trainer.compile(state, ITERATIONS)
        if n == N:
            text = compiled.as_text()
            out["collectives"] = {
                op: len(re.findall(rf"= \S+ {op}(?:-start)?\(", text))
                for op in ("all-gather", "all-reduce", "all-to-all", "collective-permute",
                           "reduce-scatter")
            }
            out["obs_sharding"] = str(state.carry.obs.sharding.spec)
            out["obs_shards"] = len(state.carry.obs.addressable_shards)
        state, metrics = compiled(state, trainer.env_params, trainer.schedule)
        runs[n] = (jax.device_get(state.params), jax.device_get(metrics))
    (p1, m1), (pn, mn) = runs[1], runs[N]
    leaves1, leavesn = jax.tree.leaves(p1), jax.tree.leaves(pn)
    flat1 = np.concatenate([x.ravel() for x in leaves1])
    flatn = np.concatenate([x.ravel() for x in leavesn])
    out["params_rel"] = rel(flat1, flatn)
    out["params_max_leaf_rel"] = max(rel(a, b) for a, b in zip(leaves1, leavesn, strict=True))
    out["params_changed_rel"] = rel(flat1, np.concatenate(
        [x.ravel() for x in jax.tree.leaves(jax.device_get(
            make_train(cfg, market, parallel.make_mesh(1)).initial_state(
                jax.random.key(0)).params))]
    ))
    out["losses_rel"] = {k: rel(m1[k], mn[k]) for k in LOSSES}
    out["losses_1"] = {k: np.asarray(m1[k]).tolist() for k in LOSSES}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""XLA flags for every process of the test suite (the pytest workers, CLI subprocesses and
the multi-device workers).

The suite's programs are tiny (8 envs x 8 steps, 8 hidden units), so most of its time is
XLA compiling them, not running them. Two flags halve a CPU compile: the legacy emitters
for fusions (`--xla_cpu_use_fusion_emitters=false`) and LLVM at -O0
(`--xla_backend_optimization_level=0`; the default is 3). Measured on the 2-core machine:
the tiny training CLI's training program 6.9 s -> 3.2 s, its evaluation 3.2 s -> 1.4 s,
same validation score; the whole suite 1,433 s -> 617 s (at -O1: 876 s). Neither changes
the HLO (the graph passes, sharding, collectives, buffer assignment that tests inspect),
only how fused kernels are code-generated, which may round differently (a multiply-add
contracted or not): a few tolerances say so, and -O0 found the set encoder's NaN-prone
max pooling (`jaxtrade.networks.base.max_over_assets`). Runs are a little slower (a 30 s
learning test: +7%). Users' runs keep XLA's defaults.
"""

import os

FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0")


def flags(n_devices: int | None = None) -> str:
    """XLA_FLAGS for a test process, with `n_devices` simulated CPU devices if given."""
    devices = () if n_devices is None else (
        f"--xla_force_host_platform_device_count={n_devices}",)
    return " ".join((*FAST_COMPILE, *devices))


def add_fast_compile(environ=os.environ) -> None:
    """Adds `FAST_COMPILE` to `environ["XLA_FLAGS"]` (before JAX starts), keeping what is
    there."""
    have = environ.get("XLA_FLAGS", "").split()
    environ["XLA_FLAGS"] = " ".join(have + [f for f in FAST_COMPILE if f not in have])

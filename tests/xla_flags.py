"""XLA flags for every process of the test suite (the pytest workers, CLI subprocesses and
the multi-device workers).

The suite's programs are tiny (8 envs x 8 steps, 8 hidden units), so most of its time is
XLA compiling them, not running them. Two flags halve a CPU compile: the legacy emitters
for fusions (`--xla_cpu_use_fusion_emitters=false`) and LLVM at -O0
(`--xla_backend_optimization_level=0`; the default is 3). Measured on the 2-core machine:
the tiny training CLI's training program 6.9 s -> 3.2 s, its evaluation 3.2 s -> 1.4 s
(-O0 alone: 6.3 s and 3.0 s), same validation score; the whole suite 1,433 s -> 597 s (at
-O1: 876 s). A third keeps each module's code generation on one thread
(`--xla_cpu_parallel_codegen_split_count=1`; by default it is split in up to 32 parts for
parallel threads): two workers already keep both cores busy. Alternating with and without
it, three times each, the tiny program's compiles took 4.4-5.2 s + 1.8-2.1 s against
5.0-5.5 s + 2.1-2.4 s.

The LLVM level and the split change only code generation. The fusion-emitter flag also
steers XLA:CPU's fusion passes, so the fusions and the buffer plans the memory tests
compare with differ a little from users' (a probe's temporaries: 25,760 bytes against
25,616); the sharding and collectives that tests inspect do not change.
Generated code may round differently (a multiply-add contracted or not): a few tolerances
say so, and -O0 found the set encoder's NaN-prone max pooling
(`jaxtrade.networks.base.max_over_assets`). Code from -O0 runs slower: the learning
test's 60-iteration program ran 24 s against 8 s at -O3, so that test compiles its program
at -O3 (`compiler_options`, which override these flags for one program); the suite's other
programs are tiny and compile-bound. Users' runs keep XLA's defaults.

Four HLO passes are skipped (`--xla_disable_hlo_passes`, `SKIPPED_PASSES`): the verifier
that checks the module between passes, and three while-loop passes (loop-invariant code
motion, loop simplification, constant sinking) that kept XLA's simplification pipeline
iterating. They are checks and optimizations, not lowering steps: a program computes the
same values without them, only recomputing loop-invariant values each iteration. On the
tiny training program (`tests/test_trainer.py`'s TINY, 2026-12-01, XLA's pass log) they
took 0.9-1.2 s of its 1.9 s of HLO passes; its compile took 2.0-3.0 s (median 2.4) with
them skipped against 3.1-3.7 s (median 3.6), five alternated compiles in one process.
`tests/test_schedule.py` alone, alternated twice: 109-115 s against 120-124 s. The
learning test's `compiler_options` set the LLVM level only, so its program skips these
passes too; that test took 28.5-28.8 s with them skipped against 28.7-31.5 s (alternated
twice).
"""

import os

SKIPPED_PASSES = ("hlo-verifier", "while-loop-invariant-code-motion", "simplify-while-loops",
                  "while-loop-constant-sinking")

FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0",
                "--xla_cpu_parallel_codegen_split_count=1",
                "--xla_disable_hlo_passes=" + ",".join(SKIPPED_PASSES))


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

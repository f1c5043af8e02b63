"""Throughput of env stepping and of end-to-end PPO training vs n_envs (and devices).

    python -m benchmarks.throughput [--env funding] [--n-envs 32 64 128] [--devices 1 2 4 8]
        [--profile DIR]

Per row (a device count and a total n_envs) it measures, for one registered env (`--env`,
the portfolio env by default, on its fixed embedded market; any other on the market its
training run loads, `jaxtrade.engine.start.load_run_market`) with that env's default
episode length, on the reference network (hidden 256, 2 GRU layers) unless told otherwise:

* env steps/s: random actions (uniform among the valid ones, for an env that masks
  actions, as a masked policy samples them) into the vmapped `env.step`, `lax.scan` over
  --env-steps steps, envs sharded over the same devices as training;
* train steps/s: whole PPO iterations (`jaxtrade.trainer`: rollout, GAE, joint epochs,
  critic epochs), env steps of the timed iterations over their wall time, learning
  included; the mean of --iterations iterations after one warm-up iteration;
* compile s: AOT `lower` + `compile` of one iteration, apart from the timed runs;
* peak memory: on accelerators the device's peak bytes in use (JAX's memory
  statistics of the first device); it is the high-water mark of the whole process,
  so rows are measured in ascending order of envs per device. CPUs report none: there
  the figure is XLA's buffer plan of the compiled iteration (`jaxtrade.memory.
  compiled_bytes`). The shape-only estimate (`jaxtrade.memory.estimate`) is recorded
  beside it;
* FLOPs per env step, and achieved FLOP/s = FLOPs per env step x train steps/s, as a
  fraction of the devices' peak (`peak_flops`).

How FLOPs are counted. XLA's cost analysis (`compiled.cost_analysis()["flops"]`)
counts the body of a while loop once, not once per trip, and a training iteration
is nested scans (rollout steps, epochs, minibatches, the GRU over time), so the
analysis of the whole program undercounts it by orders of magnitude. Instead
`count_flops` compiles loop-free pieces of one iteration (a scan of length 1 counts
exactly: its body once), takes XLA's count of each (matmuls, and the elementwise
work of the env, LayerNorms, the loss and Adam) and multiplies each by the trip count
the config fixes. For B envs, T steps, E joint epochs, K minibatches of M = B / K envs
and C critic epochs, one iteration costs

    T x act(B)                  policy step, sampling and vmapped env.step, one rollout step
  + S x fwd(B)                  the bootstrap values of time-limit ends: one forward over
                                S = `bootstrap_capacity` slots per env after the scan (an
                                end that finds its env's slots full, rare, costs a forward
                                at its step: not counted)
  + fwd(B)                      the value after the last step
  + E x K x (T x grad(M) + opt) forward + backward of one step of the minibatch unroll
                                (gradient w.r.t. the parameters and the incoming GRU
                                state, as backpropagation through time computes), then
                                the updates of both optimizer chains
  + K x (T x trunk(M) + C x (critic(T, M) + critic_opt))
                                critic epochs: encoder + GRU forward once, then C value
                                head steps on the cached trunk features

and FLOPs per env step is that over B x T. Left out: GAE and the metrics (tens of
FLOPs per env step). With dropout > 0, `grad` includes the re-evaluation of the old
policy under the same masks, as the trainer does. FLOPs are counted for the whole
batch, whatever the device count; they do not depend on the precision.

For the reference network, one forward is about 1.9 MFLOP of matmuls (2 x in x out
per Dense, 2 x (in x 3H + H x 3H) per GRU layer) and a training env step about
27 MFLOP: one forward in the rollout (and (S + 1) / T of one for the bootstraps and the
last value), four forward + backward passes (about 3 forwards each), a trunk forward
and four value-head steps.

Prints one line per row as it is measured, the table at the end, and writes
benchmarks/results/throughput_<device>_<date>.json, or <env>_throughput_<device>_<date>.json
for an env other than the portfolio env; every row and the settings name the env
(host-only code).
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

from benchmarks.common import device_info, save, table
from jaxtrade import config as cfgmod
from jaxtrade import memory, parallel, ppo
from jaxtrade.engine.start import load_run_market
from jaxtrade.envs import registered
from jaxtrade.rollout import bootstrap_capacity, make_rollout
from jaxtrade.trainer import Trainer, make_train

CPU_N_ENVS = (32, 64, 128)
ACCELERATOR_N_ENVS = (4096, 16384, 65536)

# Dense (not 2:4-sparse) peak FLOP/s per GPU, from NVIDIA's datasheets: BF16 tensor cores
# with FP32 accumulation, and FP32 without tensor cores. The datasheets quote tensor-core
# figures "with sparsity"; the dense figure is half. First matching pattern wins.
GPU_PEAKS = (
    # (pattern on jax's device_kind, bf16 FLOP/s, fp32 FLOP/s, source)
    (r"GH200", 989e12, 67e12, "NVIDIA GH200 Grace Hopper Superchip datasheet"),
    (r"H100.*PCIe", 756e12, 51e12, "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe"),
    (r"H100.*NVL", 835e12, 60e12, "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL"),
    (r"H100", 989e12, 67e12, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM"),
    (r"H200.*NVL", 835e12, 60e12, "NVIDIA H200 Tensor Core GPU datasheet, H200 NVL"),
    (r"H200", 989e12, 67e12, "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM"),
    (r"A100", 312e12, 19.5e12, "NVIDIA A100 Tensor Core GPU datasheet"),
    (r"\bL4\b", 121e12, 30.3e12, "NVIDIA L4 Tensor Core GPU datasheet"),
    (r"RTX 4090", 165.2e12, 82.6e12, "NVIDIA Ada Lovelace GPU architecture whitepaper, RTX 4090"),
)


def gpu_peak_flops(device_kind: str, dtype) -> tuple[float, str] | None:
    """Datasheet peak FLOP/s of one GPU for matmuls in `dtype`, and its source; None if unknown.

    float32 takes the non-tensor-core figure (XLA may run float32 matmuls on TF32
    tensor cores, which are faster; the fraction is then an upper bound).
    """
    for pattern, bf16, fp32, source in GPU_PEAKS:
        if re.search(pattern, device_kind, re.IGNORECASE):
            if jnp.dtype(dtype) == jnp.bfloat16:
                return bf16, f"{source} (BF16 dense tensor core)"
            return fp32, f"{source} (FP32)"
    return None


def cpu_peak_flops(cpuinfo: str, n_cores: int) -> tuple[float, str]:
    """Estimated float32 peak of `n_cores` cores from the text of /proc/cpuinfo, and how.

    cores x clock x FLOPs per cycle per core: 64 with AVX-512 (two 16-lane FMA units),
    32 with AVX2 + FMA, 16 with AVX or Arm NEON, else 8. The clock is the nominal one
    in the model name ("@ 2.50GHz"), else "cpu MHz", else an assumed 2.5 GHz. An upper
    bound: turbo and AVX-512 clocks differ, some parts have one FMA unit, and a vCPU may
    be a hyperthread. bfloat16 matmuls run on the same float32 units on CPU.
    """
    flags_line = re.search(r"^(?:flags|Features)\s*:(.*)$", cpuinfo, re.MULTILINE)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512"
    elif {"avx2", "fma"} <= flags:
        per_cycle, isa = 32, "AVX2+FMA"
    elif "avx" in flags:
        per_cycle, isa = 16, "AVX"
    elif "asimd" in flags:
        per_cycle, isa = 16, "NEON"
    else:
        per_cycle, isa = 8, "SSE"
    nominal = re.search(r"^model name\s*:.*@\s*([\d.]+)\s*GHz", cpuinfo, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.MULTILINE)
    if nominal:
        ghz, clock = float(nominal.group(1)), "nominal"
    elif mhz:
        ghz, clock = float(mhz.group(1)) / 1000, "cpu MHz"
    else:
        ghz, clock = 2.5, "assumed"
    peak = n_cores * ghz * 1e9 * per_cycle
    return peak, (f"estimated: {n_cores} cores x {ghz:.2f} GHz ({clock}) x {per_cycle} "
                  f"fp32 FLOP/cycle ({isa})")


def peak_flops(devices, dtype) -> tuple[float | None, str]:
    """Peak FLOP/s of `devices` together for matmuls in `dtype`, and its source.

    CPU devices (even several, simulated) share the host's cores: the host's estimate.
    """
    first = devices[0]
    if first.platform == "cpu":
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
        return cpu_peak_flops(cpuinfo, len(os.sched_getaffinity(0)))
    found = gpu_peak_flops(first.device_kind, dtype)
    if found is None:
        return None, f"unknown device kind {first.device_kind!r} (add it to GPU_PEAKS)"
    per_device, source = found
    return per_device * len(devices), f"{len(devices)} x {source}"


# --- FLOPs --------------------------------------------------------------------------------------


def xla_flops(fn, *args) -> float:
    """XLA's FLOP count of `jit(fn)(*args)` after optimisation (dead code removed).

    Exact only for programs without loops of more than one trip (see the module docstring).
    """
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    return float(cost["flops"])


def _shape(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def count_flops(trainer: Trainer) -> dict:
    """FLOPs of one training iteration per env step: {"total", "parts": {name: FLOPs},
    "forward": one policy forward of one env}.

    Each part is XLA's count of loop-free pieces times their trip counts (module docstring).
    """
    cfg, network, env = trainer.config, trainer.network, trainer.env
    pc = cfg.ppo
    b, t, k = pc.n_envs, pc.n_steps, pc.n_minibatches
    m = b // k
    state = jax.eval_shape(trainer.init, jax.random.key(0))  # shapes only, nothing allocated
    params = state.params
    env_params = jax.tree.map(_shape, trainer.env_params)
    key = jax.random.key(0)
    f32 = jnp.float32

    def arr(*shape, dtype=f32):
        return jax.ShapeDtypeStruct(shape, dtype)

    def hidden(n):
        return jax.tree.map(_shape, jax.eval_shape(lambda: network.initial_state(n)))

    rule, hp = trainer.rule, state.hparams

    def forward(p, h, obs, reset):
        return network.apply({"params": p}, h, obs, reset)

    # A scan of length 1, counted exactly: the step, and the forward over its one slot per
    # env (one slot for one step: no full pass at the step).
    rollout_step = make_rollout(network, env, 1, bootstrap_slots=1,
                                info_keys=env.metric_info_keys)
    bootstrap = xla_flops(forward, params, hidden(b), arr(b, env.obs_dim), arr(b, dtype=bool))
    act = xla_flops(rollout_step, params, env_params, state.carry, key) - bootstrap
    slots = bootstrap_capacity(t, cfg.env.steps_per_episode())

    one = jax.eval_shape(rollout_step, params, env_params, state.carry, key)[1]

    def one_step(n_steps: int):
        """A minibatch of `n_steps` steps, shaped as the trainer's."""
        tr = jax.tree.map(lambda x: arr(n_steps, m, *x.shape[2:], dtype=x.dtype), one)
        return ppo.Batch(transition=tr, hidden=hidden(m), advantages=arr(n_steps, m),
                         returns=arr(n_steps, m))

    # The learning rule's own loss (`jaxtrade.ppo.LearningRule`) on a one-step minibatch,
    # differentiated w.r.t. the parameters and the incoming recurrent state, as
    # backpropagation through time computes; then both optimizer chains.
    def step_grad(p, mb, hp, key):
        def loss(p, h):
            return rule.loss(p, p, mb.replace(hidden=h), hp, key)[0]

        return jax.value_and_grad(loss, argnums=(0, 1))(p, mb.hidden)

    grad = xla_flops(step_grad, params, one_step(1), hp, key)

    def update(p, g, actor_opt, critic_opt):
        actor_g, critic_g = ppo.split_params(g)
        norms = optax.tree.norm(actor_g) + optax.tree.norm(critic_g)  # logged by the trainer
        return ppo.apply_actor_critic_update(
            p, g, rule.actor_tx, rule.critic_tx, actor_opt, critic_opt
        ), norms

    opt = xla_flops(update, params, params, state.actor_opt, state.critic_opt)
    per_iteration = {
        "rollout": t * act + slots * bootstrap + bootstrap,
        "ppo_epochs": pc.ppo_epochs * k * t * grad,
        "optimizer": pc.ppo_epochs * k * opt,
        "critic_trunk": 0.0,
        "critic_epochs": 0.0,
    }
    if pc.critic_epochs > 0:
        trunk = xla_flops(rule.trunk, params, one_step(1))
        critic_flops = xla_flops(
            lambda p, opt, trunk, mb: rule.critic_step(p, opt, trunk, mb.transition, mb.returns),
            params, state.critic_opt, arr(t, m, network.trunk_dim, dtype=network.dtype),
            one_step(t),
        )
        per_iteration["critic_trunk"] = k * t * trunk
        per_iteration["critic_epochs"] = k * pc.critic_epochs * critic_flops
    parts = {name: v / (b * t) for name, v in per_iteration.items()}
    return {"total": sum(parts.values()), "parts": parts, "forward": bootstrap / b}


# --- measurements -------------------------------------------------------------------------------


def make_env_run(trainer: Trainer, n_steps: int):
    """jit: (env_state, obs, key) -> (env_state, obs, mean reward) over n_steps random steps.

    Envs are split over the trainer's mesh. The observations are carried out of the scan
    so that XLA computes them, as it must for a policy. An env that masks actions gets a
    uniformly random valid action (its mask computed at every step, as a rollout does);
    the others a uniformly random one.
    """
    env, env_params, mesh = trainer.env, trainer.env_params, trainer.mesh
    n_envs = trainer.config.ppo.n_envs
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    mask_of = jax.vmap(env.action_mask, in_axes=(0, None)) if env.masks_actions else None

    def random_actions(key, env_state):
        """int32 [n_envs]."""
        mask = None if mask_of is None else mask_of(env_state, env_params)
        if mask is None:  # static: an env without a mask in these params
            return jax.random.randint(key, (n_envs,), 0, env.num_actions)
        return jax.random.categorical(key, jnp.where(mask, 0.0, -jnp.inf)).astype(jnp.int32)

    def run(env_state, obs, key):
        def body(carry, key):
            env_state, obs, total = carry
            key_act, key_step = jax.random.split(key)
            actions = parallel.constrain(random_actions(key_act, env_state), mesh, 0)
            keys = parallel.constrain(jax.random.split(key_step, n_envs), mesh, 0)
            obs, env_state, reward, _, _ = step(keys, env_state, actions, env_params)
            env_state, obs = parallel.constrain((env_state, obs), mesh, 0)
            return (env_state, obs, total + reward.sum()), None

        zero = jnp.zeros((), jnp.float32)
        (env_state, obs, total), _ = jax.lax.scan(
            body, (env_state, obs, zero), jax.random.split(key, n_steps)
        )
        return env_state, obs, total / (n_envs * n_steps)

    sharded = parallel.env_sharding(mesh, 0)
    return jax.jit(run, donate_argnums=(0, 1),
                   out_shardings=(sharded, sharded, parallel.replicated(mesh)))


def measure_env(trainer: Trainer, n_steps: int, repeats: int) -> float:
    """Env-only steps per second: mean of `repeats` runs after a warm-up (compile) run."""
    n_envs = trainer.config.ppo.n_envs
    env, env_params = trainer.env, trainer.env_params
    reset = jax.jit(
        lambda key, params: jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(key, n_envs), params
        ),
        out_shardings=parallel.env_sharding(trainer.mesh, 0),
    )
    obs, env_state = reset(jax.random.key(0), env_params)
    run = make_env_run(trainer, n_steps)
    env_state, obs, _ = jax.block_until_ready(run(env_state, obs, jax.random.key(1)))
    t0 = time.perf_counter()
    for i in range(repeats):
        env_state, obs, mean_reward = run(env_state, obs, jax.random.key(i + 2))
    jax.block_until_ready(mean_reward)
    return n_envs * n_steps * repeats / (time.perf_counter() - t0)


def measure_train(trainer: Trainer, iterations: int, profile_dir: Path | None) -> dict:
    """Compile time, mean seconds per iteration and peak memory of whole PPO iterations."""
    state = trainer.initial_state(jax.random.key(0))
    t0 = time.perf_counter()
    compiled = trainer.compile(state, 1)
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, trainer.env_params, trainer.schedule)  # warm-up
    jax.block_until_ready((state, metrics))
    t0 = time.perf_counter()
    for _ in range(iterations):
        state, metrics = compiled(state, trainer.env_params, trainer.schedule)
    jax.block_until_ready((state, metrics))
    s_per_iteration = (time.perf_counter() - t0) / iterations
    peak, from_device = memory.measured_peak(compiled, trainer.mesh.devices.flat[0])
    if profile_dir is not None:  # one more iteration, traced and not timed
        profile_dir.mkdir(parents=True, exist_ok=True)
        with jax.profiler.trace(str(profile_dir)):
            state, metrics = compiled(state, trainer.env_params, trainer.schedule)
            jax.block_until_ready((state, metrics))
    return {
        "s_per_iteration": s_per_iteration,
        "compile_s": compile_s,
        "peak_memory_bytes": peak,
        "peak_memory_source": "device memory stats" if from_device else "XLA plan",
    }


def measure_row(cfg: cfgmod.Config, market, mesh, args) -> dict:
    """One row of the table: `cfg` (n_envs over all devices) on `mesh`."""
    trainer = make_train(cfg, market, mesh)
    dtype = trainer.network.dtype
    flops = count_flops(trainer)
    env_sps = measure_env(trainer, args.env_steps, args.iterations)
    profile = (Path(args.profile) / f"devices{mesh.size}_envs{cfg.ppo.n_envs}"
               if args.profile else None)
    train = measure_train(trainer, args.iterations, profile)
    train_sps = trainer.steps_per_iteration / train["s_per_iteration"]
    achieved = flops["total"] * train_sps
    peak, peak_source = peak_flops(list(mesh.devices.flat), dtype)
    estimate = memory.estimate(cfg, trainer.env, mesh.size)
    return {
        "env": cfg.env.name,
        "episode_length": cfg.env.episode_length,
        "n_devices": mesh.size,
        "n_envs": cfg.ppo.n_envs,
        "n_steps": cfg.ppo.n_steps,
        "hidden_dim": cfg.network.hidden_dim,
        "n_gru_layers": cfg.network.n_gru_layers,
        "remat": cfg.network.remat,
        "precision": jnp.dtype(dtype).name,
        "n_params": trainer.n_params,
        "iterations": args.iterations,
        "env_steps_per_s": env_sps,
        "train_steps_per_s": train_sps,
        "s_per_iteration": train["s_per_iteration"],
        "compile_s": train["compile_s"],
        "peak_memory_bytes": train["peak_memory_bytes"],
        "peak_memory_source": train["peak_memory_source"],
        "estimated_memory_bytes": estimate.per_device_bytes,
        "flops_per_env_step": flops["total"],
        "flops_per_env_step_by_part": flops["parts"],
        "flops_per_forward": flops["forward"],
        "achieved_flops_per_s": achieved,
        "peak_flops_per_s": peak,
        "peak_flops_source": peak_source,
        "flops_fraction": achieved / peak if peak else None,
    }


def default_device_counts(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    counts = [2**i for i in range(n.bit_length()) if 2**i <= n]
    return counts if counts[-1] == n else [*counts, n]


def _fmt_row(row: dict) -> dict:
    """Display strings for `table`."""
    fraction = row["flops_fraction"]
    source = "plan" if row["peak_memory_source"] == "XLA plan" else "peak"
    return {
        **row,
        "peak_memory": f"{memory.format_bytes(row['peak_memory_bytes'])} ({source})",
        "estimated_memory": memory.format_bytes(row["estimated_memory_bytes"]),
        "mflops": row["flops_per_env_step"] / 1e6,
        "gflops_s": row["achieved_flops_per_s"] / 1e9,
        "fraction": "-" if fraction is None else f"{fraction:.2%}",
    }


def row_line(row: dict) -> str:
    """One row as one line, printed as soon as it is measured."""
    f = _fmt_row(row)
    return (f"{row['env']}: devices {row['n_devices']}, n_envs {row['n_envs']:,}: "
            f"env {row['env_steps_per_s']:,.0f} steps/s, "
            f"train {row['train_steps_per_s']:,.0f} steps/s "
            f"({row['s_per_iteration']:.2f} s/iteration), compile {row['compile_s']:.1f} s, "
            f"memory {f['peak_memory']} (estimate {f['estimated_memory']}), "
            f"{f['mflops']:.1f} MFLOP/step, {f['gflops_s']:,.1f} GFLOP/s = {f['fraction']} of peak")


COLUMNS = [
    ("n_devices", "devices", "d"),
    ("n_envs", "n_envs", ",d"),
    ("env_steps_per_s", "env steps/s", ",.0f"),
    ("train_steps_per_s", "train steps/s", ",.0f"),
    ("s_per_iteration", "s/iter", ".2f"),
    ("compile_s", "compile s", ".1f"),
    ("peak_memory", "memory", "s"),
    ("estimated_memory", "estimate", "s"),
    ("mflops", "MFLOP/step", ".1f"),
    ("gflops_s", "GFLOP/s", ",.1f"),
    ("fraction", "of peak", "s"),
]


def result_name(env: str) -> str:
    """The results file's name before the device and date: `throughput` for the portfolio
    env (as before envs were chosen), `<env>_throughput` for another."""
    return "throughput" if env == "portfolio" else f"{env}_throughput"


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The env and network flags of the sweep, which `benchmarks.phases` takes too."""
    parser.add_argument("--env", default="portfolio", choices=registered(),
                        help="registered env to measure, on its own market and default "
                             "episode length [portfolio]")
    parser.add_argument("--n-steps", type=int, default=128, help="rollout steps per iteration")
    parser.add_argument("--hidden-dim", type=int, default=256)
    parser.add_argument("--n-gru-layers", type=int, default=2)
    parser.add_argument("--precision", default="auto", choices=cfgmod.PRECISIONS)


def fixed_market_config(args, platform: str, **values) -> cfgmod.Config:
    """The config of `add_config_args`'s flags (and `values`) on the env's fixed market: the
    portfolio env's embedded one, as before envs were chosen (a training run's default for
    it is procedural worlds); resolved for its episode length."""
    return cfgmod.resolve(cfgmod.with_values(
        cfgmod.Config(), name=args.env, market="fixed", n_steps=args.n_steps,
        hidden_dim=args.hidden_dim, n_gru_layers=args.n_gru_layers, precision=args.precision,
        **values,
    ), platform)


def main(argv=None) -> int:
    on_cpu = jax.default_backend() == "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--n-envs", type=int, nargs="+",
                        default=list(CPU_N_ENVS if on_cpu else ACCELERATOR_N_ENVS),
                        help="total envs over all devices (default: 32 64 128 on CPU, "
                             "4096 16384 65536 on accelerators)")
    parser.add_argument("--devices", type=int, nargs="+", default=None,
                        help="device counts to sweep (default: 1, 2, 4, ... up to all)")
    parser.add_argument("--remat", action="store_true",
                        help="recompute the GRU's gates in the backward pass (--remat of "
                             "training): less memory per env, more compute")
    parser.add_argument("--iterations", type=int, default=3,
                        help="timed training iterations (and env-only runs) per row")
    parser.add_argument("--env-steps", type=int, default=256, help="env-only scan length")
    parser.add_argument("--out", default=None,
                        help="results directory (default benchmarks/results)")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="trace one extra, untimed training iteration per row into "
                             "DIR/devices<D>_envs<N> (TensorBoard or Perfetto)")
    args = parser.parse_args(argv)

    info = device_info()
    base = fixed_market_config(args, info["platform"], remat=args.remat)
    name = result_name(args.env) + ("_remat" if args.remat else "")
    n_mb = base.ppo.n_minibatches
    device_counts = args.devices or default_device_counts(jax.device_count())
    cases = []
    for d in device_counts:
        for n_envs in args.n_envs:
            if n_envs % (d * n_mb):
                print(f"skipped: n_envs {n_envs} on {d} device(s) is not a multiple of "
                      f"devices x n_minibatches = {d * n_mb}")
            else:
                cases.append((d, n_envs))
    # Accelerator peaks are process-lifetime high-water marks: ascending load per device.
    cases.sort(key=lambda c: (c[1] // c[0], c[0]))

    market = load_run_market(base)  # the env's own loading, without the test range
    dtype = cfgmod.compute_dtype(args.precision, info["platform"])
    print(f"device: {info['device_kind']} x{info['n_devices']} ({info['platform']}), "
          f"jax {info['jax']}; env {args.env}, episodes of {base.env.episode_length} steps; "
          f"network hidden {args.hidden_dim} x {args.n_gru_layers} GRU, "
          f"{jnp.dtype(dtype).name}; n_steps {args.n_steps}, {base.ppo.ppo_epochs} PPO + "
          f"{base.ppo.critic_epochs} critic epochs, {n_mb} minibatches", flush=True)
    settings = {
        "env": args.env,
        "episode_length": base.env.episode_length,
        "n_minibatches": n_mb,
        "ppo_epochs": base.ppo.ppo_epochs,
        "critic_epochs": base.ppo.critic_epochs,
        "dropout": base.network.dropout,
        "env_steps": args.env_steps,
        "market": market.describe(),
        "flops_method": "XLA cost analysis of loop-free pieces x trip counts "
                        "(benchmarks/throughput.py)",
    }
    rows = []
    for d, n_envs in cases:
        cfg = cfgmod.validate(cfgmod.with_values(base, n_envs=n_envs), n_devices=d)
        rows.append(measure_row(cfg, market, parallel.make_mesh(d), args))
        print(row_line(rows[-1]), flush=True)
        # Saved after every row: a sweep stopped by a time limit keeps what it measured.
        save(name, info, rows, args.out, settings=settings)
    rows.sort(key=lambda r: (r["n_devices"], r["n_envs"]))
    if rows:
        print()
        print(table([_fmt_row(r) for r in rows], COLUMNS))
        print(f"peak FLOP/s: {rows[0]['peak_flops_source']}")
    print(f"saved {save(name, info, rows, args.out, settings=settings)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

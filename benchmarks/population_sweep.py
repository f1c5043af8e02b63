"""What a population costs: N members x E envs in one compiled program (the population
program, `jaxtrade.population.train_population`) against one run of N x E envs (the
trainer's own program), same config, same machine, same process.

    python -m benchmarks.population_sweep            # CPU: configs/cpu-small.toml, 1..16 members
    python -m benchmarks.population_sweep --members 1,2,4,8 --n-steps 64 --repeats 5
    python -m benchmarks.population_sweep --gpu      # the GPU goal: reference network, bf16, 1..64

For each member count N (`--members`) at `--envs-per-member` E envs each:

* population: `init_population(trainer, key, N)` of a trainer of E envs, and
  `train_population(trainer, K)` compiled ahead of time (`lower` + `compile`);
* single run: a trainer of N x E envs (everything else the same config), its program
  compiled for K iterations per call (`trainer.compile`), as `benchmarks.throughput` does.

Both sides take one untimed warm-up call, then `--repeats` timed calls each (K PPO
iterations per call, every output blocked on), interleaved pop, single, single, pop, ...
so that the machine's drift hits both; the figures are medians. The ratio is the
population's wall time over the single run's for the same env steps (1.0: a population
costs what one run of the same env count costs). Rows are measured goal row first (8
members on CPU, 64 with `--gpu`), so a sweep cut short by a time limit keeps it, and the
results file is written after every row. Writes
benchmarks/results/population_sweep_<device>_<date>.json (device, settings with the
goal's verdict and the load average, one row per member count).

The goals (issue 16): 8 members x 64 envs at most 1.3x the wall time of one run of 512
envs (CPU preset); on a GPU, 64 members at most 1.5x the wall time of one run of the same
env count (`--gpu`; each row also holds the ratio to the 1-member population's wall time,
the other reading of "one").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks.common import device_info, save, table
from jaxtrade import config as cfgmod
from jaxtrade.engine.start import load_run_market, resolve_worlds
from jaxtrade.population import init_population, train_population
from jaxtrade.trainer import make_train

CPU_CONFIG = "configs/cpu-small.toml"
# (members, maximum ratio population / single wall time) of each preset's goal.
CPU_GOAL = (8, 1.3)
GPU_GOAL = (64, 1.5)
CPU_DEFAULTS = {"config": CPU_CONFIG, "members": "1,2,4,8,16", "n_steps": 32,
                "precision": None, "hidden_dim": None, "n_gru_layers": None}
# The reference network (default.toml: hidden 256, 2 GRU layers, flat encoder) in bf16.
GPU_DEFAULTS = {"config": None, "members": "1,4,16,64", "n_steps": 128,
                "precision": "bf16", "hidden_dim": 256, "n_gru_layers": 2}
N_WORLDS = 256  # the training pool: its size changes no work per step, only setup time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.population_sweep",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu", action="store_true",
                   help="the GPU goal's preset: the reference network (default.toml), bf16, "
                        "n_steps 128, members 1,4,16,64 (flags given override it; with "
                        "--config, only the member counts and the goal are the preset's)")
    p.add_argument("--config", default=None,
                   help=f"TOML config of every run [{CPU_CONFIG}; --gpu: default.toml]")
    p.add_argument("--envs-per-member", type=int, default=64, help="envs per member [64]")
    p.add_argument("--members", default=None,
                   help="member counts, comma-separated [1,2,4,8,16; --gpu: 1,4,16,64]")
    p.add_argument("--n-steps", type=int, default=None,
                   help="rollout steps per iteration [32; --gpu: 128; --config: the file's]")
    p.add_argument("--iterations-per-call", type=int, default=1,
                   help="PPO iterations per compiled call, K [1]")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per side and row [3]")
    p.add_argument("--hidden-dim", type=int, default=None)
    p.add_argument("--n-gru-layers", type=int, default=None)
    p.add_argument("--precision", default=None, choices=cfgmod.PRECISIONS)
    p.add_argument("--n-worlds", type=int, default=N_WORLDS,
                   help=f"training worlds of a worlds market [{N_WORLDS}]")
    p.add_argument("--out", default=None, help="results directory [benchmarks/results]")
    args = p.parse_args(argv)
    # A preset's settings fill what no flag gave; with --config, the file's own shapes and
    # network count (only the member counts come from the preset).
    preset = GPU_DEFAULTS if args.gpu else CPU_DEFAULTS
    if args.config is not None:
        preset = {"members": preset["members"]}
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.members = [int(m) for m in str(args.members).split(",") if m.strip()]
    if not args.members or min(args.members) < 1:
        p.error("--members needs member counts of at least 1")
    if args.repeats < 1 or args.iterations_per_call < 1:
        p.error("--repeats and --iterations-per-call must be at least 1")
    return args


def base_config(args, platform: str) -> cfgmod.Config:
    """The config every run shares (n_envs set per run)."""
    cfg = cfgmod.load(args.config) if args.config else cfgmod.Config()
    cfg = cfgmod.with_values(cfg, n_steps=args.n_steps, hidden_dim=args.hidden_dim,
                             n_gru_layers=args.n_gru_layers, precision=args.precision,
                             n_envs=args.envs_per_member)
    cfg = cfgmod.resolve(cfg, platform)
    if cfg.data.market == "worlds":
        cfg = resolve_worlds(cfgmod.with_values(cfg, n_worlds=args.n_worlds), platform, None)
    return cfg


def load_average() -> list[float] | None:
    """The host's 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def timed(fn, *args):
    """(outputs, seconds) of one call, its outputs blocked on."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t0


def measure_row(n: int, pop_trainer, program, single_cfg, market, args) -> dict:
    """One member count: both sides compiled, warmed up, timed `repeats` times interleaved."""
    k, e, t = args.iterations_per_call, args.envs_per_member, single_cfg.ppo.n_steps
    params = pop_trainer.env_params
    pop = init_population(pop_trainer, jax.random.key(0), n)
    t0 = time.perf_counter()
    pop_fn = program.lower(pop, params).compile()
    pop_compile = time.perf_counter() - t0

    single = make_train(single_cfg, market)
    state = single.initial_state(jax.random.key(0))
    t0 = time.perf_counter()
    single_fn = single.compile(state, k)
    single_compile = time.perf_counter() - t0

    def run_pop(pop):
        return pop_fn(pop, params)

    def run_single(state):
        return single_fn(state, single.env_params, single.schedule)

    (pop, _), _ = timed(run_pop, pop)  # warm-up
    (state, _), _ = timed(run_single, state)
    pop_times, single_times = [], []
    for r in range(args.repeats):  # pop, single, single, pop, ...: drift hits both sides
        for side in (("pop", "single") if r % 2 == 0 else ("single", "pop")):
            if side == "pop":
                (pop, _), s = timed(run_pop, pop)
                pop_times.append(s)
            else:
                (state, _), s = timed(run_single, state)
                single_times.append(s)
    steps = n * e * t * k
    pop_s, single_s = statistics.median(pop_times), statistics.median(single_times)
    return {
        "members": n,
        "envs_per_member": e,
        "total_envs": n * e,
        "n_steps": t,
        "iterations_per_call": k,
        "steps_per_call": steps,
        "population_s_per_call": pop_s,
        "single_s_per_call": single_s,
        "population_steps_per_s": steps / pop_s,
        "single_steps_per_s": steps / single_s,
        "ratio": pop_s / single_s,
        "ratio_to_one_member": None,  # filled once the 1-member row is measured
        "population_compile_s": pop_compile,
        "single_compile_s": single_compile,
        "population_times": pop_times,
        "single_times": single_times,
        "load_average": load_average(),
    }


def goal_verdict(rows: list[dict], members: int, max_ratio: float, envs: int) -> dict:
    """The goal's row and whether it is met (None: the sweep has no such row)."""
    row = next((r for r in rows if r["members"] == members), None)
    verdict = {"members": members, "envs_per_member": envs, "total_envs": members * envs,
               "max_ratio": max_ratio, "ratio": None, "met": None}
    if row is not None:
        verdict.update(ratio=row["ratio"], met=bool(row["ratio"] <= max_ratio),
                       ratio_to_one_member=row["ratio_to_one_member"])
    return verdict


def goal_line(goal: dict) -> str:
    head = (f"goal: {goal['members']} members x {goal['envs_per_member']} envs at most "
            f"{goal['max_ratio']}x the wall time of one run of {goal['total_envs']} envs: ")
    if goal["ratio"] is None:
        return head + "not measured (no such row in this sweep)"
    one = goal.get("ratio_to_one_member")
    extra = f"; {one:.2f}x the 1-member population's wall time" if one is not None else ""
    return head + (f"{goal['ratio']:.2f}x, {'met' if goal['met'] else 'NOT met'}" + extra)


def row_line(row: dict) -> str:
    return (f"members {row['members']} x {row['envs_per_member']} envs = {row['total_envs']:,}: "
            f"population {row['population_steps_per_s']:,.0f} steps/s, single run "
            f"{row['single_steps_per_s']:,.0f} steps/s, ratio {row['ratio']:.2f}x; compile "
            f"{row['population_compile_s']:.1f} s / {row['single_compile_s']:.1f} s; "
            f"load {row['load_average']}")


COLUMNS = [
    ("members", "members", "d"),
    ("envs_per_member", "envs/member", "d"),
    ("total_envs", "total envs", ",d"),
    ("population_steps_per_s", "pop steps/s", ",.0f"),
    ("single_steps_per_s", "single steps/s", ",.0f"),
    ("ratio", "pop/single wall", ".2f"),
    ("one_member", "pop/1 member", "s"),
    ("population_compile_s", "pop compile s", ".1f"),
    ("single_compile_s", "single compile s", ".1f"),
]


def main(argv=None) -> int:
    args = parse_args(argv)
    info = device_info()
    goal_members, max_ratio = GPU_GOAL if args.gpu else CPU_GOAL
    base = base_config(args, info["platform"])
    cfgmod.validate(base)
    market = load_run_market(base)
    pop_trainer = make_train(base, market)
    program = train_population(pop_trainer, args.iterations_per_call)
    dtype = pop_trainer.network.dtype
    net = base.network
    print(f"device: {info['device_kind']} x{info['n_devices']} ({info['platform']}), "
          f"jax {info['jax']}; config {args.config or 'default.toml'}: {base.data.market} "
          f"market, {net.kind} hidden {net.hidden_dim} x {net.n_gru_layers} layer(s), "
          f"{net.encoder} encoder, {jnp.dtype(dtype).name}; n_steps {base.ppo.n_steps}, "
          f"{base.ppo.n_minibatches} minibatches, {base.ppo.ppo_epochs} PPO + "
          f"{base.ppo.critic_epochs} critic epochs; {args.iterations_per_call} iteration(s) "
          f"per call, {args.repeats} repeats; load average {load_average()}", flush=True)
    settings = {
        "preset": "gpu" if args.gpu else "cpu",
        "config": args.config or "default.toml",
        "market": base.data.market,
        "n_worlds": base.data.worlds.n_worlds if base.data.market == "worlds" else None,
        "network": net.kind,
        "encoder": net.encoder,
        "hidden_dim": net.hidden_dim,
        "n_gru_layers": net.n_gru_layers,
        "precision": jnp.dtype(dtype).name,
        "n_params": pop_trainer.n_params,
        "n_steps": base.ppo.n_steps,
        "n_minibatches": base.ppo.n_minibatches,
        "ppo_epochs": base.ppo.ppo_epochs,
        "critic_epochs": base.ppo.critic_epochs,
        "envs_per_member": args.envs_per_member,
        "members": args.members,
        "iterations_per_call": args.iterations_per_call,
        "repeats": args.repeats,
        "timing": "median of repeats after one warm-up call, sides interleaved",
        "host_cpus": os.cpu_count(),
        "load_average_start": load_average(),
        "load_average_end": None,
        "goal": goal_verdict([], goal_members, max_ratio, args.envs_per_member),
    }
    order = sorted(set(args.members), key=lambda n: (n != goal_members, n))  # goal row first
    rows: list[dict] = []
    for n in order:
        try:
            single_cfg = cfgmod.validate(cfgmod.with_values(base, n_envs=n * args.envs_per_member))
        except cfgmod.ConfigError as e:
            print(f"skipped: {n} members: {e}")
            continue
        rows.append(measure_row(n, pop_trainer, program, single_cfg, market, args))
        print(row_line(rows[-1]), flush=True)
        one = next((r for r in rows if r["members"] == 1), None)
        for r in rows:
            if one is not None:
                r["ratio_to_one_member"] = r["population_s_per_call"] / one["population_s_per_call"]
        rows.sort(key=lambda r: r["members"])
        settings["goal"] = goal_verdict(rows, goal_members, max_ratio, args.envs_per_member)
        settings["load_average_end"] = load_average()
        path = save("population_sweep", info, rows, args.out, settings=settings)
    if rows:
        print()
        print(table([{**r, "one_member": "-" if r["ratio_to_one_member"] is None
                      else f"{r['ratio_to_one_member']:.2f}"} for r in rows], COLUMNS))
    print(goal_line(settings["goal"]))
    print(f"load average at start {settings['load_average_start']}, at end "
          f"{settings['load_average_end']} ({os.cpu_count()} CPUs)")
    path = save("population_sweep", info, rows, args.out, settings=settings)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

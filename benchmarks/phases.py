"""Where one PPO iteration's time goes: its parts compiled and timed one by one.

    python -m benchmarks.phases [--env portfolio] [--n-envs 1024] [--n-steps 128]
        [--hidden-dim 256] [--n-gru-layers 2] [--precision auto] [--critic-epochs 4]
        [--repeats 3] [--no-op-profile] [--out DIR]

For one config (the portfolio env on its fixed embedded market by default, the reference
network unless told otherwise), each part of `jaxtrade.trainer`'s iteration is compiled
ahead of time on its own and run `--repeats` times after a warm-up; the best run counts:

* rollout: the trainer's own rollout (`Trainer.rollout`: policy step, sampling, vmapped
  env step, the bootstrap slots and their forward after the scan), n_steps steps;
* env alone: the vmapped env step with random actions over the same steps
  (`benchmarks.throughput.make_env_run`), the part of the rollout that is not the network;
* advantages: the value after the last step and GAE;
* joint epochs: ppo_epochs x n_minibatches gradient steps of both optimizer chains
  (`LearningRule.joint_epochs`);
* critic epochs: the trunk forward per minibatch and critic_epochs value-head steps
  (`LearningRule.critic_only_epochs`; absent with --critic-epochs 0);
* one minibatch: forward + backward and both optimizer updates of one minibatch alone,
  and its forward (the unroll) alone. As programs of their own they allocate and
  first-touch their temporary buffers on every call, which the joint epochs' loop does
  once per call: on a CPU the step alone takes longer than a step of the joint epochs
  (2 cores, 2026-12-01: 484 ms against 5.49 s / 16 = 343 ms);
* iteration: the whole fused iteration (`Trainer.iterate`), the sum of the parts plus
  what fusing them changes (the metrics, and XLA scheduling across part boundaries).

Each part's share is of the whole iteration. Then (``--op-profile``, on by default) the
joint epochs run under JAX's profiler and their op time, per minibatch step, is split by
part of the network (encoder, GRU, heads), loss, optimizer and loop bookkeeping, forward
and backward (`benchmarks.op_profile`): the steps as training runs them, in their loop.
Prints the tables and writes benchmarks/results/phases_<device>_<date>.json (the profile
under ``op_profile``). Timed parts run on the trainer's devices (all by default), as
training does.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from benchmarks.common import device_info, save, table
from benchmarks.op_profile import profile_ops, summary
from benchmarks.throughput import add_config_args, fixed_market_config, make_env_run
from jaxtrade import config as cfgmod
from jaxtrade.engine.start import load_run_market
from jaxtrade.ppo import Batch
from jaxtrade.trainer import Trainer, advantages, make_train


def best_time(fn: Callable, args: tuple, repeats: int) -> tuple[float, float, object, object]:
    """(compile seconds, best seconds of `repeats` runs after a warm-up, the warm-up's
    output, the compiled program) of jit(fn)(*args)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    out = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, min(times), out, compiled


def measure(trainer: Trainer, repeats: int, op_profile: bool = False
            ) -> tuple[list[dict], dict | None]:
    """The rows: one per part (module docstring); with `op_profile`, where a minibatch step
    of the joint epochs spends its op time (`benchmarks.op_profile.profile_ops`), else
    None."""
    pc = trainer.config.ppo
    net, rule, env_params = trainer.network, trainer.rule, trainer.env_params
    state = trainer.initial_state(jax.random.key(0))
    hp = state.hparams
    key = jax.random.key(1)
    rows = []
    compiled = {}

    steps = pc.n_envs * pc.n_steps

    def part(name, fn, *args, steps_all=False):
        """Times `fn(*args)`; `steps_all`: the part steps every env n_steps times (its
        env steps/s is a rate of the whole batch)."""
        compile_s, seconds, out, compiled[name] = best_time(fn, args, repeats)
        rows.append({"part": name, "seconds": seconds, "compile_s": compile_s,
                     "env_steps_per_s": steps / seconds if steps_all else None})
        print(f"{name:28s} {seconds:9.4f} s   (compile {compile_s:.1f} s)", flush=True)
        return out

    carry, traj = part("rollout", trainer.rollout, state.params, env_params, state.carry, key,
                       steps_all=True)
    part("rollout: env alone", make_env_run(trainer, pc.n_steps), state.carry.env_state,
         state.carry.obs, key, steps_all=True)
    adv, returns = part("advantages", lambda p, t, c: advantages(net, p, t, c, hp),
                        state.params, traj, carry)
    batch = Batch(transition=traj, hidden=state.carry.hidden, advantages=adv, returns=returns)
    part("joint epochs", lambda p, a, c, b: rule.joint_epochs(p, a, c, b, hp, key),
         state.params, state.actor_opt, state.critic_opt, batch)
    minibatch = rule.minibatch(batch, rule.assignment(jax.random.key(2)), jnp.int32(0))
    part("joint: one minibatch step",
         lambda p, a, c, m: rule.actor_critic_step(p, p, a, c, m, hp, key),
         state.params, state.actor_opt, state.critic_opt, minibatch)
    part("joint: its forward (unroll)", lambda p, m: net.apply(
        {"params": p}, m.hidden, m.transition.obs, m.transition.reset, method="unroll"),
        state.params, minibatch)
    if pc.critic_epochs > 0:
        part("critic epochs", lambda p, c, b: rule.critic_only_epochs(p, c, b, key),
             state.params, state.critic_opt, batch)
    part("iteration", trainer.iterate, state, env_params, steps_all=True)
    for row in rows:
        row["share"] = row["seconds"] / rows[-1]["seconds"]
    profile = None
    if op_profile:
        profile = profile_ops(compiled["joint epochs"],
                              (state.params, state.actor_opt, state.critic_opt, batch),
                              calls=max(1, min(repeats, 2)),
                              steps=pc.ppo_epochs * pc.n_minibatches)
    return rows, profile


COLUMNS = [
    ("part", "part", "s"),
    ("seconds", "seconds", ".4f"),
    ("share", "of iteration", ".1%"),
    ("env_steps", "env steps/s", "s"),
    ("compile_s", "compile s", ".1f"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--n-envs", type=int, default=1024)
    parser.add_argument("--critic-epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per part; best")
    parser.add_argument("--op-profile", action=argparse.BooleanOptionalAction, default=True,
                        help="trace the joint epochs and split their op time per minibatch step "
                             "by part of the network and direction "
                             "(benchmarks/op_profile.py) [on]")
    parser.add_argument("--out", default=None, help="results directory (default "
                                                    "benchmarks/results)")
    args = parser.parse_args(argv)

    info = device_info()
    cfg = cfgmod.validate(fixed_market_config(args, info["platform"], n_envs=args.n_envs,
                                              critic_epochs=args.critic_epochs),
                          n_devices=jax.device_count())
    trainer = make_train(cfg, load_run_market(cfg))
    pc = cfg.ppo
    print(f"device: {info['device_kind']} x {jax.device_count()} ({info['platform']}), jax "
          f"{info['jax']}; {args.env} env, {pc.n_envs:,} envs x {pc.n_steps} steps, "
          f"{trainer.network.describe()}, {trainer.n_params:,} parameters, "
          f"{cfg.network.precision}; {pc.ppo_epochs} epochs x {pc.n_minibatches} minibatches, "
          f"{pc.critic_epochs} critic epochs", flush=True)
    rows, profile = measure(trainer, args.repeats, args.op_profile)
    print()
    print(table([{**r, "env_steps": "" if r["env_steps_per_s"] is None
                  else f"{r['env_steps_per_s']:,.0f}"} for r in rows], COLUMNS))
    if profile is not None:
        print("\nthe joint epochs' op time per minibatch step, by part and direction (traced):")
        print(summary(profile))
    settings = {"env": args.env, "market": "fixed", "n_envs": pc.n_envs, "n_steps": pc.n_steps,
                "hidden_dim": args.hidden_dim, "n_gru_layers": args.n_gru_layers,
                "precision": cfg.network.precision, "ppo_epochs": pc.ppo_epochs,
                "n_minibatches": pc.n_minibatches, "critic_epochs": pc.critic_epochs,
                "n_params": trainer.n_params, "n_devices": jax.device_count(),
                "repeats": args.repeats,
                "timing": "each part AOT-compiled alone; one warm-up run; best of repeats"}
    extra = {} if profile is None else {"op_profile": {"part": "joint epochs", **profile}}
    print(f"saved {save('phases', info, rows, args.out, settings=settings, extra=extra)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

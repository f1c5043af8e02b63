"""jaxtrade's trainer against a PureJaxRL-style recurrent PPO on the same env, back to back.

    python -m benchmarks.purejaxrl_equivalent [--n-envs 1024] [--n-steps 128] [--hidden 128]
        [--iterations 3] [--repeats 2] [--quick] [--out DIR]

Three programs train in one process on the portfolio env over its fixed embedded market
(the same env object, the same training params, so the same episode length):

* ``baseline``: a minimal recurrent PPO written here in the structure of PureJaxRL's
  ``ppo_rnn.py`` (not its code): `make_train(config, env, env_params)` gives a jitted
  `train(runner, k)` that scans k update steps; each step is a `lax.scan` rollout of a
  GRU actor-critic over the vmapped env, GAE by a reverse `lax.scan`, then epochs that
  scan over minibatches of whole env sequences with one optimizer
  (clip_by_global_norm -> adam) on one network with an actor and a critic head. The env
  is reached as another JAX RL code base would reach it: through jaxtrade's gymnax
  adapter (`jaxtrade.envs.gymnax_api.GymnaxEnv`, slim `info`, auto-reset by gymnax's base
  class, staggered first episodes). As in PureJaxRL, every end is treated as terminal (no
  bootstrap of time-limit ends) and `info` is not stored.
* ``jaxtrade c0``: `jaxtrade.trainer.make_train` with ``critic_epochs=0`` (parity: the
  same epochs over the same minibatches, no extra critic work);
* ``jaxtrade c4``: the same with the default 4 critic-only epochs.

Same shapes for all: n_envs x n_steps, GRU hidden H (one layer), 4 epochs x 4
minibatches, float32, dropout 0. The baseline's network has jaxtrade's layer widths
(encoder Dense(H)-ReLU-LayerNorm twice, GRU(H), heads Dense(H/2)-ReLU-LayerNorm-Dense)
but flax's `nn.GRUCell`, which has 2H fewer biases than jaxtrade's torch-layout cell;
both parameter counts are printed and saved.

Timing: each program's one-iteration step is compiled ahead of time (`compile_s`:
`lower` + `compile`), run once to warm up, then each repeat times --iterations calls;
repeats go round the three programs in turn (so load from other processes falls on all
of them alike) and each program's best repeat counts: steps/s = n_envs x n_steps x
iterations / seconds. Ratios are jaxtrade / baseline.

Prints the table and the ratios and writes
benchmarks/results/purejaxrl_equivalent_<device>_<date>.json (host-only code).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from benchmarks.common import device_info, save, table
from jaxtrade import config as cfgmod
from jaxtrade.engine.start import load_run_market
from jaxtrade.envs.gymnax_api import GymnaxEnv
from jaxtrade.networks import count_params
from jaxtrade.trainer import Trainer
from jaxtrade.trainer import make_train as make_jaxtrade_train

# --- the baseline ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BaselineConfig:
    """The baseline's sizes and PPO hyperparameters (jaxtrade's defaults where it has them)."""

    n_envs: int = 1024  # parallel envs
    n_steps: int = 128  # rollout steps per update
    hidden: int = 128  # encoder and GRU width; heads are hidden // 2 wide
    n_epochs: int = 4  # passes over the rollout per update
    n_minibatches: int = 4  # each takes n_envs / n_minibatches whole env sequences
    lr: float = 3e-4  # adam learning rate
    max_grad_norm: float = 0.5  # global-norm clip before adam
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    clip: float = 0.2  # ratio clip, and value clip as PureJaxRL does
    ent_coef: float = 0.01  # entropy bonus
    vf_coef: float = 0.5  # value loss weight


class ScannedGRU(nn.Module):
    """flax's GRUCell scanned over time, its state zeroed where an episode starts.

    ``(h [B, H], (x [T, B, H], reset [T, B])) -> (h [B, H], y [T, B, H])``.
    """

    hidden: int

    @nn.compact
    def __call__(self, h, xs):
        def step(cell, h, inputs):
            x, reset = inputs
            h = jnp.where(reset[:, None], jnp.zeros_like(h), h)
            return cell(h, x)

        scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=0, out_axes=0)
        return scan(nn.GRUCell(features=self.hidden), h, xs)


def _block(x, width: int):
    return nn.LayerNorm()(nn.relu(nn.Dense(width)(x)))


class ActorCriticGRU(nn.Module):
    """Encoder, GRU, actor and critic heads; time-major.

    ``(h [B, H], obs [T, B, D], reset [T, B]) -> (h [B, H], logits [T, B, A], value [T, B])``.
    """

    hidden: int
    n_actions: int

    @nn.compact
    def __call__(self, h, obs, reset):
        x = _block(_block(obs, self.hidden), self.hidden)
        h, y = ScannedGRU(self.hidden)(h, (x, reset))
        logits = nn.Dense(self.n_actions)(_block(y, self.hidden // 2))
        value = nn.Dense(1)(_block(y, self.hidden // 2))[..., 0]
        return h, logits, value


@struct.dataclass
class BaselineTransition:
    """One rollout step of B envs; stacked into [T, B]."""

    obs: jax.Array  # [B, D] observation acted on
    reset: jax.Array  # [B] bool, the GRU state was zeroed before acting
    action: jax.Array  # [B] int32
    log_prob: jax.Array  # [B] log-prob of the action
    value: jax.Array  # [B] V(obs)
    reward: jax.Array  # [B]
    done: jax.Array  # [B] bool, the step ended the episode


@struct.dataclass
class RunnerState:
    """What one update step hands to the next."""

    params: Any  # network parameters
    opt_state: Any  # the one optimizer's state
    env_state: Any  # the gymnax adapter's states, leaves [B, ...]
    obs: jax.Array  # [B, D] observation to act on
    reset: jax.Array  # [B] bool, zero the GRU state before acting
    hidden: jax.Array  # [B, H] GRU state before acting
    ep_return: jax.Array  # [B] reward summed over the current episode
    rng: jax.Array  # key for the next update


@dataclasses.dataclass(frozen=True)
class Baseline:
    """`make_train`'s output: `init(key) -> RunnerState`; `train(runner, k)` jitted, k
    static, the runner donated -> (runner, metrics [k])."""

    init: Callable[[jax.Array], RunnerState]
    train: Callable
    network: ActorCriticGRU
    n_params: int


def gae(traj: BaselineTransition, last_value: jax.Array, gamma: float, gae_lambda: float
        ) -> jax.Array:
    """Advantages [T, B] of a rollout `traj` [T, B] followed by `last_value` [B], every end
    terminal (no bootstrap across a done step), by a reverse `lax.scan`."""

    def step(carry, tr: BaselineTransition):
        adv, next_value = carry
        not_done = 1.0 - tr.done.astype(jnp.float32)
        delta = tr.reward + gamma * next_value * not_done - tr.value
        adv = delta + gamma * gae_lambda * not_done * adv
        return (adv, tr.value), adv

    _, advantages = jax.lax.scan(step, (jnp.zeros_like(last_value), last_value), traj,
                                 reverse=True)
    return advantages


def make_train(config: BaselineConfig, env: GymnaxEnv, env_params) -> Baseline:
    """The PureJaxRL-shaped recurrent PPO on `env` (gymnax API) with `env_params`."""
    c = config
    network = ActorCriticGRU(c.hidden, env.num_actions)
    tx = optax.chain(optax.clip_by_global_norm(c.max_grad_norm), optax.adam(c.lr, eps=1e-5))
    mb_envs = c.n_envs // c.n_minibatches
    reset_envs = jax.vmap(env.reset, in_axes=(0, None))
    step_envs = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def init(key: jax.Array) -> RunnerState:
        key_net, key_env, key_rng = jax.random.split(key, 3)
        obs, env_state = reset_envs(jax.random.split(key_env, c.n_envs), env_params)
        hidden = jnp.zeros((c.n_envs, c.hidden), jnp.float32)
        reset = jnp.ones((c.n_envs,), bool)
        params = network.init(key_net, hidden, obs[None], reset[None])
        return RunnerState(params=params, opt_state=tx.init(params), env_state=env_state,
                           obs=obs, reset=reset, hidden=hidden,
                           ep_return=jnp.zeros((c.n_envs,), jnp.float32), rng=key_rng)

    def loss_fn(params, hidden, tr: BaselineTransition, adv, targets):
        _, logits, value = network.apply(params, hidden, tr.obs, tr.reset)
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs, tr.action[..., None], -1)[..., 0]
        value_clipped = tr.value + jnp.clip(value - tr.value, -c.clip, c.clip)
        value_loss = 0.5 * jnp.maximum((value - targets) ** 2,
                                       (value_clipped - targets) ** 2).mean()
        ratio = jnp.exp(log_prob - tr.log_prob)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        actor_loss = -jnp.minimum(ratio * adv,
                                  jnp.clip(ratio, 1 - c.clip, 1 + c.clip) * adv).mean()
        entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
        return actor_loss + c.vf_coef * value_loss - c.ent_coef * entropy, (value_loss, entropy)

    def update_step(runner: RunnerState, _):
        # Rollout: the network on one time step ([1, B, ...]), then the vmapped env step.
        def env_step(r: RunnerState, key):
            key_act, key_env = jax.random.split(key)
            hidden, logits, value = network.apply(r.params, r.hidden, r.obs[None], r.reset[None])
            logits, value = logits[0], value[0]
            action = jax.random.categorical(key_act, logits)
            log_prob = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
            obs, env_state, reward, done, _ = step_envs(
                jax.random.split(key_env, c.n_envs), r.env_state, action, env_params)
            ep_return = r.ep_return + reward
            tr = BaselineTransition(obs=r.obs, reset=r.reset, action=action, log_prob=log_prob,
                                    value=value, reward=reward, done=done)
            r = r.replace(env_state=env_state, obs=obs, reset=done, hidden=hidden,
                          ep_return=jnp.where(done, 0.0, ep_return))
            return r, (tr, jnp.where(done, ep_return, 0.0))

        rng, key_roll, key_epochs = jax.random.split(runner.rng, 3)
        start_hidden = runner.hidden
        runner, (traj, ended_returns) = jax.lax.scan(
            env_step, runner, jax.random.split(key_roll, c.n_steps))

        # Every end is terminal, as in PureJaxRL.
        _, _, last_value = network.apply(runner.params, runner.hidden, runner.obs[None],
                                         runner.reset[None])
        advantages = gae(traj, last_value[0], c.gamma, c.gae_lambda)
        targets = advantages + traj.value

        # Epochs over minibatches of whole env sequences (env axis: 0 of the hidden state,
        # 1 of the [T, B] arrays).
        def update_epoch(carry, key):
            params, opt_state = carry
            perm = jax.random.permutation(key, c.n_envs)

            def split(x, axis):
                x = jnp.take(x, perm, axis=axis)
                x = x.reshape(*x.shape[:axis], c.n_minibatches, mb_envs, *x.shape[axis + 1:])
                return jnp.moveaxis(x, axis, 0)

            mbs = (split(start_hidden, 0),
                   jax.tree.map(lambda x: split(x, 1), (traj, advantages, targets)))

            def update_minibatch(carry, mb):
                params, opt_state = carry
                hidden, (tr, adv, tgt) = mb
                (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                    params, hidden, tr, adv, tgt)
                updates, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), (loss, *aux)

            return jax.lax.scan(update_minibatch, (params, opt_state), mbs)

        (params, opt_state), (loss, value_loss, entropy) = jax.lax.scan(
            update_epoch, (runner.params, runner.opt_state),
            jax.random.split(key_epochs, c.n_epochs))
        n_done = traj.done.sum()
        metrics = {"loss": loss.mean(), "value_loss": value_loss.mean(),
                   "entropy": entropy.mean(), "reward_mean": traj.reward.mean(),
                   "episode_return_mean": ended_returns.sum() / jnp.maximum(n_done, 1)}
        return runner.replace(params=params, opt_state=opt_state, rng=rng), metrics

    def train(runner: RunnerState, k: int):
        return jax.lax.scan(update_step, runner, None, length=k)

    shapes = jax.eval_shape(init, jax.random.key(0))
    return Baseline(init=jax.jit(init), train=jax.jit(train, static_argnums=1, donate_argnums=0),
                    network=network, n_params=count_params(shapes.params))


# --- measuring ------------------------------------------------------------------------------


@dataclasses.dataclass
class Program:
    """One program to time: a compiled one-iteration step and the state it threads."""

    name: str
    step: Callable[[Any], Any]  # state -> state after one iteration (compiled)
    state: Any
    n_params: int
    compile_s: float
    times: list[float] = dataclasses.field(default_factory=list)  # seconds of each repeat


def jaxtrade_program(name: str, trainer: Trainer) -> Program:
    state = trainer.initial_state(jax.random.key(0))
    t0 = time.perf_counter()
    compiled = trainer.compile(state, 1)
    compile_s = time.perf_counter() - t0
    return Program(name, lambda s: compiled(s, trainer.env_params, trainer.schedule)[0], state,
                   trainer.n_params, compile_s)


def baseline_program(name: str, baseline: Baseline) -> Program:
    state = baseline.init(jax.random.key(0))
    t0 = time.perf_counter()
    compiled = baseline.train.lower(state, 1).compile()
    compile_s = time.perf_counter() - t0
    return Program(name, lambda s: compiled(s)[0], state, baseline.n_params, compile_s)


def time_repeat(program: Program, iterations: int) -> None:
    state = program.state
    t0 = time.perf_counter()
    for _ in range(iterations):
        state = program.step(state)
    jax.block_until_ready(state)
    program.times.append(time.perf_counter() - t0)
    program.state = state


def jaxtrade_config(args, critic_epochs: int) -> cfgmod.Config:
    return cfgmod.resolve(cfgmod.with_values(
        cfgmod.Config(), market="fixed", encoder="flat", n_envs=args.n_envs,
        n_steps=args.n_steps, hidden_dim=args.hidden, n_gru_layers=1, n_minibatches=4,
        ppo_epochs=4, critic_epochs=critic_epochs, dropout=0.0, precision="fp32",
    ), "cpu")


COLUMNS = [
    ("program", "program", "s"),
    ("n_params", "params", ",d"),
    ("compile_s", "compile s", ".1f"),
    ("s_per_iteration", "s/iter", ".2f"),
    ("steps_per_s", "steps/s (best)", ",.0f"),
    ("steps_per_s_mean", "steps/s (mean)", ",.0f"),
    ("ratio", "vs baseline", ".3f"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-envs", type=int, default=1024)
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128, help="GRU width (one layer)")
    parser.add_argument("--iterations", type=int, default=3,
                        help="timed iterations per repeat and program")
    parser.add_argument("--repeats", type=int, default=2, help="the best one counts")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes for a smoke test (16 envs x 8 steps, hidden 16, "
                             "1 iteration x 1 repeat)")
    parser.add_argument("--out", default=None, help="results directory (default "
                                                    "benchmarks/results)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_envs, args.n_steps, args.hidden, args.iterations, args.repeats = 16, 8, 16, 1, 1

    info = device_info()
    trainers = {f"jaxtrade c{c}": make_jaxtrade_train(cfg := jaxtrade_config(args, c),
                                                      load_run_market(cfg))
                for c in (0, 4)}
    reference = trainers["jaxtrade c0"]
    env = GymnaxEnv(reference.env, stagger=True, final_observation=False)
    base_cfg = BaselineConfig(n_envs=args.n_envs, n_steps=args.n_steps, hidden=args.hidden)
    baseline = make_train(base_cfg, env, reference.env_params)
    episode_length = reference.config.env.episode_length
    print(f"device: {info['device_kind']} ({info['platform']}, {info['host_cpus']} cpus), "
          f"jax {info['jax']}; portfolio env, fixed market, episodes of {episode_length} "
          f"steps; {args.n_envs} envs x {args.n_steps} steps, GRU {args.hidden} x 1, 4 epochs "
          f"x 4 minibatches, float32; {args.iterations} timed iterations x {args.repeats} "
          f"repeats", flush=True)

    programs = [baseline_program("baseline", baseline)]
    programs += [jaxtrade_program(name, t) for name, t in trainers.items()]
    for p in programs:
        print(f"{p.name}: {p.n_params:,} params, compile {p.compile_s:.1f} s", flush=True)
        p.state = jax.block_until_ready(p.step(p.state))  # warm-up
    for r in range(args.repeats):
        for p in programs:
            time_repeat(p, args.iterations)
            print(f"repeat {r + 1}: {p.name} {p.times[-1] / args.iterations:.2f} s/iteration",
                  flush=True)

    steps = args.n_envs * args.n_steps * args.iterations
    rows = [{"program": p.name, "n_params": p.n_params, "compile_s": p.compile_s,
             "s_per_iteration": min(p.times) / args.iterations,
             "steps_per_s": steps / min(p.times),
             "steps_per_s_mean": float(np.mean([steps / t for t in p.times])),
             "repeat_s": p.times} for p in programs]
    for row in rows:
        row["ratio"] = row["steps_per_s"] / rows[0]["steps_per_s"]
    params_gap = rows[1]["n_params"] / rows[0]["n_params"] - 1
    print()
    print(table(rows, COLUMNS))
    print(f"jaxtrade / baseline: {rows[1]['ratio']:.3f} with --critic-epochs 0 (goal >= 1.25), "
          f"{rows[2]['ratio']:.3f} with 4 critic epochs (goal >= 1.0); parameters "
          f"{params_gap:+.2%}")
    settings = {
        "env": "portfolio", "market": "fixed", "episode_length": episode_length,
        "n_envs": args.n_envs, "n_steps": args.n_steps, "hidden": args.hidden,
        "n_gru_layers": 1, "ppo_epochs": 4, "n_minibatches": 4, "precision": "float32",
        "iterations": args.iterations, "repeats": args.repeats, "quick": args.quick,
        "params_gap": params_gap, "baseline": dataclasses.asdict(base_cfg),
        "timing": "AOT compile of one iteration; one warm-up iteration; repeats round the "
                  "programs in turn; best repeat",
    }
    print(f"saved {save('purejaxrl_equivalent', info, rows, args.out, settings=settings)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

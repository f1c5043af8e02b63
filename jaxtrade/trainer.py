"""The fused training program: rollout -> GAE -> PPO epochs -> critic epochs, one `jit`.

`make_train(config, market)` returns a `Trainer` whose pure functions are

    init(key) -> TrainState
    iterate(TrainState) -> (TrainState, metrics)     one PPO iteration
    run(TrainState, k) -> (TrainState, metrics[k])   k iterations in one compiled call

`run` is what the host calls: it scans `iterate` k times, donates the state, and
returns per-iteration metrics; the host only logs, saves and checks signals
between calls. Inside `iterate`:

1. rollout: `lax.scan` over n_steps of policy step + vmapped env step (`jaxtrade.rollout`);
2. advantages: GAE in float32 (truncated episodes bootstrap from their final obs);
3. joint epochs: `ppo_epochs` x `n_minibatches`; minibatches split the env axis and
   keep whole sequences, the GRU re-runs from each sequence's stored initial
   hidden state; gradients feed the actor chain (encoder + GRU + policy head) and
   the critic chain (value head). Each run of `n_minibatches` consecutive envs sends
   one env, at random, to every minibatch (`minibatch_assignment`), so minibatches are
   the same for any device count and never need envs from another device;
4. critic epochs: per minibatch, the trunk features are computed once with the
   updated network, then the value head alone takes `critic_epochs` steps on them.

Hyperparameters a schedule may change live in `TrainState.hparams` as float32
arrays; changing them never recompiles.

Devices: the program runs on a 1-D mesh (`jaxtrade.parallel`): per-env arrays are
split over it along their env axis, everything else is replicated, and XLA turns the
means over envs (losses, so gradients; metrics) into all-reduces. The same config and
seed give the same result on 1 or N devices, up to float summation order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxtrade import parallel, ppo
from jaxtrade.config import Config, compute_dtype
from jaxtrade.data.market import Market
from jaxtrade.envs import N_REGIMES, EnvParams, PortfolioEnv
from jaxtrade.evaluation import make_policy_walk
from jaxtrade.networks import ActorCritic, count_params
from jaxtrade.rollout import Carry, Transition, carry_env_axes, initial_carry, make_rollout

HPARAM_NAMES = ("actor_lr", "critic_lr", "ent_coef", "clip", "vf_coef", "gae_lambda", "gamma")


@struct.dataclass
class HParams:
    """Hyperparameters that may change between iterations without recompiling (float32 [])."""

    actor_lr: jax.Array
    critic_lr: jax.Array
    ent_coef: jax.Array
    clip: jax.Array
    vf_coef: jax.Array
    gae_lambda: jax.Array
    gamma: jax.Array

    @classmethod
    def create(cls, **values) -> HParams:
        """From Python numbers; every field becomes a float32 array (never a weak type)."""
        return cls(**{k: jnp.asarray(values[k], jnp.float32) for k in HPARAM_NAMES})

    def to_dict(self) -> dict[str, float]:
        """Host-side: the values as Python floats."""
        return {k: float(getattr(self, k)) for k in HPARAM_NAMES}


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly: params, optimisers, envs, RNG, counters."""

    params: dict  # the network's "params" collection (float32)
    actor_opt: optax.OptState  # actor chain state (encoder, GRU, policy head)
    critic_opt: optax.OptState  # critic chain state (value head)
    carry: Carry  # env states, observations, GRU states, reset flags, running returns
    rng: jax.Array  # PRNG key for the next iteration
    hparams: HParams  # runtime hyperparameters
    iteration: jax.Array  # int32 [], iterations completed
    last_episode_return: jax.Array  # float32 [], latest mean episode return (carried over
    # iterations in which no episode ended)


@struct.dataclass
class Batch:
    """A minibatch of whole sequences: M envs, all T steps."""

    transition: Transition  # leaves [T, M, ...]
    hidden: jax.Array  # [L, M, H] GRU state before the first step
    advantages: jax.Array  # [T, M] float32
    returns: jax.Array  # [T, M] float32


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The compiled-program factory's output (see the module docstring)."""

    config: Config
    env: PortfolioEnv
    env_params: EnvParams
    network: ActorCritic
    actor_tx: optax.GradientTransformation
    critic_tx: optax.GradientTransformation
    init: Callable[[jax.Array], TrainState]
    iterate: Callable[[TrainState], tuple[TrainState, dict]]
    run: Callable[[TrainState, int], tuple[TrainState, dict]]
    n_params: int
    mesh: jax.sharding.Mesh  # the devices the envs are split over
    state_shardings: TrainState  # a tree of shardings: per-env leaves split, others replicated

    @property
    def steps_per_iteration(self) -> int:
        return self.config.ppo.n_envs * self.config.ppo.n_steps

    def initial_state(self, key: jax.Array) -> TrainState:
        """`init(key)`, computed where it lives: each device builds its own envs."""
        return jax.jit(self.init, out_shardings=self.state_shardings)(key)

    def place(self, state: TrainState) -> TrainState:
        """`state` (e.g. with changed hyperparameters) committed to `state_shardings`."""
        return jax.device_put(state, self.state_shardings)


def minibatch_assignment(key: jax.Array, n_envs: int, n_minibatches: int) -> jax.Array:
    """A random split of the env axis into minibatches: int32 [n_envs // n_minibatches,
    n_minibatches], row c a permutation of 0..n_minibatches-1.

    Env `c * n_minibatches + a[c, m]` goes to minibatch m: each run of n_minibatches
    consecutive envs gives one env to every minibatch. A device holds whole runs (its
    env count is a multiple of n_minibatches), so it builds its part of every minibatch
    from its own envs, and the split does not depend on the device count.
    """
    u = jax.random.uniform(key, (n_envs // n_minibatches, n_minibatches))
    return jnp.argsort(u, axis=1).astype(jnp.int32)


def take_minibatch(tree, assignment: jax.Array, m: jax.Array, axis: int):
    """Minibatch `m` of `minibatch_assignment` from every leaf of `tree` (env axis `axis`)."""
    runs, n_mb = assignment.shape
    pick = assignment[:, m]  # [runs], which env of each run

    def take(x):
        grouped = x.reshape(x.shape[:axis] + (runs, n_mb) + x.shape[axis + 1:])
        idx = pick.reshape((1,) * axis + (runs, 1) + (1,) * (x.ndim - axis - 1))
        idx = jnp.broadcast_to(idx, grouped.shape[:axis + 1] + (1,) + grouped.shape[axis + 2:])
        return jnp.take_along_axis(grouped, idx, axis=axis + 1).squeeze(axis + 1)

    return jax.tree.map(take, tree)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_network(config: Config) -> ActorCritic:
    """The actor-critic `config.network` describes, in this platform's compute dtype."""
    nc = config.network
    return ActorCritic(
        n_actions=N_REGIMES,
        hidden_dim=nc.hidden_dim,
        n_gru_layers=nc.n_gru_layers,
        dropout=nc.dropout,
        dtype=compute_dtype(nc.precision, jax.default_backend()),
    )


def count_network_params(config: Config, env: PortfolioEnv) -> int:
    """Scalars in the parameter tree of `config`'s network on `env`, from shapes only
    (nothing is computed or placed on a device)."""
    nc = config.network
    variables = jax.eval_shape(
        make_network(config).init,
        {"params": jax.random.key(0)},
        jax.ShapeDtypeStruct((nc.n_gru_layers, 1, nc.hidden_dim), jnp.float32),
        jax.ShapeDtypeStruct((1, env.obs_dim), jnp.float32),
        jax.ShapeDtypeStruct((1,), jnp.bool_),
    )
    return count_params(variables["params"])


def make_train(config: Config, market: Market, mesh: jax.sharding.Mesh | None = None) -> Trainer:
    """Builds the fused training program for `config` on `market`, over `mesh`.

    `config` must be resolved (`config.ppo.n_envs` set) and valid; `mesh` defaults to
    all devices (`jaxtrade.parallel.make_mesh`).

    Raises:
        ConfigError: n_envs is not a multiple of devices x minibatches (the message
            suggests the nearest valid values).
    """
    from jaxtrade.config import validate

    pc, nc = config.ppo, config.network
    n_envs, n_steps, n_mb = pc.n_envs, pc.n_steps, pc.n_minibatches
    mesh = mesh if mesh is not None else parallel.make_mesh()
    validate(config, n_devices=mesh.size)
    env = PortfolioEnv(market)
    env_params = parallel.put_replicated(
        env.make_params("train", **config.env.params_kwargs()), mesh
    )
    network = make_network(config)
    actor_tx, critic_tx = ppo.make_optimizers(
        pc.max_grad_norm, actor_lr=pc.actor_lr, critic_lr=pc.critic_lr
    )

    def shard_carry(carry: Carry) -> Carry:
        return jax.tree.map(
            lambda x, a: parallel.constrain(x, mesh, a), carry, carry_env_axes(carry)
        )

    def shard_envs(tree, axis: int):
        return parallel.constrain(tree, mesh, axis)

    rollout = make_rollout(network, env, n_steps, shard=shard_carry)

    def init(key: jax.Array) -> TrainState:
        key_net, key_env, key_rng = jax.random.split(key, 3)
        params = network.init(
            {"params": key_net},
            jnp.zeros((nc.n_gru_layers, 1, nc.hidden_dim), jnp.float32),
            jnp.zeros((1, env.obs_dim), jnp.float32),
            jnp.ones((1,), bool),
        )["params"]
        actor, critic = ppo.split_params(params)
        return TrainState(
            params=params,
            actor_opt=actor_tx.init(actor),
            critic_opt=critic_tx.init(critic),
            carry=initial_carry(network, env, env_params, key_env, n_envs, stagger=True),
            rng=key_rng,
            hparams=HParams.create(**{k: getattr(pc, k) for k in HPARAM_NAMES}),
            iteration=jnp.zeros((), jnp.int32),
            last_episode_return=jnp.zeros((), jnp.float32),
        )

    def unroll_train(params, batch: Batch, key: jax.Array):
        """Logits and values of a minibatch with dropout on (mask fixed by `key`)."""
        tr = batch.transition
        _, logits, values, _ = network.apply(
            {"params": params},
            batch.hidden,
            tr.obs,
            tr.reset,
            deterministic=False,
            rngs={"dropout": key},
            method=ActorCritic.unroll,
        )
        return logits, values

    def ppo_minibatch_loss(params, old_params, batch: Batch, hp: HParams, key: jax.Array):
        tr = batch.transition
        logits, values = unroll_train(params, batch, key)
        old_log_probs = tr.log_prob
        if nc.dropout > 0:
            # Rollouts act without dropout, updates train with it. Comparing a dropped-out
            # new policy with the dropout-free old one would make the ratio noisy before
            # any update (clip fractions near 0.5); instead the old policy is re-evaluated
            # under the same dropout mask, so the ratio measures parameter change only.
            old_logits, _ = unroll_train(old_params, batch, key)
            old_log_probs = jnp.take_along_axis(
                jax.nn.log_softmax(jax.lax.stop_gradient(old_logits)), tr.action[..., None], -1
            )[..., 0]
        return ppo.ppo_loss(
            logits,
            values,
            tr.action,
            old_log_probs,
            tr.value,
            batch.advantages,
            batch.returns,
            clip_eps=hp.clip,
            vf_coef=hp.vf_coef,
            ent_coef=hp.ent_coef,
            clip_value=pc.clip_value,
        )

    def joint_epochs(params, actor_opt, critic_opt, batch: Batch, hp: HParams, key):
        """ppo_epochs x n_minibatches updates of both chains. batch leaves have all n_envs."""
        old_params = params

        def minibatch(assignment, carry, xs):
            params, actor_opt, critic_opt = carry
            m, key = xs
            mb = shard_envs(take_minibatch(batch, assignment, m, axis=1), axis=1)
            grads, metrics = jax.grad(ppo_minibatch_loss, has_aux=True)(
                params, old_params, mb, hp, key
            )
            actor_grads, critic_grads = ppo.split_params(grads)
            metrics["actor_grad_norm"] = optax.tree.norm(actor_grads)
            metrics["critic_grad_norm"] = optax.tree.norm(critic_grads)
            params, actor_opt, critic_opt = ppo.apply_actor_critic_update(
                params, grads, actor_tx, critic_tx, actor_opt, critic_opt
            )
            return (params, actor_opt, critic_opt), metrics

        def epoch(carry, key):
            key_perm, key_drop = jax.random.split(key)
            assignment = shard_envs(minibatch_assignment(key_perm, n_envs, n_mb), axis=0)
            return jax.lax.scan(
                lambda c, xs: minibatch(assignment, c, xs),
                carry,
                (jnp.arange(n_mb), jax.random.split(key_drop, n_mb)),
            )

        carry, metrics = jax.lax.scan(
            epoch, (params, actor_opt, critic_opt), jax.random.split(key, pc.ppo_epochs)
        )
        return carry, jax.tree.map(jnp.mean, metrics)

    def critic_epochs(params, critic_opt, batch: Batch, key):
        """Per minibatch: trunk features once, then critic_epochs value-head-only steps."""
        actor, _ = ppo.split_params(params)

        def critic_loss(critic, trunk, tr: Transition, returns):
            values = network.apply(
                {"params": ppo.merge_params(actor, critic)},
                trunk,
                method=ActorCritic.value_from_trunk,
            )
            return ppo.value_loss(values, tr.value, returns, clip_eps=0.0, clip_value=False)

        assignment = shard_envs(minibatch_assignment(key, n_envs, n_mb), axis=0)

        def minibatch(carry, m):
            params, critic_opt = carry
            mb = shard_envs(take_minibatch(batch, assignment, m, axis=1), axis=1)
            tr, returns = mb.transition, mb.returns
            _, _, _, trunk = network.apply(
                {"params": params},
                mb.hidden,
                tr.obs,
                tr.reset,
                method=ActorCritic.unroll,
            )
            trunk = jax.lax.stop_gradient(trunk)

            def step(carry, _):
                params, critic_opt = carry
                _, critic = ppo.split_params(params)
                loss, grads = jax.value_and_grad(critic_loss)(critic, trunk, tr, returns)
                params, critic_opt = ppo.apply_critic_update(params, grads, critic_tx, critic_opt)
                return (params, critic_opt), loss

            carry, losses = jax.lax.scan(step, (params, critic_opt), None, length=pc.critic_epochs)
            return carry, losses

        (params, critic_opt), losses = jax.lax.scan(
            minibatch, (params, critic_opt), jnp.arange(n_mb)
        )
        # Loss before the first and after the last critic step, averaged over minibatches.
        return params, critic_opt, losses[:, 0].mean(), losses[:, -1].mean()

    def iterate(state: TrainState) -> tuple[TrainState, dict]:
        hp = state.hparams
        rng, key_roll, key_epochs, key_critic = jax.random.split(state.rng, 4)
        actor_opt = ppo.set_learning_rate(state.actor_opt, hp.actor_lr)
        critic_opt = ppo.set_learning_rate(state.critic_opt, hp.critic_lr)
        hidden0 = state.carry.hidden

        carry, traj = rollout(state.params, env_params, state.carry, key_roll)
        carry, traj = shard_carry(carry), shard_envs(traj, axis=1)

        # V of the observation after the last step, with the GRU state reached there.
        _, _, last_value = network.apply(
            {"params": state.params}, carry.hidden, carry.obs, carry.reset
        )
        next_values = jnp.concatenate([traj.value[1:], last_value[None]], axis=0)
        next_values = jnp.where(traj.done, traj.final_value, next_values)
        advantages, returns = ppo.gae(
            traj.reward, traj.value, next_values, traj.terminated, traj.done, hp.gamma,
            hp.gae_lambda,
        )
        batch = Batch(transition=traj, hidden=shard_envs(hidden0, axis=1), advantages=advantages,
                      returns=returns)

        (params, actor_opt, critic_opt), metrics = joint_epochs(
            state.params, actor_opt, critic_opt, batch, hp, key_epochs
        )
        if pc.critic_epochs > 0:
            params, critic_opt, critic_before, critic_after = critic_epochs(
                params, critic_opt, batch, key_critic
            )
            metrics["critic_loss_before"] = critic_before
            metrics["critic_loss_after"] = critic_after

        n_done = traj.done.sum()
        episode_return = jnp.where(
            n_done > 0, traj.episode_return.sum() / jnp.maximum(n_done, 1),
            state.last_episode_return,
        )
        metrics.update(
            explained_variance=ppo.explained_variance(traj.value, returns),
            episode_return_mean=episode_return,
            episodes=n_done,
            reward_mean=traj.reward.mean(),
            cost_mean=traj.info["cost"].mean(),
            turnover_mean=traj.info["turnover"].mean(),
            value_mean=traj.value.mean(),
            advantage_mean=advantages.mean(),
            advantage_std=advantages.std(),
            # A compare-and-mean, not bincount: it reduces where the actions are instead of
            # gathering them all on every device.
            action_freq=(traj.action[..., None] == jnp.arange(N_REGIMES)).mean((0, 1)),
            params_finite=_all_finite(params),
            **{k: getattr(hp, k) for k in HPARAM_NAMES},
        )
        new_state = TrainState(
            params=params,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            carry=carry,
            rng=rng,
            hparams=hp,
            iteration=state.iteration + 1,
            last_episode_return=episode_return,
        )
        return new_state, metrics

    def run_k(state: TrainState, k: int):
        return jax.lax.scan(lambda s, _: iterate(s), state, None, length=k)

    shapes = jax.eval_shape(init, jax.random.key(0))
    axes = jax.tree.map(lambda _: None, shapes).replace(carry=carry_env_axes(shapes.carry))
    state_shardings = parallel.env_shardings(mesh, axes)
    run = jax.jit(
        run_k,
        static_argnums=1,
        donate_argnums=0,
        out_shardings=(state_shardings, parallel.replicated(mesh)),
    )
    n_params = count_params(shapes.params)
    return Trainer(
        config=config,
        env=env,
        env_params=env_params,
        network=network,
        actor_tx=actor_tx,
        critic_tx=critic_tx,
        init=init,
        iterate=iterate,
        run=run,
        n_params=n_params,
        mesh=mesh,
        state_shardings=state_shardings,
    )


def set_hparams(state: TrainState, **values) -> TrainState:
    """A copy of `state` with some hyperparameters changed (float32 arrays: no recompile)."""
    unknown = set(values) - set(HPARAM_NAMES)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}; valid: {HPARAM_NAMES}")
    return state.replace(
        hparams=state.hparams.replace(**{k: jnp.asarray(v, jnp.float32) for k, v in values.items()})
    )


def make_greedy_walk(trainer: Trainer, env_params: EnvParams, n_steps: int):
    """jit: (params, key) -> Transition [n_steps, 1, ...] of the greedy policy from the start of
    `env_params`' range (see `jaxtrade.evaluation` for continuous passes)."""
    walk = make_policy_walk(trainer.network, trainer.env, n_steps)
    return jax.jit(lambda params, key: walk(params, env_params, key)[1])

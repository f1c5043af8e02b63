"""The fused training program: rollout -> GAE -> PPO epochs -> critic epochs, one `jit`.

`make_train(config, market)` builds the env `config.env.name` names (any env of the
protocol in `jaxtrade.envs.base`) and the network `config.network.kind` names (any of
`jaxtrade.networks`), and returns a `Trainer` whose pure functions are

    init(key) -> TrainState
    iterate(TrainState, env_params) -> (TrainState, metrics)   one PPO iteration
    program(TrainState, env_params, k) -> (TrainState, metrics[k])   k iterations, one jit

`Trainer.run(state, k)` is what the host calls: it scans `iterate` k times, donates the
state, and returns per-iteration metrics; the host only logs, saves and checks signals
between calls. The env params (the market's arrays among them) are an argument of the
compiled program, not constants in it, so a market of the same shape runs the same
program. Inside `iterate`:

1. rollout: `lax.scan` over n_steps of policy step + vmapped env step (`jaxtrade.rollout`),
   storing of the env's `info` only what the iteration's metrics read
   (`Environment.metric_info_keys`);
2. advantages: GAE in float32 (truncated episodes bootstrap from their final obs, whose
   values the rollout computes in one batched forward after its scan,
   `jaxtrade.rollout.bootstrap_capacity` slots per env);
3. the update, `jaxtrade.ppo.LearningRule`: `ppo_epochs` x `n_minibatches` steps of the
   actor chain (everything but the value head) and the critic chain (value head), on
   minibatches of whole sequences, then critic-only epochs on cached trunk features.
   Each run of `n_minibatches` consecutive envs sends one env, at random, to every
   minibatch (`minibatch_assignment`), so minibatches are the same for any device count
   and never need envs from another device.

Hyperparameters a schedule may change live in `TrainState.hparams` as float32
arrays; changing them never recompiles. The dropout rate among them: whether the network
has dropout sites is fixed by the program (`dropout_ceiling`), their rate is not.

Devices: the program runs on a 1-D mesh (`jaxtrade.parallel`): per-env arrays are
split over it along their env axis, everything else is replicated, and XLA turns the
means over envs (losses, so gradients; metrics) into all-reduces. The same config and
seed give the same result on 1 or N devices, up to float summation order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxtrade import parallel, ppo
from jaxtrade.config import RUNTIME_FIELDS, Config
from jaxtrade.data.market import Market
from jaxtrade.envs import Environment, make_env
from jaxtrade.networks import Network, count_params, init_params, make_network, param_shapes
from jaxtrade.ppo import Batch, LearningRule
from jaxtrade.rollout import Carry, Transition, bootstrap_capacity, initial_carry, make_rollout

# The config's runtime hyperparameters (`setting(runtime=True)`), each a field of HParams.
HPARAM_NAMES = RUNTIME_FIELDS


@struct.dataclass
class HParams:
    """Hyperparameters that may change between iterations without recompiling (float32 []):
    the fields are `HPARAM_NAMES` (the same set, checked at import); the field order here is
    the saved state's and must not change."""

    actor_lr: jax.Array
    critic_lr: jax.Array
    ent_coef: jax.Array
    clip: jax.Array
    vf_coef: jax.Array
    gae_lambda: jax.Array
    gamma: jax.Array
    max_grad_norm: jax.Array  # both chains' global-norm clip (appended: checkpoint format 3)
    dropout: jax.Array  # the network's dropout rate in updates (appended: format 4)

    @classmethod
    def create(cls, **values) -> HParams:
        """From Python numbers; every field becomes a float32 array (never a weak type)."""
        return cls(**{k: jnp.asarray(values[k], jnp.float32) for k in HPARAM_NAMES})

    def to_dict(self) -> dict[str, float]:
        """Host-side: the values as Python floats."""
        return {k: float(getattr(self, k)) for k in HPARAM_NAMES}


if {f.name for f in dataclasses.fields(HParams)} != set(HPARAM_NAMES):
    raise RuntimeError(f"HParams fields {[f.name for f in dataclasses.fields(HParams)]} are not "
                       f"the config's runtime hyperparameters {HPARAM_NAMES}")


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly: params, optimisers, envs, RNG, counters."""

    params: dict  # the network's "params" collection (float32)
    actor_opt: optax.OptState  # actor chain state (every parameter but the value head)
    critic_opt: optax.OptState  # critic chain state (value head)
    carry: Carry  # env states, observations, recurrent states, reset flags, running returns
    rng: jax.Array  # PRNG key for the next iteration
    hparams: HParams  # runtime hyperparameters
    iteration: jax.Array  # int32 [], iterations completed
    last_episode_return: jax.Array  # float32 [], latest mean episode return (carried over
    # iterations in which no episode ended)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The compiled-program factory's output (see the module docstring)."""

    config: Config
    env: Environment
    env_params: Any  # the env's training params, replicated on the mesh
    network: Network
    rule: LearningRule  # PPO's update (`jaxtrade.ppo`)
    init: Callable[[jax.Array], TrainState]
    iterate: Callable[[TrainState, Any], tuple[TrainState, dict]]  # (state, env_params)
    # jit: (state, env_params, k, schedule) -> (state, metrics [k]); k static
    program: Callable
    n_params: int
    mesh: jax.sharding.Mesh  # the devices the envs are split over
    state_shardings: TrainState  # a tree of shardings: per-env leaves split, others replicated
    # The run's schedule (`jaxtrade.schedule.ScheduleTable`, replicated) or None: an argument
    # of the program, so that phases ending early and adjusted factors recompile nothing.
    schedule: Any = None
    # `iterate` for a population's member, (state, env_params, schedule=this trainer's
    # as built): a member's own values of scheduled hyperparameters are factors on it
    # (`make_iterate`'s `relative_to`).
    iterate_member: Callable | None = None
    # The training rollout, (params, env_params, carry, key) -> (carry, Transition [T, B]),
    # as `iterate` runs it (for benchmarks that time the parts of an iteration).
    rollout: Callable | None = None

    @property
    def steps_per_iteration(self) -> int:
        return self.config.ppo.n_envs * self.config.ppo.n_steps

    def initial_state(self, key: jax.Array) -> TrainState:
        """`init(key)`, computed where it lives: each device builds its own envs. The env
        params are an argument, not constants folded into the program (a pool of worlds
        is gigabytes)."""
        return jax.jit(self.init, out_shardings=self.state_shardings)(key, self.env_params)

    def place(self, state: TrainState) -> TrainState:
        """`state` (e.g. with changed hyperparameters) committed to `state_shardings`."""
        return jax.device_put(state, self.state_shardings)

    @property
    def actor_tx(self) -> optax.GradientTransformation:
        return self.rule.actor_tx

    @property
    def critic_tx(self) -> optax.GradientTransformation:
        return self.rule.critic_tx

    def run(self, state: TrainState, k: int, env_params: Any = None, schedule: Any = None):
        """k iterations in one compiled call on `env_params` and `schedule` (defaults: this
        trainer's); `state` is donated. Params of the same shapes (another market of the
        same size, a schedule with other phase ends) run the same compiled program."""
        return self.program(state, self.env_params if env_params is None else env_params, k,
                            self.schedule if schedule is None else schedule)

    def compile(self, state: TrainState, k: int, compiler_options: dict | None = None):
        """The compiled program for k iterations per call:
        `compiled(state, env_params, schedule)` (`schedule`: this trainer's, or a table of
        the same shapes; None when it has none). `compiler_options`: XLA options for this
        program alone (e.g. `{"xla_backend_optimization_level": 3}`), over XLA_FLAGS."""
        return self.program.lower(state, self.env_params, k, self.schedule).compile(
            compiler_options)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def build_network(config: Config, env: Environment, platform: str | None = None) -> Network:
    """The network `config.network` describes, sized for `env`, with dropout sites when the
    run uses dropout at all (`dropout_ceiling`)."""
    nc = dataclasses.replace(config.network, dropout=dropout_ceiling(config))
    return make_network(nc, env.obs_dim, env.num_actions, platform, layout=env.obs_layout)


def dropout_ceiling(config: Config) -> float:
    """The largest dropout rate `config`'s run trains with: its `dropout`, or where its
    schedule drives dropout, the largest a phase names. Above 0, the network has dropout
    sites, whose rate is the runtime hyperparameter (`HParams.dropout`); at 0 it has none,
    and the programs are those of a network without dropout."""
    rate = config.network.dropout
    if config.run.schedule is None or "dropout" in (config.run.schedule_fixed or ()):
        return rate
    from jaxtrade import schedule

    try:
        phases = schedule.load(config.run.schedule).phases
    except schedule.ScheduleError:
        # A saved run evaluated where its schedule file is not (an archived model): the
        # sites hold no parameters and a deterministic pass skips them, so the run's rate
        # builds the same network for it. Training loads the schedule itself and says why.
        return rate
    return max([rate, *(x for p in phases for x in p.values.get("dropout", ()))])


def count_network_params(config: Config, env: Environment) -> int:
    """Scalars in the parameter tree of `config`'s network on `env`, from shapes only
    (nothing is computed or placed on a device)."""
    return count_params(param_shapes(build_network(config, env)))


def advantages(network: Network, params, traj: Transition, carry: Carry, hp: HParams
               ) -> tuple[jax.Array, jax.Array]:
    """GAE of a rollout `traj` [T, B] that ended in `carry`: V of the observation after the
    last step bootstraps it, with the recurrent state reached there; a done step bootstraps
    from its final value (used by GAE where the episode was truncated, not terminated).

    Returns: advantages and returns, float32 [T, B].
    """
    last_value = network.apply({"params": params}, carry.hidden, carry.obs, carry.reset).value
    next_values = jnp.concatenate([traj.value[1:], last_value[None]], axis=0)
    next_values = jnp.where(traj.done, traj.final_value, next_values)
    return ppo.gae(traj.reward, traj.value, next_values, traj.terminated, traj.done,
                   hp.gamma, hp.gae_lambda)


def env_step_metrics(env: Environment, info: dict) -> dict[str, jax.Array]:
    """`env.step_metrics` of a training rollout's `info`, which holds the keys
    `env.metric_info_keys` names and no others.

    Raises:
      ValueError: `step_metrics` reads a key `metric_info_keys` does not name.
    """
    try:
        return env.step_metrics(info)
    except KeyError as e:
        raise ValueError(
            f"env {env.name!r}: step_metrics reads info[{e.args[0]!r}], which its "
            f"metric_info_keys {env.metric_info_keys} does not name (a training rollout "
            f"stores only those keys of info)") from None


def make_iterate(env: Environment, network: Network, rule: LearningRule, rollout: Callable,
                 shard: Callable, steps_per_iteration: int = 0) -> Callable:
    """`iterate(state, env_params, schedule, relative_to) -> (state, metrics)`: one PPO
    iteration (module docstring). With a `jaxtrade.schedule.ScheduleTable` (None: none),
    the hyperparameters it controls take its values at the iteration's first timestep
    (iteration x `steps_per_iteration`) first, and the state keeps them.

    `relative_to` (HParams, a population's: the config's values): a member's own value of
    a scheduled hyperparameter is a factor on the schedule (`_member_scaled`), and the
    state keeps the member's own values (PBT perturbs them)."""

    def iterate(state: TrainState, env_params, schedule=None, relative_to=None
                ) -> tuple[TrainState, dict]:
        hp = state.hparams
        if schedule is not None:
            t = state.iteration.astype(jnp.float32) * jnp.float32(steps_per_iteration)
            values = schedule.values_at(t)
            if relative_to is not None:
                values = _member_scaled(values, schedule, hp, relative_to)
            hp = hp.replace(**values)
        rng, key_roll, key_epochs, key_critic = jax.random.split(state.rng, 4)
        actor_opt = ppo.set_hyperparams(state.actor_opt, learning_rate=hp.actor_lr,
                                        max_grad_norm=hp.max_grad_norm)
        critic_opt = ppo.set_hyperparams(state.critic_opt, learning_rate=hp.critic_lr,
                                         max_grad_norm=hp.max_grad_norm)
        carry, traj = rollout(state.params, env_params, state.carry, key_roll)
        carry, traj = shard(carry, 0), shard(traj, 1)
        adv, returns = advantages(network, state.params, traj, carry, hp)
        batch = Batch(transition=traj, hidden=shard(state.carry.hidden, 0), advantages=adv,
                      returns=returns)
        params, actor_opt, critic_opt, metrics = rule.update(
            state.params, actor_opt, critic_opt, batch, hp, key_epochs, key_critic
        )
        n_done = traj.done.sum()
        episode_return = jnp.where(
            n_done > 0, traj.episode_return.sum() / jnp.maximum(n_done, 1),
            state.last_episode_return,
        )
        n_actions = env.num_actions
        metrics.update(
            explained_variance=ppo.explained_variance(traj.value, returns),
            episode_return_mean=episode_return,
            episodes=n_done,
            reward_mean=traj.reward.mean(),
            **env_step_metrics(env, traj.info),
            value_mean=traj.value.mean(),
            advantage_mean=adv.mean(),
            advantage_std=adv.std(),
            # A compare-and-mean, not bincount: it reduces where the actions are instead of
            # gathering them all on every device.
            action_freq=(traj.action[..., None] == jnp.arange(n_actions)).mean((0, 1)),
            # The entropy's ceiling is log(valid actions): the model score's exploration term.
            valid_actions=(jnp.asarray(n_actions, jnp.float32) if traj.mask is None
                           else traj.mask.sum(-1).mean(dtype=jnp.float32)),
            params_finite=_all_finite(params),
            **{k: getattr(hp, k) for k in HPARAM_NAMES},
        )
        new_state = TrainState(
            params=params, actor_opt=actor_opt, critic_opt=critic_opt, carry=carry, rng=rng,
            hparams=state.hparams if relative_to is not None else hp,
            iteration=state.iteration + 1, last_episode_return=episode_return,
        )
        return new_state, metrics

    return iterate


# Discounts whose horizon 1 - x is what a factor scales (PBT perturbs them so too).
HORIZON_KEYS = frozenset({"gamma", "gae_lambda"})


def _member_scaled(values: dict, schedule, hp: HParams, config_values: HParams) -> dict:
    """The schedule's `values` (float32 [] each) as a population member trains with them:
    each times the member's own value / the config's (for `HORIZON_KEYS`, the horizon
    1 - x times (1 - own) / (1 - config's)), within the table's floor and ceiling (as an
    adjustment rule's factor); a factor of 1 (the config's value, or a config value of 0
    or, for a horizon, 1) leaves the schedule's value exactly."""
    out = dict(values)
    for i, k in enumerate(schedule.keys):
        own, base, v = getattr(hp, k), getattr(config_values, k), values[k]
        if k in HORIZON_KEYS:
            f = jnp.where(base != 1, (1 - own) / jnp.where(base != 1, 1 - base, 1), 1)
            scaled = 1 - (1 - v) * f
        else:
            f = jnp.where(base != 0, own / jnp.where(base != 0, base, 1), 1)
            scaled = v * f
        out[k] = jnp.where(f != 1, jnp.clip(scaled, schedule.floor[i], schedule.ceiling[i]), v)
    return out


def schedule_table(config: Config):
    """The run's `jaxtrade.schedule.ScheduleTable` (`[run] schedule`), or None."""
    if config.run.schedule is None:
        return None
    from jaxtrade import schedule
    from jaxtrade.config import total_iterations

    total = total_iterations(config) * config.ppo.n_envs * config.ppo.n_steps
    return schedule.load(config.run.schedule).table(config.run.schedule_scale, total,
                                                    config.run.schedule_fixed)


def make_train(config: Config, market: Market, mesh: jax.sharding.Mesh | None = None) -> Trainer:
    """Builds the fused training program for `config` on `market`, over `mesh`.

    The env is `config.env.name` from the registry (`jaxtrade.envs.make_env`), the
    network `config.network.kind` (`jaxtrade.networks.make_network`). `config` must be
    resolved (`config.ppo.n_envs` set) and valid (`config.validate`, which the engine runs
    once when it plans a run); only its batch is checked here, against `mesh`, which
    defaults to all devices (`jaxtrade.parallel.make_mesh`).

    Raises:
        ConfigError: n_envs is not a multiple of devices x minibatches (the message
            suggests the nearest valid values).
    """
    from jaxtrade.config import ConfigError, batch_problem

    pc = config.ppo
    n_envs, n_steps = pc.n_envs, pc.n_steps
    mesh = mesh if mesh is not None else parallel.make_mesh()
    if (problem := batch_problem(config, parallel.data_size(mesh))) is not None:
        raise ConfigError(f"invalid config: {problem}")
    env = make_env(config.env.name, market)
    env_params = parallel.put_replicated(
        env.make_params("train", **config.env.params_kwargs()), mesh
    )
    network = build_network(config, env)
    actor_tx, critic_tx = ppo.make_optimizers(
        pc.max_grad_norm, actor_lr=pc.actor_lr, critic_lr=pc.critic_lr
    )

    def shard(tree, axes):
        if isinstance(axes, int):
            return parallel.constrain(tree, mesh, axes)
        return jax.tree.map(lambda x, a: parallel.constrain(x, mesh, a), tree, axes)

    def shard_carry(tree):  # the rollout's carry and pending bootstraps: env axis first
        return shard(tree, 0)

    rule = LearningRule(
        network=network, actor_tx=actor_tx, critic_tx=critic_tx, n_envs=n_envs,
        n_minibatches=pc.n_minibatches, ppo_epochs=pc.ppo_epochs,
        critic_epochs=pc.critic_epochs, dropout=network.dropout > 0,
        clip_value=pc.clip_value, shard=shard,
    )
    rollout = make_rollout(
        network, env, n_steps, shard=shard_carry,
        bootstrap_slots=bootstrap_capacity(n_steps, config.env.steps_per_episode()),
        info_keys=env.metric_info_keys,
    )

    def init(key: jax.Array, env_params=env_params) -> TrainState:
        key_net, key_env, key_rng = jax.random.split(key, 3)
        params = init_params(network, key_net)
        actor, critic = ppo.split_params(params)
        return TrainState(
            params=params,
            actor_opt=actor_tx.init(actor),
            critic_opt=critic_tx.init(critic),
            carry=initial_carry(network, env, env_params, key_env, n_envs, stagger=True),
            rng=key_rng,
            hparams=HParams.create(**hparam_values(config)),
            iteration=jnp.zeros((), jnp.int32),
            last_episode_return=jnp.zeros((), jnp.float32),
        )

    step = make_iterate(env, network, rule, rollout, shard, n_envs * n_steps)
    table = schedule_table(config)
    if table is not None:
        table = parallel.put_replicated(table, mesh)

    def iterate(state: TrainState, env_params) -> tuple[TrainState, dict]:
        return step(state, env_params, table)  # the schedule as planned

    def iterate_member(state: TrainState, env_params, schedule=table
                       ) -> tuple[TrainState, dict]:
        config_values = HParams.create(**hparam_values(config))
        return step(state, env_params, schedule,
                    None if schedule is None else config_values)

    def run_k(state: TrainState, env_params, k: int, schedule):
        return jax.lax.scan(lambda s, _: step(s, env_params, schedule), state, None, length=k)

    shapes = jax.eval_shape(init, jax.random.key(0))
    # Every leaf of the carry has its env axis first; everything else is replicated. (Mapped
    # over the leaves themselves: an optional field that is None stays None.)
    split, whole = parallel.env_sharding(mesh, 0), parallel.replicated(mesh)
    state_shardings = jax.tree.map(lambda _: whole, shapes).replace(
        carry=jax.tree.map(lambda _: split, shapes.carry))
    program = jax.jit(
        run_k,
        static_argnums=2,
        donate_argnums=0,
        out_shardings=(state_shardings, parallel.replicated(mesh)),
    )
    return Trainer(
        config=config,
        env=env,
        env_params=env_params,
        network=network,
        rule=rule,
        init=init,
        iterate=iterate,
        iterate_member=iterate_member,
        rollout=rollout,
        program=program,
        n_params=count_params(shapes.params),
        mesh=mesh,
        state_shardings=state_shardings,
        schedule=table,
    )


def hparam_values(config: Config) -> dict[str, float]:
    """`config`'s runtime hyperparameters (`HPARAM_NAMES`), by name."""
    from jaxtrade.config import value_of

    return {k: value_of(config, k) for k in HPARAM_NAMES}


def set_hparams(state: TrainState, **values) -> TrainState:
    """A copy of `state` with some hyperparameters changed (float32 arrays on the devices
    of the old ones: no recompile)."""
    unknown = set(values) - set(HPARAM_NAMES)
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}; valid: {HPARAM_NAMES}")
    # Each new value goes where the old one lives (a state placed on the mesh stays there),
    # so the compiled program takes it without tracing again.
    hp = state.hparams
    return state.replace(hparams=hp.replace(**{
        k: jax.device_put(jnp.asarray(v, jnp.float32), getattr(hp, k).sharding)
        for k, v in values.items()
    }))

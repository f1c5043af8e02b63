"""Population-based training on device: N members vmapped in one program, exploit/explore
as a pure function of the population and its validation scores.

A `Population` is N members' `TrainState`s stacked on a leading member axis (every leaf
`[N, ...]`: parameters, both optimizer states, env states, RNG, `hparams`, counters), the
PBT RNG key, and per-member bookkeeping arrays. The shapes (n_envs, n_steps, network size,
minibatches) are the trainer's and common to all members; what differs between members is
their parameters, their data (each its own envs and RNG) and their runtime hyperparameters
(`TrainState.hparams`, which never recompile). The functions:

    init_population(trainer, key, n, hparams=None) -> Population
    continue_population(trainer, key, learned, hparams) -> Population   (trained models')
    train_population(trainer, k, env_axes=None) -> program(pop, env_params)
        -> (pop, metrics [k, N, ...])   (env_axes: per-member env params, e.g. walk-forward)
    exploit_explore(pop, scores, healthy=None, ...) -> Population    (pure, jittable)
    close_interval(pop, scores, healthy=None) -> Population   (the bookkeeping alone)
    lineage_records(before, after, scores, steps_per_iteration) -> [dict]   (host)

`train_population` is `jax.vmap` of the trainer's own `iterate` (the one the single run
scans) over the member axis, with the env params shared (`in_axes=None`: one copy of the
market for all members), inside a `lax.scan` over k iterations, in one `jit` that donates
the population. Member i of the population program computes what `trainer.run` computes
from member i's state alone (a test checks it to float tolerance).

Devices. A trainer built on a population's 2-D mesh (`jaxtrade.parallel.population_mesh`:
G member groups x D/G env shards) places the population with `shardings`: every member
leaf splits its member axis over the groups and, where the single run splits its env
axis (the carry), that axis over the group's devices; the PBT key and the bookkeeping
are replicated. The vmap names the member axis (`spmd_axis_name`), so the trainer's own
sharding constraints (`jaxtrade.parallel.constrain`, env axis over `AXIS`) become
(member, env) constraints: each member trains on its group's devices, its gradients
reduced over its env shards only. On one device, or on a single run's 1-D mesh, every
array is replicated and the constraints are no-ops. The placement is applied by
`init_population`, `continue_population` and as the output of every program here: jit
keys its cache on input placements, so a population that came back placed otherwise
would trace the program again.

Between intervals the host scores every member on the validation data (never test) and
calls `exploit_explore`, jitted once (`make_exploit_explore`); neither program recompiles
from one interval to the next, since scores, keys and hyperparameters are arrays.

Semantics of `exploit_explore` (the reference's PBT: evaluate, replace the worst with copies
of the best, mutate their hyperparameters, continue):

* Ranking: by `scores` [N] (higher is better). A member is *unhealthy* when its score is
  not finite, `healthy[i]` (e.g. `finite_members(metrics)`) is False, or a leaf of its
  parameters or optimizer states is not finite; it ranks below every healthy member, is
  replaced whatever the fraction, and is flagged (`Population.nonfinite`). So the members
  replaced are the worst max(q, unhealthy) ones: broken members fill the bottom first.
  Ties keep slot order (a stable sort): the result is a function of scores and key alone.
* Quantiles: q = max(1, floor(fraction x N)) members (0 when N = 1); fraction <= 0.5.
  The bottom q, and every unhealthy member, take a copy of a parent drawn uniformly from
  the healthy members among the top q. Parents are never replaced, and the top q are
  untouched (bit for bit). If no member of the top q is healthy, nothing is replaced.
* What is copied: the parent's parameters and both optimizer states (Adam moments
  included: the child continues the parent's optimisation, not a cold start). Not
  copied: the child's environments (env states, observations, episode returns), its RNG
  key and its counters stay its own, so a child explores other data than its parent and
  the two diverge from the first step. The recurrent state is not copied either (it
  summarises the child's own envs' histories); instead the child's `carry.reset` flags are
  set, so its new network starts every env's memory fresh, as at an episode start, while
  the episodes themselves go on. The PPO update replays from the same flags, so the
  update stays consistent with the rollout.
* Explore: each hyperparameter named in `bounds` is the parent's times a factor drawn
  uniformly from `perturb` (x0.8 or x1.2), or, with probability `resample_prob` (per
  member and hyperparameter), drawn log-uniformly within its bounds; then clamped to
  them. `gamma` and `gae_lambda` are perturbed and sampled through 1 - x (the horizon),
  since 0.99 x 1.2 is no discount at all (`COMPLEMENT`). Hyperparameters not named in
  `bounds` are inherited unchanged.
* Bookkeeping: a child is a new model: a fresh id (`next_id` counts up), its parent the
  parent's id, its generation the parent's plus one, `copies` 0; the parent's `copies`
  counts its children. `replaced`, `source` (the parent's slot, -1) and `nonfinite`
  describe the latest call, `interval` counts calls.
* Randomness: the PBT key is `Population.key`, split on every call, so the same
  population and scores give the same result, and a checkpointed population resumes the
  same PBT stream.

`python -m jaxtrade.population` (`jaxtrade.population_run`) is the command: the host loop
of intervals, population.jsonl, checkpoints of the whole population and --resume.

With a schedule (`[run] schedule`, runtime hyperparameters only: the population is one
program, so `jaxtrade.population_run` refuses phases that change shapes), the members
train through `Trainer.iterate_member`: a member's own value of a hyperparameter the
schedule controls is a factor on the schedule, value / the config's, applied as an
adjustment rule's factor is (within `jaxtrade.adjust.SANE`), and the member keeps its own
value, which PBT perturbs and copies as any other. A member at the config's values follows
the schedule exactly. Its phases end as planned (no plateau transitions).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxtrade import parallel
from jaxtrade.trainer import HORIZON_KEYS, HPARAM_NAMES, HParams, Trainer, TrainState

# Where each runtime hyperparameter may go under PBT: (lowest, highest). Perturbations and
# resamples are clamped to these, the initial log-uniform samples too, and a resample draws
# log-uniformly between them (through 1 - x for `COMPLEMENT`). Lower bounds are positive
# because perturbations multiply (an entropy coefficient of 0 would stay 0 for ever).
BOUNDS: dict[str, tuple[float, float]] = {
    "actor_lr": (1e-5, 1e-2),
    "critic_lr": (1e-5, 1e-2),
    "ent_coef": (1e-5, 0.1),
    "clip": (0.05, 0.4),
    "vf_coef": (0.1, 2.0),
    "gae_lambda": (0.8, 0.99),  # horizon 1 - lambda in [0.01, 0.2]
    "gamma": (0.9, 0.999),  # horizon 1 / (1 - gamma) from 10 to 1000 steps
    "max_grad_norm": (0.1, 10.0),
}
# Hyperparameters perturbed and sampled as 1 - x: a factor scales the horizon, not x.
COMPLEMENT = HORIZON_KEYS  # gamma, gae_lambda
PERTURB = (0.8, 1.2)  # the reference's +-20%
RESAMPLE_PROB = 0.05  # per member and hyperparameter, instead of a perturbation
FRACTION = 0.2  # the reference's bottom / top 20%
INIT_SPREAD = 2.0  # initial samples: the config's value x / exp(U(-log 2, log 2))


@struct.dataclass
class Population:
    """N members and the PBT state; every per-member array has the member axis first."""

    members: TrainState  # every leaf [N, ...]
    key: jax.Array  # PBT key: parent draws, perturbations, resamples
    ids: jax.Array  # int32 [N], the model each slot holds (unique over the run)
    parents: jax.Array  # int32 [N], the id of the model it was copied from; -1: a founder
    generation: jax.Array  # int32 [N], 0 for founders, a parent's + 1 for a copy
    copies: jax.Array  # int32 [N], how many times the slot's model has been copied
    replaced: jax.Array  # bool [N], replaced by the latest exploit_explore
    source: jax.Array  # int32 [N], the slot it was copied from then; -1: not replaced
    nonfinite: jax.Array  # bool [N], flagged unhealthy by the latest exploit_explore
    next_id: jax.Array  # int32 [], the id the next copy gets
    interval: jax.Array  # int32 [], exploit_explore calls so far

    @property
    def size(self) -> int:
        return self.ids.shape[0]


def quantile_size(n: int, fraction: float) -> int:
    """Members in the bottom (and top) quantile: max(1, floor(fraction x n)), 0 for n = 1.

    Raises:
      ValueError: fraction is not in (0, 0.5].
    """
    if not 0 < fraction <= 0.5:
        raise ValueError(f"PBT fraction must be in (0, 0.5], got {fraction}")
    return 0 if n < 2 else max(1, int(math.floor(fraction * n + 1e-9)))


def _to_search(name: str, x):
    """The space factors scale: x, or 1 - x for `COMPLEMENT`."""
    return 1.0 - x if name in COMPLEMENT else x


def _search_bounds(name: str, bounds: Mapping[str, tuple[float, float]]) -> tuple[float, float]:
    lo, hi = bounds[name]
    a, b = _to_search(name, lo), _to_search(name, hi)
    return min(a, b), max(a, b)


def _log_uniform(key: jax.Array, lo, hi, shape) -> jax.Array:
    u = jax.random.uniform(key, shape, jnp.float32)
    return jnp.exp(jnp.log(lo) + u * (jnp.log(hi) - jnp.log(lo)))


def sample_hparams(key: jax.Array, base: HParams, n: int, spread: float = INIT_SPREAD,
                   bounds: Mapping[str, tuple[float, float]] = BOUNDS) -> HParams:
    """N members' hyperparameters around `base` (scalars): each one named in `bounds` is
    base x exp(U(-log spread, log spread)) (through 1 - x for `COMPLEMENT`), clamped to
    its bounds; member 0 keeps `base` (clamped), so the population contains the single
    run's settings. Others are `base` for all.

    Returns: HParams with float32 [N] leaves.
    """
    values = {}
    for i, name in enumerate(HPARAM_NAMES):
        v = jnp.broadcast_to(jnp.asarray(getattr(base, name), jnp.float32), (n,))
        if name in bounds:
            lo, hi = bounds[name]
            t = _to_search(name, v)
            factor = _log_uniform(jax.random.fold_in(key, i), 1.0 / spread, spread, (n,))
            v = _to_search(name, t * factor.at[0].set(1.0))
            v = jnp.clip(v, lo, hi)
        values[name] = v.astype(jnp.float32)
    return HParams(**values)


def init_population(trainer: Trainer, key: jax.Array, n: int,
                    hparams: HParams | Mapping[str, Sequence[float]] | None = None,
                    spread: float = INIT_SPREAD,
                    bounds: Mapping[str, tuple[float, float]] = BOUNDS,
                    env_params=None, env_axes=None) -> Population:
    """N founders, each `trainer.init` of its own key (own parameters, envs, RNG).

    Args:
      hparams: the members' hyperparameters: an HParams with [N] leaves, or a mapping from
        some names to N values each (the others at the config's values; `{}`: every member
        at the config's values); None: sampled around the config's values
        (`sample_hparams`, with `spread` and `bounds`).
      env_params, env_axes: the members' env params and their `vmap` axes (e.g. a
        walk-forward run's, whose start bounds differ per member, `jaxtrade.walk_forward`);
        default the trainer's, shared.

    Returns: the population, every member leaf [N, ...], ids 0..N-1, no parents.
    """
    if n < 1:
        raise ValueError(f"a population needs at least 1 member, got {n}")
    if hparams is not None and not isinstance(hparams, HParams):
        unknown = set(hparams) - set(HPARAM_NAMES)
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)}; valid: "
                             f"{HPARAM_NAMES}")
        hparams = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
        for k, v in hparams.items():
            if v.shape != (n,):
                raise ValueError(f"hyperparameter {k!r}: {v.size} values for {n} members")
    key_members, key_hparams, key_pbt = jax.random.split(key, 3)
    members = _init_members(trainer.init, jax.random.split(key_members, n),
                            trainer.env_params if env_params is None else env_params, env_axes)
    base = members.hparams  # the config's values, [N]
    if hparams is None:
        hp = sample_hparams(key_hparams, jax.tree.map(lambda x: x[0], base), n, spread, bounds)
    elif isinstance(hparams, HParams):
        hp = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (n,)), hparams)
    else:
        hp = base.replace(**hparams)

    # Each array its own buffer (numpy -> device): the population program donates them all,
    # and XLA refuses to donate one buffer twice (jnp.zeros may hand out a shared constant).
    def fresh(x):
        return jax.device_put(np.array(x))

    pop = Population(
        members=members.replace(hparams=jax.tree.map(lambda x: fresh(x), hp)),
        key=key_pbt,
        ids=fresh(np.arange(n, dtype=np.int32)),
        parents=fresh(np.full((n,), -1, np.int32)),
        generation=fresh(np.zeros((n,), np.int32)),
        copies=fresh(np.zeros((n,), np.int32)),
        replaced=fresh(np.zeros((n,), bool)),
        source=fresh(np.full((n,), -1, np.int32)),
        nonfinite=fresh(np.zeros((n,), bool)),
        next_id=fresh(np.int32(n)),
        interval=fresh(np.int32(0)),
    )
    return jax.device_put(pop, shardings(trainer))


def shardings(trainer: Trainer) -> Population:
    """Where each array of a population lives on `trainer.mesh` (module docstring: member
    leaves split over the member groups, the rest replicated; everything replicated on one
    device or a 1-D mesh): a `Population` of shardings, for `jax.device_put` and
    `out_shardings`. Also right for a population in saved form (raw key data)."""
    mesh = trainer.mesh
    whole = parallel.replicated(mesh)
    if mesh.size == 1 or parallel.MEMBERS not in mesh.shape:
        members = jax.tree.map(lambda _: whole, trainer.state_shardings)
    else:
        members = jax.tree.map(lambda s: parallel.members_sharding(mesh, s),
                               trainer.state_shardings)
    return Population(members=members, key=whole, ids=whole, parents=whole, generation=whole,
                      copies=whole, replaced=whole, source=whole, nonfinite=whole,
                      next_id=whole, interval=whole)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _init_members(init: Callable, keys: jax.Array, env_params, env_axes=None) -> TrainState:
    """`init` of each key, stacked (one compile per trainer and population size)."""
    return jax.vmap(init, in_axes=(0, env_axes))(keys, env_params)


@jax.jit
def member(pop: Population, i: int) -> TrainState:
    """Member i's `TrainState` alone (leaves without the member axis)."""
    return jax.tree.map(lambda x: x[i], pop.members)


def train_population(trainer: Trainer, k: int, env_axes=None
                     ) -> Callable[[Population, Any], tuple[Population, dict]]:
    """The population program: k PPO iterations of every member, one `jit`.

    Args:
      env_axes: `vmap` in_axes of the env params: None (default), shared by all members;
        or a tree like them with 0 where a leaf has a member axis (a walk-forward run's
        per-member start bounds, `jaxtrade.walk_forward.member_axes`).

    Returns: `program(pop, env_params) -> (pop, metrics)`, metrics leaves [k, N, ...]
    (the trainer's per-iteration metrics, per member); `pop` is donated. Build it once
    per k: each call of this function is a new program (and a new trace).
    """
    grouped = parallel.MEMBERS in trainer.mesh.shape
    one = (trainer.iterate if trainer.schedule is None else  # (its ends: a resume's)
           functools.partial(trainer.iterate_member, schedule=trainer.schedule))
    step = jax.vmap(one, in_axes=(0, env_axes),
                    spmd_axis_name=parallel.MEMBERS if grouped else None)

    def program(pop: Population, env_params) -> tuple[Population, dict]:
        members, metrics = jax.lax.scan(lambda s, _: step(s, env_params), pop.members, None,
                                        length=k)
        return pop.replace(members=members), metrics

    # Metrics [k, N, ...] stay on their members' devices (the host fetches them): nothing
    # crosses between member groups while they train.
    metrics_at = (jax.sharding.NamedSharding(trainer.mesh, jax.sharding.PartitionSpec(
        None, parallel.MEMBERS)) if grouped and trainer.mesh.size > 1
        else parallel.replicated(trainer.mesh))
    return jax.jit(program, donate_argnums=0, out_shardings=(shardings(trainer), metrics_at))


@struct.dataclass
class BestStates:
    """Per slot, the best-scored model state the slot has held: what validation chooses, as
    a single run keeps its best checkpoint (a member's last state may score far below an
    earlier one of its own). The learned parts only (no envs): every leaf [N, ...]."""

    params: Any
    actor_opt: Any
    critic_opt: Any
    hparams: HParams
    iteration: jax.Array  # int32 [N], the member's iterations at that state
    score: jax.Array  # float32 [N], its validation score; -inf: none yet
    interval: jax.Array  # int32 [N], the interval it was scored at (1-based); 0: none
    ids: jax.Array  # int32 [N], the model's id

    @staticmethod
    def of(members: TrainState, score, interval, ids) -> BestStates:
        return BestStates(params=members.params, actor_opt=members.actor_opt,
                          critic_opt=members.critic_opt, hparams=members.hparams,
                          iteration=members.iteration, score=score, interval=interval,
                          ids=ids)


def best_shardings(trainer: Trainer) -> BestStates:
    """Where `BestStates` live: as the population's members (`shardings`), the rest
    replicated."""
    placed, whole = shardings(trainer).members, parallel.replicated(trainer.mesh)
    return BestStates.of(placed, whole, whole, whole)


def init_best(pop: Population) -> BestStates:
    """Nothing kept yet: scores -inf (copies of the members' leaves, so that donating the
    population never frees them)."""
    n = pop.size
    return BestStates.of(jax.tree.map(jnp.copy, pop.members),
                         jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.int32),
                         jnp.full((n,), -1, jnp.int32))


def keep_best(best: BestStates, pop: Population, scores: jax.Array) -> BestStates:
    """`best` with every slot whose (finite) score beats its kept one replaced by the
    slot's state as scored (`pop` before exploit/explore), at interval `pop.interval + 1`."""
    better = jnp.isfinite(scores) & (scores > best.score)

    def pick(new, old):
        return jnp.where(better.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

    scored = BestStates.of(pop.members, scores.astype(jnp.float32),
                           jnp.broadcast_to(pop.interval + 1, better.shape), pop.ids)
    return jax.tree.map(pick, scored, best)


@jax.jit
def finite_members(metrics: dict) -> jax.Array:
    """Members whose metrics [k, N, ...] are all finite and whose `params_finite` flags are
    all set, over the k iterations: bool [N]."""
    ok = None
    for x in jax.tree.leaves(metrics):
        x = jnp.asarray(x)
        if x.dtype == jnp.bool_:
            good = x
        elif jnp.issubdtype(x.dtype, jnp.floating):
            good = jnp.isfinite(x)
        else:
            continue
        good = jnp.moveaxis(good, 1, 0).reshape(good.shape[1], -1).all(axis=1)
        ok = good if ok is None else ok & good
    return ok


@jax.jit
def _members_finite(members: TrainState) -> jax.Array:
    """bool [N]: every leaf of a member's parameters and optimizer states is finite."""
    n = members.iteration.shape[0]
    ok = jnp.ones((n,), bool)
    for x in jax.tree.leaves((members.params, members.actor_opt, members.critic_opt)):
        if jnp.issubdtype(x.dtype, jnp.floating):
            ok = ok & jnp.isfinite(x).reshape(n, -1).all(axis=1)
    return ok


def _perturbed(parent: HParams, n: int, key_factor: jax.Array, key_resample: jax.Array,
               key_value: jax.Array, perturb: tuple[float, ...], resample_prob: float,
               bounds: Mapping[str, tuple[float, float]]) -> dict[str, jax.Array]:
    """name -> float32 [N]: each hyperparameter named in `bounds`, from the parents' values,
    perturbed by a factor of `perturb` (in the search space: 1 - x for `COMPLEMENT`) or, with
    `resample_prob`, resampled log-uniformly within its bounds; clamped to them.

    The hyperparameter at position i of `HPARAM_NAMES` draws from the three keys folded in
    with i. The draws of all of them are one vmapped set of ops (the values equal drawing
    them one by one; compiling a loop of them took most of the PBT step's compile)."""
    names = [name for name in HPARAM_NAMES if name in bounds]
    if not names:
        return {}
    index = jnp.asarray([HPARAM_NAMES.index(name) for name in names], jnp.uint32)
    search = np.asarray([_search_bounds(name, bounds) for name in names], np.float32)
    clamp = np.asarray([bounds[name] for name in names], np.float32)
    complement = np.asarray([name in COMPLEMENT for name in names])[:, None]
    perturb = jnp.asarray(perturb, jnp.float32)

    def draws(i, slo, shi):
        factor = jax.random.choice(jax.random.fold_in(key_factor, i), perturb, (n,))
        resample = jax.random.bernoulli(jax.random.fold_in(key_resample, i), resample_prob,
                                        (n,))
        return factor, resample, _log_uniform(jax.random.fold_in(key_value, i), slo, shi, (n,))

    factor, resample, fresh = jax.vmap(draws)(index, search[:, 0], search[:, 1])  # [H, N]
    inherited = jnp.stack([getattr(parent, name) for name in names])
    t = jnp.where(resample, fresh, jnp.where(complement, 1.0 - inherited, inherited) * factor)
    t = jnp.clip(jnp.where(complement, 1.0 - t, t), clamp[:, :1], clamp[:, 1:])
    return dict(zip(names, t, strict=True))


def exploit_explore(pop: Population, scores: jax.Array, healthy: jax.Array | None = None, *,
                    fraction: float = FRACTION, perturb: Sequence[float] = PERTURB,
                    resample_prob: float = RESAMPLE_PROB,
                    bounds: Mapping[str, tuple[float, float]] = BOUNDS) -> Population:
    """One PBT step (module docstring): the bottom `fraction` and every unhealthy member
    become perturbed copies of top-`fraction` members. Pure; jit it with
    `make_exploit_explore`.

    Args:
      scores: float [N], validation scores, higher is better.
      healthy: bool [N] or None, False for a member known to be broken (e.g.
        `finite_members` of its training metrics).

    Returns: the population after the step (its PBT key advanced).
    """
    n = pop.size
    q = quantile_size(n, fraction)
    slots = jnp.arange(n, dtype=jnp.int32)
    key, key_parent, key_factor, key_resample, key_value = jax.random.split(pop.key, 5)

    ok = jnp.isfinite(scores) & _members_finite(pop.members)
    if healthy is not None:
        ok = ok & healthy
    ranked = jnp.where(ok, scores.astype(jnp.float32), -jnp.inf)
    order = jnp.argsort(ranked, stable=True)  # worst first
    rank = jnp.zeros((n,), jnp.int32).at[order].set(slots)
    top = order[::-1][:q]  # best first; the healthy ones come first
    n_good = ok[top].sum()
    pick = jnp.floor(jax.random.uniform(key_parent, (n,)) * n_good).astype(jnp.int32)
    parent = top[jnp.minimum(pick, max(q - 1, 0))] if q else slots
    replace = ((rank < q) | ~ok) & (n_good > 0)
    src = jnp.where(replace, parent, slots)

    def take(x):
        return x[src]

    m = pop.members
    hp_parent = jax.tree.map(take, m.hparams)
    perturbed = _perturbed(hp_parent, n, key_factor, key_resample, key_value,
                           tuple(perturb), resample_prob, bounds)
    new_hp = {name: jnp.where(replace, perturbed.get(name, getattr(hp_parent, name)),
                              getattr(m.hparams, name)).astype(jnp.float32)
              for name in HPARAM_NAMES}

    carry = m.carry.replace(reset=m.carry.reset | replace[:, None])
    members = m.replace(
        params=jax.tree.map(take, m.params),
        actor_opt=jax.tree.map(take, m.actor_opt),
        critic_opt=jax.tree.map(take, m.critic_opt),
        carry=carry,
        hparams=HParams(**new_hp),
    )
    new_ids = pop.next_id + jnp.cumsum(replace).astype(jnp.int32) - 1
    children = jnp.zeros((n,), jnp.int32).at[src].add(replace.astype(jnp.int32))
    return pop.replace(
        members=members,
        key=key,
        ids=jnp.where(replace, new_ids, pop.ids),
        parents=jnp.where(replace, pop.ids[src], pop.parents),
        generation=jnp.where(replace, pop.generation[src] + 1, pop.generation),
        copies=jnp.where(replace, 0, pop.copies) + children,
        replaced=replace,
        source=jnp.where(replace, src, -1),
        nonfinite=~ok,
        next_id=pop.next_id + replace.sum().astype(jnp.int32),
        interval=pop.interval + 1,
    )


def continue_population(trainer: Trainer, key: jax.Array, learned: Mapping[str, Any],
                        hparams: HParams | Mapping[str, Sequence[float]]) -> Population:
    """N founders that continue trained models: `init_population`'s members (own envs, RNG
    and counters from `key`) with `learned`'s parameters and optimizer states in place of
    the fresh ones (Adam moments included: the optimisation goes on where it stopped).

    Args:
      learned: {"params", "actor_opt", "critic_opt"}, each a tree like the trainer's
        state's with a leading member axis [N, ...] (e.g. `jaxtrade.archive.read_learned`
        of N archived models, stacked).
      hparams: the members' hyperparameters, as `init_population` takes them.

    Returns: the population, ids 0..N-1, no parents (the caller links them to the models
    they continue).
    """
    parts = ("params", "actor_opt", "critic_opt")
    n = jax.tree.leaves(learned["params"])[0].shape[0]
    pop = init_population(trainer, key, n, hparams=hparams)
    placed = shardings(trainer).members
    members = pop.members
    for part in parts:
        fresh = getattr(members, part)
        given = jax.tree.unflatten(jax.tree.structure(fresh), jax.tree.leaves(learned[part]))
        for g, f in zip(jax.tree.leaves(given), jax.tree.leaves(fresh), strict=True):
            if tuple(np.shape(g)) != tuple(f.shape):
                raise ValueError(f"{part}: a leaf of shape {tuple(np.shape(g))} where the "
                                 f"population has {tuple(f.shape)}")
        # own buffers (numpy -> device): the population program donates them
        members = members.replace(**{part: jax.tree.map(
            lambda g, f, where: jax.device_put(np.array(g, dtype=f.dtype), where), given, fresh,
            getattr(placed, part))})
    return pop.replace(members=members)


def close_interval(pop: Population, scores: jax.Array, healthy: jax.Array | None = None
                   ) -> Population:
    """An interval's bookkeeping without exploit/explore (the last interval of a run whose
    every final member is kept, e.g. a league's): nothing replaced, unhealthy members
    flagged as `exploit_explore` flags them, `interval` counted."""
    n = pop.size
    ok = jnp.isfinite(scores) & _members_finite(pop.members)
    if healthy is not None:
        ok = ok & healthy
    return pop.replace(replaced=jnp.zeros((n,), bool), source=jnp.full((n,), -1, jnp.int32),
                       nonfinite=~ok, interval=pop.interval + 1)


def make_exploit_explore(fraction: float = FRACTION, perturb: Sequence[float] = PERTURB,
                         resample_prob: float = RESAMPLE_PROB,
                         bounds: Mapping[str, tuple[float, float]] = BOUNDS,
                         mesh: jax.sharding.Mesh | None = None,
                         placement: Population | None = None) -> Callable:
    """`exploit_explore` with these settings, jitted: `fn(pop, scores, healthy=None)`.
    Build it once per run; it compiles once for a population size. Pass the population's
    `placement` (`shardings(trainer)`), or on one device the trainer's `mesh`, so that its
    output is placed as `train_population`'s (whose next call would otherwise trace again
    for the other placement)."""
    out = placement if placement is not None else (
        None if mesh is None else parallel.replicated(mesh))
    return jax.jit(functools.partial(exploit_explore, fraction=fraction,
                                     perturb=tuple(perturb), resample_prob=resample_prob,
                                     bounds=dict(bounds)),
                   out_shardings=out)


def _number(x: float) -> float | None:
    """A float for JSON, None where it is not finite (JSON has no NaN)."""
    x = float(x)
    return x if math.isfinite(x) else None


def lineage_records(before: Population, after: Population, scores, steps_per_iteration: int
                    ) -> list[dict]:
    """Host-only: one JSON-able record per slot for the interval that `before` was scored
    on (`scores` [N]) and `after = exploit_explore(before, scores, ...)` acted on, for
    `population.jsonl`.

    Each record describes the model that was scored: `interval` (1-based), `slot`, `id`,
    `parent` (None for a founder), `generation`, `timesteps` (its slot's iterations x
    `steps_per_iteration`), `score` (None when not finite), `hparams` (what it trained
    with), `nonfinite`, and `replaced_by`: None, or the copy that took its slot (`id`,
    `parent`, `source_slot`, `generation`, `hparams`). A model's history is the records
    with its id; a copy's first record names its parent.
    """
    b = jax.device_get((before.ids, before.parents, before.generation,
                        before.members.iteration, before.members.hparams))
    a = jax.device_get((after.ids, after.parents, after.generation, after.replaced,
                        after.source, after.nonfinite, after.interval, after.members.hparams))
    ids, parents, generation, iteration, hp = b
    new_ids, new_parents, new_generation, replaced, source, nonfinite, interval, new_hp = a
    scores = np.asarray(jax.device_get(scores))

    def hparams(tree, i):
        return {k: float(getattr(tree, k)[i]) for k in HPARAM_NAMES}

    records = []
    for i in range(len(ids)):
        copy = None
        if replaced[i]:
            copy = {"id": int(new_ids[i]), "parent": int(new_parents[i]),
                    "source_slot": int(source[i]), "generation": int(new_generation[i]),
                    "hparams": hparams(new_hp, i)}
        records.append({
            "interval": int(interval),
            "slot": i,
            "id": int(ids[i]),
            "parent": None if parents[i] < 0 else int(parents[i]),
            "generation": int(generation[i]),
            "timesteps": int(iteration[i]) * int(steps_per_iteration),
            "score": _number(scores[i]),
            "hparams": hparams(hp, i),
            "nonfinite": bool(nonfinite[i]),
            "replaced_by": copy,
        })
    return records


if __name__ == "__main__":  # python -m jaxtrade.population: the command (host-only)
    import os
    import sys

    from jaxtrade.population_run import main
    from jaxtrade.watchdog import enable_stack_dumps

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    enable_stack_dumps()
    sys.exit(main())

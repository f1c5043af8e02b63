"""On-device PBT: member i of the population program is the single run of member i, members
differ only by their hyperparameters' effect, exploit/explore on synthetic scores (exact
copies of top members, perturbations within bounds, the best untouched, broken members
replaced), determinism given the PBT key, no retrace across intervals, lineage records."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade import parallel
from jaxtrade.config import Config, resolve, with_values
from jaxtrade.population import (
    BOUNDS,
    COMPLEMENT,
    exploit_explore,
    finite_members,
    init_best,
    init_population,
    keep_best,
    lineage_records,
    make_exploit_explore,
    member,
    quantile_size,
    train_population,
)
from jaxtrade.trainer import HPARAM_NAMES, make_train
from tests.test_trainer import TINY

K = 2  # iterations per population call


@pytest.fixture(scope="module")
def tiny(small_market):
    cfg = resolve(with_values(Config(), **TINY), "cpu")
    return make_train(cfg, small_market)


@pytest.fixture(scope="module")
def program(tiny):
    return train_population(tiny, K)


@pytest.fixture(scope="module")
def big(tiny):
    """10 members, not trained: exploit/explore's synthetic-score tests."""
    return init_population(tiny, jax.random.key(7), 10)


def numbers(x):
    return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x)


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(numbers(x), numbers(y), equal_nan=True)
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_init_population(tiny):
    pop = init_population(tiny, jax.random.key(0), 4)
    assert pop.size == 4 and pop.members.iteration.shape == (4,)
    np.testing.assert_array_equal(pop.ids, [0, 1, 2, 3])
    np.testing.assert_array_equal(pop.parents, [-1] * 4)
    # members differ in parameters and envs (own keys)
    assert not leaves_equal(member(pop, 0).params, member(pop, 1).params)
    assert not leaves_equal(member(pop, 0).carry.obs, member(pop, 1).carry.obs)
    cfg = tiny.config.ppo
    for name in BOUNDS:  # dropout is not sampled: every member has the config's
        v = np.asarray(getattr(pop.members.hparams, name))
        lo, hi = BOUNDS[name]
        assert v.dtype == np.float32 and v.shape == (4,)
        assert np.all((v >= np.float32(lo)) & (v <= np.float32(hi))), name
        assert v[0] == pytest.approx(np.clip(getattr(cfg, name), lo, hi), rel=1e-6), name
        t = 1 - v if name in COMPLEMENT else v
        t0 = 1 - v[0] if name in COMPLEMENT else v[0]
        assert np.all((t >= t0 / 2 * (1 - 1e-5)) & (t <= t0 * 2 * (1 + 1e-5))), name
    assert set(BOUNDS) == set(HPARAM_NAMES) - {"dropout"}
    np.testing.assert_allclose(pop.members.hparams.dropout, tiny.config.network.dropout)
    assert len(set(np.asarray(pop.members.hparams.actor_lr).tolist())) == 4
    given = init_population(tiny, jax.random.key(0), 2, {"actor_lr": [1e-4, 1e-3]})
    np.testing.assert_allclose(given.members.hparams.actor_lr, [1e-4, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(given.members.hparams.gamma, [cfg.gamma] * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        init_population(tiny, jax.random.key(0), 2, {"lr": [1.0, 2.0]})
    with pytest.raises(ValueError, match="1 values for 2 members"):
        init_population(tiny, jax.random.key(0), 2, {"clip": [0.1]})


def test_member_i_equals_its_single_run(tiny, program):
    # 3 members, as the next test's: one population program for both.
    pop = init_population(tiny, jax.random.key(1), 3,
                          {"actor_lr": [3e-4, 1e-3, 5e-4], "ent_coef": [0.0, 0.05, 0.02],
                           "gamma": [0.99, 0.9, 0.95]})
    singles = [member(pop, i) for i in range(3)]
    trained, metrics = program(parallel.copy(pop), tiny.env_params)  # it donates its input
    assert metrics["policy_loss"].shape == (K, 3)
    assert metrics["action_freq"].shape == (K, 3, tiny.env.num_actions)
    np.testing.assert_array_equal(trained.members.iteration, [K] * 3)
    for i, state in enumerate(singles):
        state, m = tiny.run(tiny.place(state), K)
        chex.assert_trees_all_close(member(trained, i).params, state.params, rtol=1e-5,
                                    atol=1e-6)
        chex.assert_trees_all_close(member(trained, i).actor_opt, state.actor_opt, rtol=1e-4,
                                    atol=1e-6)
        for key in ("policy_loss", "value_loss", "entropy", "episode_return_mean", "gamma"):
            np.testing.assert_allclose(metrics[key][:, i], m[key], rtol=1e-4, atol=1e-6,
                                       err_msg=key)
    assert bool(finite_members(metrics).all())


def test_members_differ_only_by_their_hyperparameters(tiny, program):
    """Three copies of one member (same params, envs, RNG): the two with the same
    hyperparameters stay bit-identical, the one with a 10x learning rate diverges."""
    pop = init_population(tiny, jax.random.key(2), 3, {"actor_lr": [3e-4, 3e-4, 3e-3]})
    first = jax.jit(lambda m: jax.tree.map(lambda x: jnp.stack([x[0]] * 3), m))
    pop = pop.replace(members=first(pop.members).replace(hparams=pop.members.hparams))
    trained, metrics = program(pop, tiny.env_params)
    a, b, c = (member(trained, i).params for i in range(3))
    assert leaves_equal(a, b)
    gap = max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a),
                                                           jax.tree.leaves(c), strict=True))
    assert gap > 1e-4
    np.testing.assert_array_equal(metrics["policy_loss"][:, 0], metrics["policy_loss"][:, 1])
    assert not np.array_equal(metrics["policy_loss"][-1, 0], metrics["policy_loss"][-1, 2])


def test_quantile_size():
    assert [quantile_size(n, 0.2) for n in (1, 2, 4, 5, 10, 16, 20)] == [0, 1, 1, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="fraction"):
        quantile_size(10, 0.6)


def test_bottom_copy_top_exactly_and_top_untouched(big):
    scores = jnp.asarray([5.0, 0.1, 7.0, 3.0, 9.0, 2.0, 0.0, 8.0, 4.0, 6.0])
    fn = make_exploit_explore(resample_prob=0.0)
    after = fn(big, scores)
    bottom, top = [6, 1], [4, 7]  # scores 0.0, 0.1 and 9.0, 8.0
    np.testing.assert_array_equal(after.replaced, np.isin(np.arange(10), bottom))
    np.testing.assert_array_equal(after.nonfinite, [False] * 10)
    for i in range(10):
        if i in bottom:
            continue
        assert leaves_equal(member(after, i), member(big, i)), i  # untouched, bit for bit
    for i in bottom:
        src = int(after.source[i])
        assert src in top
        child, parent, old = member(after, i), member(big, src), member(big, i)
        assert leaves_equal(child.params, parent.params)
        assert leaves_equal(child.actor_opt, parent.actor_opt)
        assert leaves_equal(child.critic_opt, parent.critic_opt)
        # its own envs and RNG, a fresh recurrent memory
        assert leaves_equal(child.carry.env_state, old.carry.env_state)
        assert leaves_equal(child.rng, old.rng)
        assert bool(child.carry.reset.all())
        assert child.hparams.dropout == parent.hparams.dropout  # not perturbed: inherited
        for name in BOUNDS:  # the parent's x0.8 or x1.2 (of 1 - x for gamma, lambda)
            new, was = float(getattr(child.hparams, name)), float(getattr(parent.hparams, name))
            lo, hi = BOUNDS[name]
            if name in COMPLEMENT:
                options = [1 - (1 - was) * f for f in (0.8, 1.2)]
            else:
                options = [was * f for f in (0.8, 1.2)]
            options = [min(max(o, lo), hi) for o in options]
            assert any(new == pytest.approx(o, rel=1e-5) for o in options), (name, new, was)
        assert int(after.parents[i]) == int(big.ids[src])
        assert int(after.generation[i]) == 1
    assert sorted(np.asarray(after.ids)[bottom].tolist()) == [10, 11]
    assert int(after.next_id) == 12 and int(after.interval) == 1
    np.testing.assert_array_equal(np.asarray(after.copies).sum(), 2)
    for s in top:
        assert int(after.copies[s]) == int((np.asarray(after.source) == s).sum())
    assert not leaves_equal(after.key, big.key)


def test_perturbations_are_clamped_and_resamples_stay_in_bounds(big):
    at_top = big.replace(members=big.members.replace(hparams=jax.tree.map(
        lambda x: x, big.members.hparams).replace(
        **{k: jnp.full((10,), BOUNDS[k][1], jnp.float32) for k in ("actor_lr", "clip")})))
    scores = jnp.arange(10.0)
    after = exploit_explore(at_top, scores, resample_prob=0.0)
    for i in (0, 1):
        for k in ("actor_lr", "clip"):
            v = float(getattr(after.members.hparams, k)[i])
            assert v in (pytest.approx(BOUNDS[k][1]), pytest.approx(BOUNDS[k][1] * 0.8)), k
    fresh = exploit_explore(big, scores, resample_prob=1.0)
    for name in BOUNDS:
        v = np.asarray(getattr(fresh.members.hparams, name))[:2]
        lo, hi = BOUNDS[name]
        assert np.all((v >= np.float32(lo)) & (v <= np.float32(hi))), name
        parents = np.asarray(getattr(big.members.hparams, name))[np.asarray(fresh.source)[:2]]
        assert not np.allclose(v, parents * 0.8) and not np.allclose(v, parents * 1.2), name
    unbounded = exploit_explore(big, scores, resample_prob=0.0,
                                bounds={k: v for k, v in BOUNDS.items() if k != "gamma"})
    src = np.asarray(unbounded.source)[:2]
    np.testing.assert_array_equal(unbounded.members.hparams.gamma[:2],
                                  np.asarray(big.members.hparams.gamma)[src])


def test_perturbations_are_the_one_by_one_draws():
    """The hyperparameters' draws, vmapped in one set of ops, equal drawing them one by one
    (as exploit_explore did before), bit for bit, in a compiled program."""
    from jaxtrade import population as P
    from jaxtrade.trainer import HParams

    n, perturb, prob = 64, (0.8, 1.2), 0.3
    parent = HParams(**{name: jax.random.uniform(jax.random.key(i), (n,), jnp.float32, 0.01,
                                                 0.99) for i, name in enumerate(HPARAM_NAMES)})
    bounds = {k: v for k, v in BOUNDS.items() if k != "clip"}  # one left unperturbed
    keys = jax.random.split(jax.random.key(7), 3)

    def one_by_one(parent, keys):
        out = {}
        for i, name in enumerate(HPARAM_NAMES):
            if name not in bounds:
                continue
            lo, hi = bounds[name]
            slo, shi = P._search_bounds(name, bounds)
            factor = jax.random.choice(jax.random.fold_in(keys[0], i),
                                       jnp.asarray(perturb, jnp.float32), (n,))
            resample = jax.random.bernoulli(jax.random.fold_in(keys[1], i), prob, (n,))
            fresh = P._log_uniform(jax.random.fold_in(keys[2], i), slo, shi, (n,))
            t = jnp.where(resample, fresh, P._to_search(name, getattr(parent, name)) * factor)
            out[name] = jnp.clip(P._to_search(name, t), lo, hi)
        return out

    want = jax.jit(one_by_one)(parent, keys)
    got = jax.jit(lambda parent, keys: P._perturbed(parent, n, *keys, perturb, prob, bounds))(
        parent, keys)
    assert sorted(got) == sorted(want) and "clip" not in got and set(COMPLEMENT) <= set(got)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        assert not np.array_equal(got[name], getattr(parent, name)), name  # it did move


def test_nonfinite_members_are_replaced_and_flagged(big):
    def poison(x):
        return x.at[5].set(jnp.nan) if jnp.issubdtype(x.dtype, jnp.floating) else x

    params = big.members.params
    first = jax.tree.leaves(params)[0]
    path = jax.tree.structure(params)
    leaves = jax.tree.leaves(params)
    leaves[0] = poison(first)
    broken = big.replace(members=big.members.replace(params=jax.tree.unflatten(path, leaves)))
    scores = jnp.asarray([5.0, 1.0, 7.0, jnp.nan, 9.0, 100.0, 2.0, 8.0, 4.0, 6.0])
    healthy = jnp.ones((10,), bool).at[2].set(False)
    after = exploit_explore(broken, scores, healthy)
    flagged = [2, 3, 5]  # unhealthy metrics, NaN score, NaN parameter (its 100.0 ignored)
    np.testing.assert_array_equal(after.nonfinite, np.isin(np.arange(10), flagged))
    # they rank worst, so they are the bottom 2 and more: the healthy 1.0 and 2.0 stay
    replaced = flagged
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(after.replaced)), replaced)
    for i in replaced:
        assert int(after.source[i]) in (4, 7)
        assert bool(jnp.all(jnp.isfinite(jax.tree.leaves(member(after, i).params)[0])))
    assert int(after.next_id) == 13
    for record in lineage_records(broken, after, scores, 128):
        assert (record["score"] is None) == (record["slot"] in (3,))
        json.dumps(record)


def test_deterministic_given_the_pbt_key(big):
    scores = jnp.linspace(0.0, 1.0, 10)
    a = exploit_explore(big, scores, resample_prob=0.5)
    b = exploit_explore(big, scores, resample_prob=0.5)
    assert leaves_equal(a, b)
    other = exploit_explore(big.replace(key=jax.random.key(99)), scores, resample_prob=0.5)
    assert not leaves_equal(a.members.hparams, other.members.hparams)
    # the key advances: a second step draws anew
    c = exploit_explore(a, scores, resample_prob=0.5)
    assert not np.array_equal(np.asarray(c.members.hparams.actor_lr)[:2],
                              np.asarray(a.members.hparams.actor_lr)[:2])


def test_intervals_do_not_retrace_and_lineage_records(tiny):
    """Three intervals of train -> score -> exploit/explore: the population program and the
    exploit/explore program each trace once; records chain copies to their parents."""
    traces = []

    def counted(state, env_params):
        traces.append(1)
        return tiny.iterate(state, env_params)

    # The `program` fixture's shapes (3 members, K iterations): its compiled program loads
    # from the persistent cache (tracing `counted` still counts this program's traces).
    program = train_population(dataclasses.replace(tiny, iterate=counted), K)
    exploit = make_exploit_explore(resample_prob=0.1, mesh=tiny.mesh)
    pop = init_population(tiny, jax.random.key(3), 3)
    rows = []
    for _ in range(3):
        pop, metrics = program(pop, tiny.env_params)
        scores = metrics["episode_return_mean"][-1]  # stands in for a validation score
        before = pop
        pop = exploit(before, scores, finite_members(metrics))
        rows += lineage_records(before, pop, scores, tiny.steps_per_iteration)
    assert len(traces) == 1
    assert program._cache_size() == 1 and exploit._cache_size() == 1
    assert len(rows) == 9
    json.loads(json.dumps(rows))
    last = rows[-3:]
    assert [r["interval"] for r in last] == [3] * 3
    assert all(r["timesteps"] == 3 * K * tiny.steps_per_iteration for r in last)
    copies = [r for r in rows if r["replaced_by"] is not None]
    assert len(copies) == 3  # one (max(1, floor(0.2 x 3))) per interval
    ids_seen = {r["id"] for r in rows}
    for r in rows[3:]:
        if r["parent"] is not None:  # a copy: its parent was scored before
            assert r["parent"] in ids_seen and r["generation"] >= 1
    for r in copies:
        assert r["replaced_by"]["parent"] == rows[
            rows.index(r) - r["slot"] + r["replaced_by"]["source_slot"]]["id"]
        assert set(r["replaced_by"]["hparams"]) == set(HPARAM_NAMES)


SCHEDULE = """
[schedule]
description = "two phases of runtime hyperparameters"
[[phase]]
name = "warm"
end_fraction = 0.5
actor_lr = [1e-3, 5e-4]
ent_coef = 0.02
gamma = 0.97
[[phase]]
name = "cool"
end_fraction = 1.0
actor_lr = [5e-4, 1e-4]
ent_coef = 0.01
gamma = 0.98
"""


def test_members_scale_the_schedule(small_market, tmp_path):
    """With a schedule, a member's own value of a scheduled hyperparameter is a factor on
    it (value / the config's): the member at the config's values trains with the schedule
    exactly, as the single run does, one at 2x the config's actor_lr with 2x the scheduled
    rate (the ent_coef schedule at 0.5x, gamma's horizon 1 - gamma at 2x, as PBT scales
    it), and the members keep their own values (what PBT perturbs); a hyperparameter the
    schedule does not control is the member's own."""
    path = tmp_path / "schedule.toml"
    path.write_text(SCHEDULE)
    cfg = resolve(with_values(Config(), **TINY, iterations=4, schedule=str(path)), "cpu")
    trainer = make_train(cfg, small_market)
    base = cfg.ppo.actor_lr
    pop = init_population(trainer, jax.random.key(3), 2,
                          {"actor_lr": [base, 2 * base], "ent_coef": [cfg.ppo.ent_coef,
                                                                      0.5 * cfg.ppo.ent_coef],
                           "gamma": [cfg.ppo.gamma, 1 - 2 * (1 - cfg.ppo.gamma)],
                           "clip": [0.2, 0.3]})
    own = jax.device_get(pop.members.hparams)
    single = member(pop, 0)
    trained, metrics = train_population(trainer, 2)(parallel.copy(pop),
                                                 trainer.env_params)
    steps = trainer.steps_per_iteration
    for it in range(2):
        lr = float(trainer.schedule.values_at(it * steps)["actor_lr"])
        ent = float(trainer.schedule.values_at(it * steps)["ent_coef"])
        np.testing.assert_allclose(metrics["actor_lr"][it], [lr, 2 * lr], rtol=1e-6)
        np.testing.assert_allclose(metrics["ent_coef"][it], [ent, 0.5 * ent], rtol=1e-6)
        np.testing.assert_allclose(metrics["clip"][it], [0.2, 0.3], rtol=1e-6)
        gamma = float(trainer.schedule.values_at(it * steps)["gamma"])
        np.testing.assert_allclose(metrics["gamma"][it], [gamma, 1 - 2 * (1 - gamma)],
                                   rtol=1e-5)
    assert lr != float(trainer.schedule.values_at(0)["actor_lr"])  # the schedule moved
    assert leaves_equal(jax.device_get(trained.members.hparams), own)
    state, m = trainer.run(trainer.place(single), 2)
    np.testing.assert_array_equal(metrics["actor_lr"][:, 0], m["actor_lr"])
    chex.assert_trees_all_close(member(trained, 0).params, state.params, rtol=1e-5, atol=1e-6)


def test_members_evaluated_in_one_call_as_one_at_a_time(tiny):
    """`make_members_evaluator` (all members' validation walks vmapped in one call) gives
    every member the metrics and score of the single run's evaluator on its params."""
    pop = init_population(tiny, jax.random.key(4), 3)
    cfg = tiny.config
    health = [{"explained_variance": 0.1 * i, "entropy": 2.0 - i, "approx_kl": 0.01,
               "clip_frac": 0.1, "valid_actions": 12.0} for i in range(3)]
    both = jax.device_get(tiny.env.make_members_evaluator(
        tiny.network, cfg.env, cfg.run.seed, pop.members.params, 3)(pop.members.params,
                                                                     health))
    single = tiny.env.make_evaluator(tiny.network, cfg.env, cfg.run.seed,
                                     member(pop, 0).params)
    assert both["score"].shape == (3,)
    for i in range(3):
        alone = jax.device_get(single(member(pop, i).params, health[i]))
        assert set(alone) == set(both)
        for key, v in alone.items():
            np.testing.assert_allclose(both[key][i], v, rtol=1e-5, atol=1e-6, err_msg=key)
    assert len(set(np.round(both["score"], 6))) == 3  # three different policies


def test_each_slot_keeps_its_best_scored_state(tiny):
    """`keep_best`: a slot's state is kept when its finite score beats the kept one (ties
    and NaN keep the old), with its interval, id and iteration; the rest stay bit for bit."""
    pop = init_population(tiny, jax.random.key(5), 3)
    best = init_best(pop)
    assert np.all(np.isneginf(best.score)) and list(best.interval) == [0, 0, 0]
    best = keep_best(best, pop, jnp.asarray([1.0, np.nan, 3.0]))
    np.testing.assert_array_equal(best.interval, [1, 0, 1])
    np.testing.assert_array_equal(best.ids, [0, -1, 2])
    later = pop.replace(interval=pop.interval + 1, ids=pop.ids + 10, members=pop.members.replace(
        params=jax.tree.map(lambda x: x + 1, pop.members.params),
        iteration=pop.members.iteration + 7))
    best = keep_best(best, later, jnp.asarray([1.0, 2.0, 4.0]))  # slot 0: a tie, kept
    np.testing.assert_array_equal(best.score, [1.0, 2.0, 4.0])
    np.testing.assert_array_equal(best.interval, [1, 2, 2])
    np.testing.assert_array_equal(best.ids, [0, 11, 12])
    np.testing.assert_array_equal(best.iteration, [0, 7, 7])
    for x, first, second in zip(jax.tree.leaves(best.params),
                                jax.tree.leaves(pop.members.params),
                                jax.tree.leaves(later.members.params), strict=True):
        np.testing.assert_array_equal(x[0], first[0])
        np.testing.assert_array_equal(x[1:], second[1:])

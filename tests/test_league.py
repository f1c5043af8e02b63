"""`python -m jaxtrade.league`: two tiny rounds (in-process). Round 1, on an empty archive,
trains and archives explorers only; round 2 continues the best archived models from their
archived parameters (refiners at lr x 0.5, the champion at x 0.3) on a rolling window
mixed with older bars, archives the continuations linked to their parents, and rolls back
one that scores more than 10% below its parent; league.jsonl and the printed summary
follow. Bad flags and an archived model of other shapes are one-line errors."""

import contextlib
import io
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxtrade
from jaxtrade import archive, league, population_run
from jaxtrade import checkpoint as ckpt
from tests.cli import REPO
from tests.test_train import TINY

STEPS = 64  # TINY's 8 envs x 8 steps per iteration
LEAGUE = [*TINY, "--seed", "1", "--pbt-interval", STEPS, "--explorers", 2,
          "--explorer-timesteps", 2 * STEPS, "--refiners", 2, "--refiner-timesteps", 2 * STEPS,
          "--champions", 2, "--champion-timesteps", 2 * STEPS, "--window", 120,
          "--window-step", 20, "--recent-mix", 0.5, "-q"]
# (2 champions, not the reference's 1: the same program as the refiners', compiled once.)
# Validation scores are forced in round 2 so that both outcomes happen: every refiner
# beats its parent, the champions' continuations fall far below their parents.
SHIFT = {"refiners": 100.0, "champion": -100.0}


def run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = league.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def spied(tmp_path_factory):
    """Two rounds in one league: (league dir, archive, stdout of each round, the populations
    that round 2's continued categories started from, every new population's founders by
    round, every program call's data by round and category)."""
    import jaxtrade.population as population

    base = tmp_path_factory.mktemp("league")
    flags = [*LEAGUE, "--league-dir", base / "league", "--archive", base / "archive"]
    started, founders, calls = [], [], []
    original_init = population.init_population
    original_continue = population.continue_population
    original_evaluate = population_run.PopulationRun.evaluate
    original_program = league.LeagueRun.program

    def spy_init(trainer, key, n, hparams=None, *a, **kw):
        pop = original_init(trainer, key, n, hparams, *a, **kw)
        if hparams is None:  # new models (continue_population passes theirs)
            founders.append(jax.device_get((pop.members.params, pop.members.hparams)))
        return pop

    def spy(trainer, key, learned, hparams):
        pop = original_continue(trainer, key, learned, hparams)
        m = pop.members
        started.append(jax.device_get((m.params, m.hparams, m.actor_opt, m.critic_opt)))
        return pop

    def shifted(self, metrics):
        scores, vals, rows = original_evaluate(self, metrics)
        return scores + np.float32(SHIFT.get(self.plan.run_dir.name, 0.0)), vals, rows

    def program(self, k):
        fn = original_program(self, k)

        def call(pop, env_params):
            calls.append((self.plan.run_dir.parent.name, self.plan.run_dir.name, k,
                          *(int(getattr(env_params, f)) for f in ("start_min", "start_max",
                                                                   "end"))))
            return fn(pop, env_params)

        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(population, "init_population", spy_init)
        mp.setattr(league.LeagueRun, "program", program)
        code, first, err = run_cli(flags)
        assert code == 0, err
        mp.setattr(population, "continue_population", spy)
        mp.setattr(population_run.PopulationRun, "evaluate", shifted)
        code, second, err = run_cli(flags)
    assert code == 0, err
    assert "validated on other data" not in err  # the same validation range both rounds
    return (base / "league", archive.Archive(base / "archive"), first, second, started,
            founders, calls)


@pytest.fixture(scope="module")
def rounds(spied):
    return spied[:5]


def saved_tree(source) -> dict:
    """Every leaf of a checkpoint's saved state by its path name."""
    import orbax.checkpoint as ocp

    saved = ckpt._read(source, lambda m: m.restore(source.step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore())).state)
    return {ckpt._path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}


def entries_of(a, round_no, category):
    return [e for e in a.entries() if e.get("league", {}).get("round") == round_no
            and e["league"]["category"] == category]


def test_a_first_round_trains_and_archives_explorers_only(rounds):
    league_dir, a, first, _, _ = rounds
    assert "refiners  0 of the best 2 archived, lr x0.5 (none archived yet: skipped)" in first
    assert "== round 1: explorers (2 members, 128 timesteps each)" in first
    assert "== round 1: refiners" not in first
    explorers = entries_of(a, 1, "explorers")
    assert len(explorers) == 2 and all(e["val_score"] is not None for e in explorers)
    assert {e["source"]["run"] for e in explorers} == {
        str((league_dir / "round-001" / "explorers").absolute())}
    rec = league.read_records(league_dir)[0]
    assert rec["round"] == 1 and rec["status"] == "completed"
    assert list(rec["categories"]) == ["explorers"]
    c = rec["categories"]["explorers"]
    assert (c["members"], c["timesteps_per_member"], c["timesteps"]) == (2, 128, 256)
    assert sorted(c["archived"]) == sorted(e["id"] for e in explorers)
    best = max(explorers, key=lambda e: e["val_score"])
    assert rec["champion"]["id"] == best["id"] == rec["round_best"]["id"]
    # the first window: bars 1 .. 120 of the training range, no older bars before it
    assert rec["data"]["kind"] == "window" and rec["data"]["older"] is None
    assert rec["data"]["window"]["bars"] == 120
    assert c["iterations"] == {"recent": 2, "older": 0}


def test_continued_models_start_from_their_archived_parameters(rounds):
    league_dir, a, _, second, started = rounds
    rec = league.read_records(league_dir)[1]
    refiners, champion = rec["categories"]["refiners"], rec["categories"]["champion"]
    before = sorted(entries_of(a, 1, "explorers"), key=lambda e: -e["val_score"])
    assert refiners["from"] == [e["id"] for e in before]  # the archive's best first
    assert champion["from"] == [e["id"] for e in before]
    assert len(started) == 2  # refiners, then the champions
    for (params, hparams, *opts), chosen, scale in ((started[0], refiners["from"], 0.5),
                                                    (started[1], champion["from"], 0.3)):
        for slot, model_id in enumerate(chosen):
            source = ckpt.select(a.models / model_id, a.entry(model_id)["iteration"])
            saved = ckpt.read_params(source)
            same = jax.tree.map(lambda x, y, s=slot: np.array_equal(np.asarray(x)[s],
                                                                    np.asarray(y)),
                                params, saved)
            assert all(jax.tree.leaves(same)), model_id
            # both optimizer states (Adam moments and counts) as the checkpoint saved them
            flat = saved_tree(source)
            for part, tree in zip(("actor_opt", "critic_opt"), opts, strict=True):
                leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
                assert leaves
                for path, x in leaves:
                    name = f"{part}/{ckpt._path_str(path)}"
                    assert np.array_equal(np.asarray(x)[slot], np.asarray(flat[name])), name
            lr = a.entry(model_id)["hparams"]["actor_lr"]
            assert float(hparams.actor_lr[slot]) == pytest.approx(lr * scale, rel=1e-6)
            assert float(hparams.critic_lr[slot]) == pytest.approx(
                a.entry(model_id)["hparams"]["critic_lr"] * scale, rel=1e-6)
    assert f"refiners  2 of the best 2 archived, lr x0.5: {before[0]['id']} " in second


def test_refiners_are_archived_as_children_of_their_parents(rounds):
    league_dir, a, _, second, _ = rounds
    rec = league.read_records(league_dir)[1]
    children = entries_of(a, 2, "refiners")
    assert sorted(e["id"] for e in children) == sorted(rec["categories"]["refiners"]["archived"])
    assert len(children) == 2
    continued = rec["categories"]["refiners"]["from"]
    for child in children:
        # the model it continues, or (a PBT copy within the round) the continuation it
        # was copied from, which continues one of them
        parent = a.entry(child["parent"])
        assert child["generation"] == parent["generation"] + 1
        origin = parent
        if parent["league"]["round"] == 2:
            assert parent["league"]["category"] == "refiners"
            origin = a.entry(parent["parent"])
        assert origin["league"] == {**origin["league"], "round": 1, "category": "explorers"}
        assert origin["id"] in continued
        assert child["total_timesteps"] == origin["total_timesteps"] + 2 * STEPS
        assert child["league"]["lr_scale"] == 0.5
        assert f"archived {child['id']}: refiners member " in second
        lineage = ckpt.select(a.models / child["id"], "best").lineage
        assert lineage.parent_run == str((a.models / origin["id"]).absolute())
        assert lineage.base_timesteps == origin["total_timesteps"]
    changes = rec["categories"]["refiners"]["continued"]
    assert all(c["beat"] and not c["rolled_back"] for c in changes)
    assert {c["child"] for c in changes} == {e["id"] for e in children}
    for c in changes:
        assert c["child_parent"] == a.entry(c["child"])["parent"]
    # the bars each trained on: the window and the older bars before it (1 .. 140);
    # round 2's explorers the window (21 .. 140)
    w, older = rec["data"]["window"], rec["data"]["older"]
    for e in children:
        assert e["window"]["train"] == {"start": older["start"], "end": w["end"], "bars": 140}
    for e in entries_of(a, 2, "explorers"):
        assert e["window"]["train"] == {"start": w["start"], "end": w["end"], "bars": 120}
    assert "validation" in e["window"] and e["window"]["market"] == "fixed"


def test_a_continuation_far_below_its_parent_is_rolled_back(rounds):
    league_dir, a, _, second, _ = rounds
    rec = league.read_records(league_dir)[1]
    champion = rec["categories"]["champion"]
    assert champion["archived"] == [] and not entries_of(a, 2, "champion")
    assert len(champion["rolled_back"]) == 2
    for back in champion["rolled_back"]:
        parent = back["parent"]
        assert parent in champion["from"]
        # (forced 100 below its own score; the rule: more than 10% below its parent's)
        assert back["score"] < back["parent_score"] - 0.1 * abs(back["parent_score"])
        assert (f"rollback: champion member {back['member']} continuing {parent} scored "
                f"{back['score']:+.2f} on validation, more than 10% below {parent}'s") in second
        assert a.entry(parent)["val_score"] == back["parent_score"]  # the parent stays


def test_the_window_rolls_and_continued_models_mix_older_bars(rounds):
    league_dir, _, _, _, _ = rounds
    first, second = league.read_records(league_dir)
    w1, w2 = first["data"]["window"], second["data"]["window"]
    assert w2["first"] == w1["first"] + 20 and w2["bars"] == w1["bars"] == 120
    assert second["data"]["older"]["first_start"] == 1  # the bars before the window
    assert second["data"]["older"]["last_start"] == w2["first"] - 1
    cats = second["categories"]
    assert cats["explorers"]["iterations"] == {"recent": 2, "older": 0}
    assert cats["refiners"]["iterations"] == {"recent": 1, "older": 1}  # --recent-mix 0.5
    assert cats["champion"]["iterations"] == {"recent": 1, "older": 1}


def test_the_summary_after_a_round(rounds):
    league_dir, a, _, second, _ = rounds
    first_rec, rec = league.read_records(league_dir)
    lines = second.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("league round 2 completed"))
    summary = lines[at:]
    assert summary[1] == ("generations: 2 of 4 continued models beat their parent this "
                          "round (mean change " + summary[1].split("change ")[1].split(";")[0]
                          + "; 2 rolled back); all rounds: 2 of 4")
    champ = rec["champion"]
    assert champ["id"] == a.entries()[0]["id"]
    held = 2 if champ["id"] == first_rec["champion"]["id"] else 1
    assert any(line.startswith(f"champion: {champ['id']} (val {champ['score']:+.2f}), held "
                               f"{held} round") for line in summary)
    trend_line = next(line for line in summary if line.startswith("best validation score"))
    assert trend_line.startswith(f"best validation score by round: 1: "
                                 f"{first_rec['round_best']['score']:+.2f}")
    assert f"2: {rec['round_best']['score']:+.2f}" in trend_line and "per round" in trend_line
    compute = next(line for line in summary if line.startswith("compute: "))
    for name in ("explorers", "refiners", "champion"):
        assert f"{name} 2 x 128 = 256 timesteps (33%)" in compute
    assert compute.endswith("(planned split 33.3 / 33.3 / 33.3 %)")
    assert (league_dir / league.PLOT_FILE).stat().st_size > 5_000
    policy = jaxtrade.load_policy(f"archive:{a.path}:{champ['id']}")
    assert policy.checkpoint.step == a.entry(champ["id"])["iteration"]


def test_longevity_counts_rounds_by_id_and_by_lineage():
    def rec(champion, lineage):
        return {"champion": {"id": champion, "score": 1.0, "lineage": lineage}}

    records = [rec("m1", ["m1"]), rec("m2", ["m2"]), rec("m2", ["m2"]), rec("m5", ["m5", "m2"])]
    assert league.longevity(records) == (1, 3)
    assert league.longevity(records[:3]) == (2, 2)
    assert league.longevity([]) == (0, 0)
    assert league.rolled_back(8.9, 10.0, 0.1) and not league.rolled_back(9.0, 10.0, 0.1)
    assert league.rolled_back(-1.2, -1.0, 0.1) and not league.rolled_back(-1.1, -1.0, 0.1)
    assert league.rolled_back(None, 1.0, 0.1) and not league.rolled_back(0.0, None, 0.1)
    assert league.trend([1.0, 2.0, 3.0]) == pytest.approx(1.0) and league.trend([1.0]) is None


def test_an_archived_model_of_other_shapes_is_refused_before_training(rounds, tmp_path):
    _, a, _, _, _ = rounds
    flags = [*LEAGUE, "--hidden-dim", 16, "--explorers", 0, "--league-dir", tmp_path / "l",
             "--archive", a.path]
    code, out, err = run_cli(flags)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: archived model m")
    assert "does not fit this config: params/" in err and "(8,)" in err and "(16,)" in err
    assert not (tmp_path / "l").exists()


@pytest.mark.parametrize("extra, message", [
    (["--run-dir", "x"], "--run-dir: a round's runs go under --league-dir"),
    (["--timesteps", "100"], "--timesteps: each category has its budget"),
    (["--refiner-lr", "0"], "--refiner-lr must be > 0, got 0.0"),
    (["--recent-mix", "0"], "--recent-mix must be in (0, 1], got 0.0"),
    (["--rollback", "1"], "--rollback must be in [0, 1), got 1.0"),
    (["--explorers", "-1"], "--explorers must be at least 0, got -1"),
    (["--explorers", "0", "--refiners", "0", "--champions", "0"], "nothing to train"),
    (["--explorers", "0"], "nothing to train in round 1: no explorers, and"),
    (["--window", "1000"], "--window 1000: the training range has"),
    (["--window", "20"], "--window 20 must be longer than an episode (32 steps)"),
    (["--pbt-fraction", "0.7"], "--pbt-fraction must be in (0, 0.5], got 0.7"),
    (["--checkpoint", "x"], "--checkpoint: refiners and the champion start from the archive"),
])
def test_bad_flags_are_one_line_errors(extra, message, tmp_path):
    flags = [*LEAGUE, "--league-dir", tmp_path / "l", "--archive", tmp_path / "a", *extra]
    code, out, err = run_cli(flags)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_a_broken_league_file_and_a_foreign_archive_are_one_line_errors(tmp_path):
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / league.RECORDS_FILE).write_text('{"round": 1}\nnot json\n')
    code, _, err = run_cli([*LEAGUE, "--league-dir", tmp_path / "l", "--archive", tmp_path])
    assert code == 2 and err.strip().endswith("league.jsonl:2: not a league round record")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = run_cli([*LEAGUE, "--league-dir", tmp_path / "l2", "--archive",
                            tmp_path / "other"])
    assert code == 2 and "not a model archive" in err and err.count("\n") == 1


def test_module_runs_as_a_command():
    proc = subprocess.run([sys.executable, "-m", "jaxtrade.league", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m jaxtrade.league" in proc.stdout
    for flag in ("--explorers N", "--refiner-lr X", "--champion-timesteps T", "--window BARS",
                 "--recent-mix F", "--rollback F"):
        assert flag in proc.stdout, flag


def test_an_interrupt_stops_the_round_and_keeps_what_completed(tmp_path, monkeypatch):
    """A signal during the explorers' first interval (a stand-in for SIGINT's handler,
    which the CLI test of `python -m jaxtrade.population` drives for real): the interval
    ends and is saved, nothing of the category is archived, the later categories do not
    run, and the round is recorded as interrupted."""
    from jaxtrade.engine import signals

    class Requested(signals.Interrupts):
        checks = 0

        @property
        def requested(self):
            Requested.checks += 1
            # the round's check before the explorers, the run's before its first
            # interval, then the signal
            if Requested.checks > 2:
                self.signal_name = "SIGINT"
            return self.signal_name is not None

    monkeypatch.setattr(signals, "Interrupts", Requested)
    flags = [*LEAGUE, "--league-dir", tmp_path / "l", "--archive", tmp_path / "a"]
    code, out, err = run_cli(flags)
    assert code == 0, err
    assert "explorers: interrupted after 1 of 2 iterations; nothing of it archived" in out
    assert "interrupted (SIGINT): round 1 recorded with what completed" in out
    [rec] = league.read_records(tmp_path / "l")
    assert rec["status"] == "interrupted" and rec["champion"] is None
    assert rec["categories"]["explorers"]["status"] == "interrupted"
    assert not archive.Archive(tmp_path / "a").entries()
    assert (tmp_path / "l" / "round-001" / "explorers" / "population_checkpoints" / "1").is_dir()


def test_on_worlds_rounds_take_fresh_training_pools_and_window_is_refused():
    """Procedural worlds have no time axis: round r trains on pool generation r - 1, its
    continued models mix in the previous round's; --window is a one-line error. (A plan
    that holds only the run's worlds: generating them is not what this tests.)"""
    from types import SimpleNamespace

    from jaxtrade.worlds import RunWorlds

    worlds = RunWorlds(seed=3, n_worlds=2, n_bars=120, val_worlds=2, test_worlds=2)
    p = SimpleNamespace(market=SimpleNamespace(worlds=worlds))
    second = league.RoundData(p, 2, None, 0, 0.7)
    assert second.describe() == {"kind": "worlds", "seed": 3, "mix": 0.7,
                                 "recent": {"generation": 1, "train_worlds": [2, 3]},
                                 "older": {"generation": 0, "train_worlds": [0, 1]}}
    assert second.line() == ("data: worlds, training pool 1 (train worlds 2..3) for this "
                             "round; continued models 70% on it, 30% on pool 0")
    assert league.RoundData(p, 1, None, 0, 0.7).describe()["older"] is None
    with pytest.raises(league.UsageError, match="--window: procedural worlds have no time"):
        league.RoundData(p, 1, 60, 0, 0.7)


# ------------------------------------------------------------------ review fixes
def tiny_plan(tmp_path, *extra):
    """The engine plan of a league category with LEAGUE's flags and `extra`."""
    args = league.build_parser().parse_args([str(a) for a in [
        *LEAGUE, *extra, "--league-dir", tmp_path / "l", "--archive", tmp_path / "a"]])
    p, _, _ = population_run.plan(league._category_args(args, league.DEFAULTS[0], 2,
                                                        tmp_path / "run"))
    return p


def test_each_round_and_category_has_its_own_seed(spied):
    """Round 2's explorers are not round 1's again: other initial weights and sampled
    hyperparameters (member 0 keeps the config's in both); the seeds are recorded."""
    league_dir, a, _, _, _, founders, _ = spied
    assert len(founders) == 2  # round 1's explorers, round 2's
    (p1, h1), (p2, h2) = founders
    drawn = [(x, y) for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True)
             if np.std(x) > 0]  # (biases start at 0)
    assert len(drawn) >= 4
    for x, y in drawn:
        assert not np.allclose(x, y)
    assert float(h1.actor_lr[0]) == float(h2.actor_lr[0])  # the config's
    assert float(h1.actor_lr[1]) != float(h2.actor_lr[1])
    assert float(h1.clip[1]) != float(h2.clip[1])
    first, second = league.read_records(league_dir)
    seeds = {(r["round"], name): c["seed"] for r in (first, second)
             for name, c in r["categories"].items()}
    assert seeds == {(r, name): league.category_seed(1, r, i) for r, name, i in (
        (1, "explorers", 0), (2, "explorers", 0), (2, "refiners", 1), (2, "champion", 2))}
    assert len(set(seeds.values())) == 4
    for e in a.entries():
        assert e["league"]["seed"] == seeds[(e["league"]["round"], e["league"]["category"])]


def test_every_league_model_counts_every_validation_of_the_league_as_trials(rounds):
    """The champion is chosen again after each round among all archived models, so every
    league model's deflated Sharpe counts the league's validations so far: round 1's 2
    explorers x 2 intervals, round 2's explorers, refiners and champions as many (16)."""
    league_dir, a, _, _, _ = rounds
    first, second = league.read_records(league_dir)
    assert (first["trials"], second["trials"]) == (4, 16)
    assert {e["league"]["round"] for e in a.entries()} == {1, 2}
    for e in a.entries():
        selection = ckpt.select(a.models / e["id"]).meta["selection"]
        assert selection["validations"] == len(selection["sharpes"]) == 16, e["id"]


def test_every_call_trains_on_the_window_or_the_bars_before_it(rounds, spied):
    """The env params each program call received: the window's episode starts (and no bar
    after the window: `end`, which a bootstrap path's jumps respect too), or the older
    bars' for continued models, alternating with --recent-mix 0.5."""
    league_dir, *_ = rounds
    calls = spied[6]
    first, second = league.read_records(league_dir)
    w1, w2 = first["data"]["window"], second["data"]["window"]
    assert (w1["first"], w1["last"], w1["bars"]) == (1, 120, 120)
    assert (w2["first"], w2["last"], w2["bars"]) == (21, 140, 120)

    def recent(w):
        return (w["first"], w["last"] - 32, w["last"])

    older = (1, w2["first"] - 1, w2["first"] - 1 + 32)
    assert [c[2:] for c in calls if c[0] == "round-001"] == [(1, *recent(w1))] * 2
    assert [c[2:] for c in calls if c[:2] == ("round-002", "explorers")] == [(1, *recent(w2))] * 2
    for name in ("refiners", "champion"):
        got = [c[2:] for c in calls if c[:2] == ("round-002", name)]
        assert got == [(1, *recent(w2)), (1, *older)], name


@pytest.mark.parametrize("total, interval, mix, lengths, recent", [
    (488, 122, 0.7, {85, 37}, 340),  # cpu-small's refiners: 2M timesteps, 500K per interval
    (732, 122, 0.7, {85, 37}, 510),
    (10, 3, 0.7, {1, 2}, 7),  # a shorter last interval settles the drift
    (2, 1, 0.5, {1}, 1),  # intervals of 1 iteration alternate
    (10, 1, 0.7, {1}, 7),
    (5, 5, 0.7, {4, 1}, 4),
    (6, 2, 0.7, {1}, 4),  # intervals of 2 split 1 + 1 on either data or both on one
    (12, 4, 1.0, {4}, 12),
])
def test_a_mixed_interval_is_two_calls_of_the_same_two_lengths(total, interval, mix,
                                                              lengths, recent):
    spent, seen, done = {"recent": 0, "older": 0}, set(), 0
    while done < total:
        k = min(interval, total - done)
        calls = league.mix_calls(k, interval, spent, mix)
        assert sum(n for n, _ in calls) == k and len(calls) == 2
        for n, which in calls:
            spent[which] += n
            if n:
                seen.add(n)
        done += k
    assert seen == lengths
    assert spent["recent"] == recent and abs(recent / total - mix) <= 0.5 / interval + 1e-9


def test_continuing_a_continuation_scales_its_base_learning_rate_once():
    """A refiner archived at lr x 0.5 and continued as the champion (x 0.3) runs at its
    base x 0.3, not x 0.15; PBT within the category stays at the category's scale."""
    from types import SimpleNamespace

    from jaxtrade.population import BOUNDS
    from jaxtrade.trainer import HPARAM_NAMES

    def learned(actor, critic):
        hp = {k: 0.5 for k in HPARAM_NAMES} | {"actor_lr": actor, "critic_lr": critic}
        return {"hparams": SimpleNamespace(**hp)}

    models = [learned(5e-4, 1e-3), learned(2e-4, 4e-4), learned(1e-4, 3e-4)]
    entries = [{"league": {"round": 2, "category": "refiners", "lr_scale": 0.5}},
               {"league": {"round": 1, "category": "explorers", "lr_scale": 1.0}},
               {"id": "m0001"}]  # archived outside the league
    hp = league._learned_founders(models, entries, 0.3, 0).hparams
    assert hp["actor_lr"] == pytest.approx([1e-3 * 0.3, 2e-4 * 0.3, 1e-4 * 0.3], rel=1e-6)
    assert hp["critic_lr"] == pytest.approx([2e-3 * 0.3, 4e-4 * 0.3, 3e-4 * 0.3], rel=1e-6)
    assert hp["clip"] == pytest.approx([0.5] * 3)
    bounds = league.scaled_bounds(0.3)
    assert bounds["actor_lr"] == pytest.approx((BOUNDS["actor_lr"][0] * 0.3,
                                                BOUNDS["actor_lr"][1] * 0.3))
    assert bounds["clip"] == BOUNDS["clip"]


def test_a_change_of_data_between_calls_starts_fresh_episodes(tmp_path):
    """`FreshEpisodes` (worlds: another pool between two calls): every env of every member
    starts a new episode of the new params (here: another start range, so the episodes'
    bars show it); the learned state is untouched, and the same params change nothing."""
    from jaxtrade.population import init_population
    from jaxtrade.trainer import make_train

    p = tiny_plan(tmp_path)
    trainer = make_train(p.cfg, p.market, p.mesh)
    pop = init_population(trainer, jax.random.key(0), 2)
    data = league.RoundData(p, 1, 120, 0, 0.7)
    other = data.params(trainer.env_params, (150, 160))
    fresh = league.FreshEpisodes(trainer, 7)
    assert fresh(pop, trainer.env_params) is pop
    t = np.asarray(pop.members.carry.env_state.t)
    assert not ((t >= 150) & (t <= 160)).all()
    after = fresh(pop, other)
    t = np.asarray(after.members.carry.env_state.t)
    assert t.shape == (2, 8) and ((t >= 150) & (t <= 160)).all()
    assert np.asarray(after.members.carry.reset).all()
    assert not np.asarray(after.members.carry.ep_return).any()
    for x, y in zip(jax.tree.leaves(pop.members.params), jax.tree.leaves(after.members.params),
                    strict=True):
        assert x is y
    assert fresh(after, other) is after and fresh.resets == 1


def test_a_bootstrap_path_of_the_window_stays_in_the_window(tmp_path):
    """--window with --bootstrap-block: the recent params end at the window's last bar,
    so the stationary bootstrap's jumps land inside the window too."""
    p = tiny_plan(tmp_path, "--bootstrap-block", 4)
    from jaxtrade.trainer import make_train

    trainer = make_train(p.cfg, p.market, p.mesh)
    data = league.RoundData(p, 1, 60, 0, 0.7)  # the last 60 bars of the training range
    w_lo, w_last = data.window
    params = data.params(trainer.env_params, data.recent)
    assert int(params.end) == w_last and int(params.start_min) == w_lo
    env, n = trainer.env, 64

    def walk(key):
        _, state = env.reset(key, params)

        def step(state, k):
            _, state, _, _, _ = env.step(k, state, jax.random.randint(k, (), 0,
                                                                      env.num_actions), params)
            return state, state.t

        return jax.lax.scan(step, state, jax.random.split(key, 200))[1]

    t = np.asarray(jax.jit(jax.vmap(walk))(jax.random.split(jax.random.key(0), n)))
    assert t.min() >= w_lo and t.max() <= w_last
    assert t.min() < w_lo + 10 and t.max() > w_last - 10  # jumps cover the window


def test_the_funding_env_describes_its_window_in_hours(tmp_path, capsys):
    tiny = [x for x in TINY if x not in ("--market", "fixed", "--hyperparams",
                                         "n_bars=400,n_assets=4")]
    args = league.build_parser().parse_args([str(x) for x in [
        *tiny, "--env", "funding", "--window", 200, "--league-dir", tmp_path / "l",
        "--archive", tmp_path / "a"]])
    rnd = league.Round(args, league.categories(args))
    rnd.prepare()
    rnd.banner()
    # (no --seed: the config's default seeds the categories)
    assert rnd.seed(rnd.cats[0]) == league.category_seed(rnd.first_plan[0].cfg.run.seed, 1, 0)
    d = rnd.data.describe()
    assert d["window"]["bars"] == 200 and d["window"]["unit"] == "hours"
    assert d["window"]["start"] is None
    out = capsys.readouterr().out
    assert f"data: window of 200 hours (hours {d['window']['first']} .. " in out


def test_a_diverged_category_stops_the_round_with_exit_status_1(tmp_path, monkeypatch):
    def diverged(self, cat, interrupts):
        return {"members": 2, "status": "diverged", "timesteps_per_member": 64,
                "timesteps": 128, "wall_s": 1.0, "continued": [], "archived": []}

    monkeypatch.setattr(league.Round, "train", diverged)
    code, out, err = run_cli([*LEAGUE, "--league-dir", tmp_path / "l", "--archive",
                              tmp_path / "a"])
    assert code == 1
    assert "league round 1 diverged" in out
    assert "round 1 stopped: a category diverged" in err
    [rec] = league.read_records(tmp_path / "l")
    assert rec["status"] == "diverged"


def test_a_round_is_not_redone_over_its_own_archived_models(tmp_path):
    """Round 2 crashed after archiving a model and before its record: redoing it would
    link its models to those, so it is a one-line error saying what to do."""
    import json

    league_dir, models = tmp_path / "l", tmp_path / "a" / "models"
    league_dir.mkdir()
    (league_dir / league.RECORDS_FILE).write_text(json.dumps({"round": 1}) + "\n")
    (models / "m0001").mkdir(parents=True)
    (tmp_path / "a" / "index.json").write_text(json.dumps({"format": 1, "next_id": 2}))
    (models / "m0001" / "entry.json").write_text(json.dumps({
        "id": "m0001", "val_score": 1.0, "league": {"round": 2, "category": "explorers"},
        "source": {"run": str(league_dir / "round-002" / "explorers")}}))
    code, out, err = run_cli([*LEAGUE, "--league-dir", league_dir, "--archive",
                              tmp_path / "a"])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "holds m0001 from round 2 of" in err and "delete their directories" in err

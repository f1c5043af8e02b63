"""`jaxtrade.archive`: a trained run's best checkpoint and each slot's best-scored model of a
population archived with their records; list / show / lineage / prune / add on the command
line; ids that are never reused; `load_policy("archive:...")` decides exactly as the
original run; one-line errors."""

import contextlib
import io
import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxtrade
from jaxtrade import archive
from jaxtrade import checkpoint as ckpt
from jaxtrade.archive import Archive, ArchiveError
from jaxtrade.population_run import CHECKPOINT_DIR as POP_CHECKPOINTS
from jaxtrade.population_run import POPULATION_FILE
from tests.conftest import TRAINED_EVAL_EVERY, TRAINED_ITERATIONS


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = archive.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def archived(trained_run, tmp_path_factory):
    """An archive with the trained run's best checkpoint (m0001), added on the command line:
    (archive, its entry, `add`'s stdout)."""
    run_dir, _ = trained_run
    path = tmp_path_factory.mktemp("archive") / "archive"
    code, out, err = cli("--archive", path, "add", run_dir)
    assert code == 0, err
    a = Archive(path)
    return a, a.entry("m0001"), out


def fake(a: Archive, score, parent=None, generation=0) -> str:
    """A model without a checkpoint (lineage and ranking need only its entry); its id."""
    entry = {"parent": parent, "generation": generation, "iteration": 1, "timesteps": 64,
             "total_timesteps": 64, "val_score": score, "validation": [], "window": {},
             "hparams": {}, "network": {}, "env": "portfolio",
             "source": {"kind": "run", "run": "/runs/fake", "iteration": 1}}
    return a.add(lambda d: d.mkdir(), entry)["id"]


def metrics_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_run_is_archived_with_its_best_checkpoint_and_records(archived, trained_run):
    a, e, out = archived
    run_dir = trained_run[0]
    best = ckpt.select(run_dir, "best")
    where = archive._short(str(run_dir.absolute()))
    assert out.startswith(f"archived m0001: {where} checkpoint {best.step}, "
                          f"val score {best.meta['metrics']['val_score']:+.2f}, parent -, "
                          f"generation 0")
    assert (e["id"], e["parent"], e["generation"]) == ("m0001", None, 0)
    assert e["iteration"] == best.step
    assert e["timesteps"] == e["total_timesteps"] == best.step * 64  # TINY: 8 envs x 8 steps
    assert e["val_score"] == pytest.approx(best.meta["metrics"]["val_score"])
    walks = [r for r in metrics_rows(run_dir) if "val_score" in r and r["iteration"] <= best.step]
    assert [v["iteration"] for v in e["validation"]] == [r["iteration"] for r in walks]
    assert [v["score"] for v in e["validation"]] == pytest.approx([r["val_score"] for r in walks])
    assert len(walks) == best.step // TRAINED_EVAL_EVERY >= 1
    market = json.loads((run_dir / "market.json").read_text())
    assert e["window"]["symbols"] == market["symbols"]
    assert e["window"]["test"]["start"] == market["test"]["start"]
    assert e["window"]["market"] == "fixed"
    assert e["hparams"]["actor_lr"] == pytest.approx(3e-4)
    assert e["network"]["hidden_dim"] == 8
    assert e["source"]["run"] == str(run_dir.absolute())
    model = a.models / "m0001"
    for name in ("config.json", "market.json", "env.json", "entry.json"):
        assert (model / name).is_file()
    assert sorted(p.name for p in (model / "checkpoints").iterdir()) == [str(best.step)]
    assert json.loads((a.path / "index.json").read_text())["next_id"] == 2


def test_load_policy_of_an_archived_model_decides_as_the_run(archived, trained_run, user_csv):
    a, e, _ = archived
    bars = user_csv[1]
    original = jaxtrade.load_policy(trained_run[0])
    for policy in (jaxtrade.load_policy(f"archive:{a.path}:m0001"),
                   archive.load_policy("m0001", archive=a.path)):
        assert policy.checkpoint.step == original.checkpoint.step
        assert policy.symbols == original.symbols and policy.config == original.config
        same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)),
                            policy.params, original.params)
        assert all(jax.tree.leaves(same))
    mine, theirs = policy(bars, window=60), original(bars, window=60)  # one compile each
    assert mine.probabilities == theirs.probabilities
    assert mine.weights == theirs.weights and mine.regime == theirs.regime


def test_list_show_and_lineage_on_the_command_line(archived, trained_run):
    a, _, _ = archived
    code, out, err = cli("--archive", a.path, "add", trained_run[0], "--checkpoint", "latest",
                         "--parent", "m0001")
    assert code == 0, err
    assert "parent m0001, generation 1" in out
    child = fake(a, -50.0, parent="m0002", generation=2)
    sibling = fake(a, -60.0, parent="m0001", generation=1)

    code, out, _ = cli("--archive", a.path, "list")
    lines = out.splitlines()
    assert lines[0].split() == ["id", "parent", "gen", "timesteps", "val", "score", "test",
                                "Sharpe", "source", "added"]
    assert [line.split()[0] for line in lines[1:-1]][-2:] == [child, sibling]  # worst last
    assert lines[-1] == f"4 model(s) in {a.path}"
    row = next(line for line in lines if line.startswith("m0001"))
    assert f"{a.entry('m0001')['val_score']:+.2f}" in row and "#" in row

    code, out, _ = cli("--archive", a.path, "show", "m0002")
    assert code == 0
    assert out.splitlines()[0] == f"m0002: {a.models / 'm0002'}"
    assert "parent        m0001 (generation 1)" in out
    assert f"validation    {TRAINED_ITERATIONS // TRAINED_EVAL_EVERY} walks:" in out

    code, out, _ = cli("--archive", a.path, "lineage", "m0002")
    lines = out.splitlines()
    assert lines[0].startswith("m0001  gen 0")
    assert lines[1].startswith("└── m0002 *  gen 1")
    assert lines[2].startswith(f"    └── {child}  gen 2")
    code, out, _ = cli("--archive", a.path, "lineage", "m0001")
    lines = out.splitlines()
    expected = ["m0001 *  gen 0", "├── m0002  gen 1", f"│   └── {child}  gen 2",
                f"└── {sibling}  gen 1"]
    assert len(lines) == len(expected)
    assert all(line.startswith(e) for line, e in zip(lines, expected, strict=True)), lines
    for i in (child, sibling):  # leave the module's archive as it was
        shutil.rmtree(a.models / i)


def test_prune_keeps_the_best_ids_are_never_reused_and_lineage_shows_the_pruned(tmp_path):
    a = Archive(tmp_path / "a")
    ids = [fake(a, s) for s in (5.0, 9.0, None, 7.0)]
    child = fake(a, 1.0, parent=ids[0], generation=1)
    assert ids == ["m0001", "m0002", "m0003", "m0004"] and child == "m0005"
    assert [e["id"] for e in a.entries()] == ["m0002", "m0004", "m0001", "m0005", "m0003"]
    code, out, _ = cli("--archive", a.path, "prune", "--top", "2")
    assert code == 0
    assert out == f"pruned 3 model(s): m0001, m0005, m0003; 2 kept in {a.path}\n"
    assert sorted(p.name for p in a.models.iterdir()) == ["m0002", "m0004"]
    assert fake(a, 8.0, parent="m0005", generation=2) == "m0006"  # not m0003
    lines = archive.lineage(a, "m0006")
    assert lines[:2] == ["m0001 (pruned)", "└── m0005 (pruned)"]
    assert lines[2].startswith("    └── m0006 *  gen 2")
    code, _, err = cli("--archive", a.path, "show", "m0001")
    assert code == 2 and err == (f"error: {a.path}: no model 'm0001' (pruned); archived: "
                                 f"m0002, m0006, m0004\n")
    capped = Archive(a.path, capacity=3)
    assert capped.add(lambda d: d.mkdir(), {**a.entry("m0006"), "val_score": 0.5})["kept"] is False
    assert [e["id"] for e in a.entries()] == ["m0002", "m0006", "m0004"]


@pytest.fixture(scope="module")
def population(trained_run, tmp_path_factory):
    """A population run directory of 2 members, written as `python -m jaxtrade.population`
    writes one: slot 0 holds the run's best checkpoint's state (id 0, a founder), slot 1
    its latest's (id 3, a copy of id 0)."""
    run_dir = trained_run[0]
    pop = tmp_path_factory.mktemp("population") / "pop"
    pop.mkdir()
    for name in ("config.json", "market.json", "env.json"):
        shutil.copy(run_dir / name, pop / name)
    best, latest = ckpt.select(run_dir, "best"), ckpt.select(run_dir, "latest")

    def state(source):
        manager = ckpt._read_only_manager(source.directory)
        return manager.restore(source.step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore())).state

    members = jax.tree.map(lambda x, y: np.stack([np.asarray(x), np.asarray(y)]),
                           state(best), state(latest))
    tree = {"members": members, "ids": np.array([0, 3], np.int32),
            "key": np.zeros(2, np.uint32)}
    manager = ocp.CheckpointManager(
        (pop / POP_CHECKPOINTS).absolute(), options=ocp.CheckpointManagerOptions(create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})
    manager.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                            meta=ocp.args.JsonSave({"rng_impl": "threefry2x32"})))
    manager.close()
    hp = {"actor_lr": 3e-4, "critic_lr": 9e-4, "ent_coef": 0.01}

    def record(interval, slot, i, parent, score, replaced=None):
        return {"interval": interval, "slot": slot, "id": i, "parent": parent,
                "generation": 0 if parent is None else 1, "timesteps": 64 * interval,
                "score": score, "hparams": hp, "nonfinite": False, "replaced_by": replaced,
                "val": {"score": score, "sharpe": 1.0}}

    records = [record(1, 0, 0, None, 10.0), record(1, 1, 1, None, -5.0, {"id": 3}),
               record(2, 0, 0, None, 12.0), record(2, 1, 3, 0, 11.0),
               ]
    (pop / POPULATION_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    return pop, best, latest


def test_a_populations_final_members_are_archived_and_load(population, tmp_path, user_csv):
    pop, best, latest = population
    a = Archive(tmp_path / "a")
    code, out, err = cli("--archive", a.path, "add", pop)
    assert code == 0, err
    where = archive._short(str(pop.absolute()))
    assert out.splitlines() == [
        f"archived m0001: {where} member 0 at interval 2, val score +12.00, parent -, "
        f"generation 0",
        f"archived m0002: {where} member 3 at interval 2, val score +11.00, parent m0001, "
        f"generation 1"]
    founder, copy = a.entry("m0001"), a.entry("m0002")
    assert [v["score"] for v in founder["validation"]] == [10.0, 12.0]
    assert [v["score"] for v in copy["validation"]] == [11.0]
    assert copy["hparams"]["ent_coef"] == 0.01 and copy["source"]["slot"] == 1
    assert (founder["iteration"], copy["iteration"]) == (best.step, latest.step)
    for model, source in (("m0001", best), ("m0002", latest)):
        policy = jaxtrade.load_policy(f"archive:{a.path}:{model}")
        original = jaxtrade.load_policy(source.run_dir, source.step)
        same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)),
                            policy.params, original.params)
        assert all(jax.tree.leaves(same))
    meta = ckpt.select(a.models / "m0002").meta
    assert meta["selection"]["validations"] == 4  # every member's every walk
    assert meta["metrics"]["val_score"] == 11.0 and meta["lineage"]["generation"] == 1


def test_a_population_checkpoint_that_does_not_hold_the_members_is_refused(population,
                                                                           tmp_path):
    pop, _, _ = population
    broken = tmp_path / "pop"
    shutil.copytree(pop, broken)
    lines = (broken / POPULATION_FILE).read_text().splitlines()
    (broken / POPULATION_FILE).write_text(lines[-1].replace('"id": 3', '"id": 4') + "\n")
    with pytest.raises(ArchiveError, match="slot 1 holds id 3, not member 4"):
        archive.add_population(Archive(tmp_path / "a"), broken)


def test_errors_are_one_line(archived, tmp_path):
    a, _, _ = archived
    code, _, err = cli("--archive", a.path, "lineage", "m0099")
    assert code == 2 and err.startswith(f"error: {a.path}: no model 'm0099'; archived: m0001")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    code, _, err = cli("--archive", tmp_path / "other", "list")
    assert code == 2
    assert err == f"error: {tmp_path / 'other'}: not a model archive (no index.json)\n"
    code, _, err = cli("--archive", tmp_path / "none", "list")
    assert code == 2 and "not a model archive" in err and "add RUN_DIR" in err
    (tmp_path / "empty-run").mkdir()
    code, _, err = cli("--archive", tmp_path / "b", "add", tmp_path / "empty-run")
    assert code == 2 and "no complete checkpoint" in err and err.count("\n") == 1
    code, _, err = cli("--archive", tmp_path / "b", "add", tmp_path / "missing")
    assert code == 2 and err == f"error: {tmp_path / 'missing'}: no such run directory\n"
    code, _, err = cli("--archive", a.path, "add", a.models / "m0001", "--parent", "m0042")
    assert code == 2 and "no model 'm0042'" in err
    with pytest.raises(ArchiveError, match="no model 'm0042'"):
        jaxtrade.load_policy(f"archive:{a.path}:m0042")
    assert archive.split_reference("archive:m0007") == ("ckpt/archive", "m0007")
    before = [e["id"] for e in a.entries()]
    code, _, err = cli("--archive", a.path, "add", a.models / "m0001", "--keep", "-1")
    assert code == 2 and "--keep must be at least 1" in err
    assert [e["id"] for e in a.entries()] == before  # nothing added, nothing pruned


def test_a_run_started_from_an_archived_model_is_linked_to_it(archived, trained_run, tmp_path):
    a, _, _ = archived
    run_dir = tmp_path / "child"
    shutil.copytree(trained_run[0], run_dir)
    best = ckpt.select(run_dir, "best")
    meta_file = best.path / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())  # as `--checkpoint ARCHIVE/models/m0001` writes
    meta["lineage"].update(parent_run=str(a.models / "m0001"),
                           parent_checkpoint=a.entry("m0001")["iteration"], generation=1,
                           base_timesteps=1000, start="weights")
    meta_file.write_text(json.dumps(meta))
    e = archive.add_run(a, run_dir)
    try:
        assert (e["parent"], e["generation"]) == ("m0001", 1)
        assert e["total_timesteps"] == 1000 + e["timesteps"]
        assert archive.lineage(a, e["id"])[0].startswith("m0001  gen 0")
    finally:
        shutil.rmtree(a.models / e["id"])


def test_a_live_population_state_is_archived_as_the_checkpoint_would_be(population, tmp_path):
    """The hook's form: `Population.members` (a stacked TrainState with typed keys)."""
    from jaxtrade.trainer import TrainState

    pop, best, latest = population
    tree, _, _, _ = archive._population_state(pop)
    members = TrainState(**{**tree["members"],
                            "rng": jax.random.wrap_key_data(tree["members"]["rng"])})
    a = Archive(tmp_path / "a")
    added = archive.add_population(a, pop, states=members)
    assert [e["source"]["member"] for e in added] == [0, 3]
    params = ckpt.read_params(ckpt.select(a.models / "m0002"))
    same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)),
                        params, ckpt.read_params(latest))
    assert all(jax.tree.leaves(same))
    saved = ckpt._saved_tree_metadata(ckpt.select(a.models / "m0001"))
    assert saved["rng"].shape == (2,)  # stored as key data, as a run's checkpoint


def test_a_copy_is_linked_to_its_parent_whatever_their_slots(population, tmp_path):
    """Members are archived parents first, so a copy listed (or slotted) before its parent
    still gets the parent's archived id; the entries come back in the order given."""
    pop, _, _ = population
    records = [json.loads(line) for line in (pop / POPULATION_FILE).read_text().splitlines()]
    final = [r for r in records if r["interval"] == 2]
    a = Archive(tmp_path / "a")
    copy, founder = archive.add_population(a, pop, members=list(reversed(final)))
    assert (copy["source"]["member"], founder["source"]["member"]) == (3, 0)
    assert copy["parent"] == founder["id"] and founder["parent"] is None

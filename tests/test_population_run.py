"""`python -m jaxtrade.population`: a tiny population run (in-process) writes its banner,
progress lines, population.jsonl with lineage that adds up, and checkpoints of the whole
population; 1 interval + --resume + 1 interval equals 2 intervals bit for bit; bad flags
are one-line errors."""

import contextlib
import io
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtrade import population_run
from jaxtrade.population import BOUNDS
from tests.cli import REPO
from tests.test_train import TINY

MEMBERS = 3
STEPS = 64  # TINY's 8 envs x 8 steps per iteration
INTERVAL = 2  # iterations
POP = [*TINY, "--population", str(MEMBERS), "--pbt-interval", str(INTERVAL * STEPS),
       "--seed", "1"]


def run_cli(argv) -> tuple[int, str, str]:
    return run_cli_of(population_run.main, argv)


def run_cli_of(main, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """2 intervals in one invocation: (run dir, stdout)."""
    run_dir = tmp_path_factory.mktemp("pop") / "whole"
    code, out, err = run_cli([*POP, "--iterations", 2 * INTERVAL, "--run-dir", run_dir])
    assert code == 0, err
    return run_dir, out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """1 interval, then --resume for a second: (run dir, stdout of the resume)."""
    run_dir = tmp_path_factory.mktemp("pop") / "split"
    code, _, err = run_cli([*POP, "--iterations", INTERVAL, "--run-dir", run_dir, "-q"])
    assert code == 0, err
    code, out, err = run_cli(["--run-dir", run_dir, "--resume", "--iterations", 2 * INTERVAL,
                              "--archive", run_dir.parent / "archive"])
    assert code == 0, err
    return run_dir, out


def records(run_dir):
    lines = (run_dir / population_run.POPULATION_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_banner_and_progress_lines(whole):
    _, out = whole
    assert f"population: {MEMBERS} members x 8 envs = {3 * 8} envs in one program" in out
    assert (f"pbt: every {INTERVAL} iterations ({INTERVAL * STEPS} timesteps per member), "
            f"2 intervals") in out
    assert f"in all: {2 * INTERVAL} iterations x {MEMBERS} members = " \
           f"{2 * INTERVAL * STEPS * MEMBERS:,} timesteps" in out
    assert "every 2 iterations and at the end; members ranked by val_score for " \
           "exploit/explore" in out
    assert "interval   1/2 | it     2/4 |" in out and "interval   2/2 | it     4/4 |" in out
    # one copy per interval (bottom 1 of 3), each with a pbt line
    assert out.count("  pbt: slot ") == 2
    assert out.splitlines()[-1].startswith(f"done: {2 * INTERVAL} iterations x {MEMBERS} "
                                           f"members, {2 * INTERVAL * STEPS * MEMBERS:,} "
                                           f"timesteps")


def test_lineage_records_add_up(whole):
    run_dir, _ = whole
    recs = records(run_dir)
    assert [r["interval"] for r in recs] == [1] * MEMBERS + [2] * MEMBERS
    assert [r["slot"] for r in recs] == list(range(MEMBERS)) * 2
    first, second = recs[:MEMBERS], recs[MEMBERS:]
    assert [r["id"] for r in first] == [0, 1, 2]
    assert all(r["parent"] is None and r["generation"] == 0 for r in first)
    assert {r["timesteps"] for r in first} == {INTERVAL * STEPS}
    assert {r["timesteps"] for r in second} == {2 * INTERVAL * STEPS}
    for r in recs:
        assert r["score"] is not None and r["score"] == pytest.approx(r["val"]["score"])
        assert not r["nonfinite"]
        for name, (lo, hi) in BOUNDS.items():
            assert np.float32(lo) <= r["hparams"][name] <= np.float32(hi), name
    # interval 1: the worst is replaced by a copy of the best; interval 2 holds that copy
    worst = min(first, key=lambda r: r["score"])
    best = max(first, key=lambda r: r["score"])
    copy = worst["replaced_by"]
    assert [r["slot"] for r in first if r["replaced_by"]] == [worst["slot"]]
    assert copy["id"] == MEMBERS and copy["parent"] == best["id"]
    assert copy["source_slot"] == best["slot"] and copy["generation"] == 1
    child = second[worst["slot"]]
    assert (child["id"], child["parent"], child["generation"]) == (MEMBERS, best["id"], 1)
    assert child["hparams"] == copy["hparams"] != best["hparams"]
    for r in first:  # the others keep their model and hyperparameters
        if r is not worst:
            assert second[r["slot"]]["id"] == r["id"]
            assert second[r["slot"]]["hparams"] == r["hparams"]


def test_summary_and_checkpoints(whole):
    run_dir, _ = whole
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["members"] == MEMBERS
    assert summary["timesteps"] == 2 * INTERVAL * STEPS * MEMBERS
    best = max(records(run_dir), key=lambda r: r["score"])
    assert (summary["best"]["id"], summary["best"]["score"]) == (best["id"], best["score"])
    steps = sorted(int(p.name) for p in (run_dir / population_run.CHECKPOINT_DIR).iterdir()
                   if p.name.isdigit())
    assert steps == [1, 2]
    assert json.loads((run_dir / population_run.SETTINGS_FILE).read_text()) == {
        "members": MEMBERS, "interval": INTERVAL, "fraction": 0.2}


def restored(run_dir, step):
    """Checkpoint `step`'s population (saved form: key data, not typed keys)."""
    from jaxtrade.config import from_saved
    from jaxtrade.engine.start import load_run_market
    from jaxtrade.trainer import make_train

    cfg = from_saved(json.loads((run_dir / "config.json").read_text()))
    trainer = make_train(cfg, load_run_market(cfg))
    cps = population_run.PopulationCheckpoints(run_dir, 3)
    try:
        pop, meta, _ = cps.restore(trainer, MEMBERS, step)
    finally:
        cps.close()
    return population_run._saveable(pop), meta


def test_resume_is_bit_exact(whole, resumed):
    (a, _), (b, out) = whole, resumed
    assert "start: resumed from " in out and "interval 1, iteration 2 per member" in out
    assert (a / population_run.POPULATION_FILE).read_bytes() == \
           (b / population_run.POPULATION_FILE).read_bytes()
    best = [json.loads((d / "summary.json").read_text())["best"] for d in (a, b)]
    assert best[0] == best[1] is not None  # the resume read the first interval's records
    pa, meta_a = restored(a, 2)
    pb, meta_b = restored(b, 2)
    assert meta_a["iteration"] == meta_b["iteration"] == 2 * INTERVAL
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("extra, message", [
    (["--population", "0"], "--population must be at least 1, got 0"),
    (["--pbt-fraction", "0.7"], "--pbt-fraction must be in (0, 0.5], got 0.7"),
    (["--pbt-interval", "0"], "--pbt-interval must be at least 1 timestep"),
    (["--schedule", "configs/schedules/reference.toml"], "--schedule: phase '1 exploration "
                                                         "and initial pattern discovery' "
                                                         "changes shapes ("),
    (["--checkpoint", "x"], "--checkpoint (starting from a single run's checkpoint) is not "
                            "supported"),
    (["--resume"], "--resume needs --run-dir DIR"),
    (["--eval-every", "5"], "--eval-every: members are validated at every --pbt-interval"),
])
def test_bad_flags_are_one_line_errors(extra, message):
    code, out, err = run_cli([*POP, "--iterations", "2", *extra])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_resume_keeps_n_envs_under_a_smaller_budget(whole, tmp_path):
    """A resume's state fixes n_envs: under a budget that would size fewer envs per member
    it warns and goes on (it used to lower n_envs and then refuse the changed shape)."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(whole[0], run_dir)
    code, out, err = run_cli(["--run-dir", run_dir, "--resume", "--iterations",
                              3 * INTERVAL, "--max-vram", "0.0004", "-q"])
    assert code == 0, err
    assert "the checkpoint fixes n_envs, so the run goes on" in out + err
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 3 * INTERVAL


def test_resume_and_new_run_refusals(whole, tmp_path):
    run_dir, _ = whole
    code, _, err = run_cli([*POP, "--iterations", "2", "--run-dir", run_dir])
    assert code == 2 and "already holds a run (population.jsonl, population_checkpoints)" in err
    code, _, err = run_cli(["--run-dir", tmp_path, "--resume"])
    assert code == 2 and "holds no population run" in err
    code, _, err = run_cli(["--run-dir", run_dir, "--resume", "--iterations", 2 * INTERVAL])
    assert code == 2 and "is at iteration 4 and this run asks for 4" in err
    code, _, err = run_cli(["--run-dir", run_dir, "--resume", "--iterations", "6",
                            "--population", "4"])
    assert code == 2 and "--population 4: the run was saved with 3 members" in err


def test_module_runs_as_a_command():
    proc = subprocess.run([sys.executable, "-m", "jaxtrade.population", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: python -m jaxtrade.population" in proc.stdout
    assert "--pbt-interval T" in proc.stdout and "--population N" in proc.stdout


def test_plot_draws_population_png(whole, tmp_path, capsys):
    from jaxtrade import plot
    from jaxtrade.population_plot import perturbed_keys, population_figure, read_records

    run_dir, _ = whole
    assert plot.main([str(run_dir), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "population.png")]
    assert (tmp_path / "population.png").stat().st_size > 10_000
    intervals = read_records(run_dir / population_run.POPULATION_FILE)
    keys = perturbed_keys(intervals)
    assert set(keys) == set(BOUNDS)  # founders are sampled around the config: all differ
    fig = population_figure(intervals)
    score_ax, *hp_axes = fig.axes
    assert [ax.get_title() for ax in hp_axes] == keys
    triangles = lambda ax: sum(line.get_marker() == "^" for line in ax.get_lines())  # noqa: E731
    # one copy per interval: the first is scored in interval 2, the last is not trained yet
    assert triangles(score_ax) == 1
    assert all(triangles(ax) == 2 for ax in hp_axes)


def test_plot_of_a_broken_population_file_is_one_line(tmp_path, capsys):
    from jaxtrade import plot

    (tmp_path / population_run.POPULATION_FILE).write_text('{"interval": 1}\n')
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "population.jsonl:1: not a population record" in err


def test_a_population_with_no_finite_member_stops(tmp_path, monkeypatch):
    """Every member flagged broken (as `finite_members` says of NaN metrics): nothing is
    left to copy from, so the run stops with exit 1 and saves nothing of that interval."""
    import jaxtrade.population as population

    monkeypatch.setattr(population, "finite_members",
                        lambda metrics: np.zeros((MEMBERS,), bool))
    run_dir = tmp_path / "broken"
    code, _, err = run_cli([*POP, "--iterations", 2 * INTERVAL, "--run-dir", run_dir, "-q"])
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: interval 1: every member's score, "
                                                   "metrics or parameters became non-finite")
    assert [r["nonfinite"] for r in records(run_dir)] == [True] * MEMBERS
    assert not any(r["replaced_by"] for r in records(run_dir))
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "diverged"
    assert not list((run_dir / population_run.CHECKPOINT_DIR).glob("[0-9]*"))


def test_an_interrupt_stops_after_the_interval_with_its_checkpoint(tmp_path, xla_cache):
    """SIGINT (the CLI as users run it): the interval in progress ends, is logged and saved;
    the run exits 0 and says how to resume."""
    import signal

    from tests.cli import Cli

    cli = Cli(xla_cache, module="jaxtrade.population")
    run_dir = tmp_path / "interrupted"
    proc = cli.start(*POP, "--iterations", 2000, "--run-dir", run_dir)
    cli.wait_for(proc, r"^interval +1/1000 ")
    proc.send_signal(signal.SIGINT)
    out = cli.finish(proc)
    assert proc.returncode == 0, out
    done = out.count("\ninterval ")
    assert f"interrupted after {done * INTERVAL:,} of 2,000 iterations" in out
    assert f"resume with: python -m jaxtrade.population --run-dir {run_dir} --resume" in out
    assert len(records(run_dir)) == done * MEMBERS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    cps = population_run.PopulationCheckpoints(run_dir, 3)
    try:
        assert cps.latest_step() == done
    finally:
        cps.close()


def test_archive_takes_each_slots_best_state(resumed):
    """--archive DIR: each slot's best-scored model state goes into the model archive (as a
    single run's best checkpoint: validation chooses), a member at the interval it scored
    best, with the parameters it had then; each a single run's checkpoint whose deflated
    Sharpe counts every member's every validation."""
    from jaxtrade import archive
    from jaxtrade import checkpoint as ckpt

    run_dir, out = resumed
    recs = records(run_dir)
    expected = set()
    for slot in range(MEMBERS):
        scored = [r for r in recs if r["slot"] == slot and r["score"] is not None]
        top = max(scored, key=lambda r: (r["score"], -r["interval"]))  # earliest of ties
        expected.add((top["id"], top["interval"], top["score"]))
    entries = archive.Archive(run_dir.parent / "archive").entries()
    assert {(e["source"]["member"], e["source"]["interval"], e["val_score"])
            for e in entries} == expected
    assert all(e["source"]["run"] == str(run_dir.absolute()) for e in entries)
    assert all(e["iteration"] == e["source"]["interval"] * INTERVAL for e in entries)
    assert f"archived {entries[0]['id']} in " in out and " at interval " in out
    for e in entries:  # the parameters it had when it was scored (its slot kept them)
        rec = next(r for r in recs if r["id"] == e["source"]["member"]
                   and r["interval"] == e["source"]["interval"])
        if rec["replaced_by"] is not None:
            continue
        pop, _ = restored(run_dir, rec["interval"])
        model = ckpt.select(run_dir.parent / "archive" / "models" / e["id"], "best")
        saved = ckpt._read(model, lambda m, s=model.step: m.restore(s, args=ckpt.ocp.args.Composite(
            state=ckpt.ocp.args.StandardRestore())).state)
        for x, y in zip(jax.tree.leaves(saved["params"]), jax.tree.leaves(
                jax.tree.map(lambda v, i=rec["slot"]: np.asarray(v)[i], pop.members.params)),
                strict=True):
            np.testing.assert_array_equal(np.asarray(x), y)
    best = ckpt.select(run_dir.parent / "archive" / "models" / entries[0]["id"], "best")
    assert best.meta["selection"]["validations"] == 2 * MEMBERS  # members x walks


def test_archive_add_of_a_population_takes_the_same_states(whole, resumed, tmp_path):
    """`python -m jaxtrade.archive add RUN` reads each slot's best-scored state from the
    run's last population checkpoint: the models --archive took at the end of the run."""
    from jaxtrade import archive

    code, out, err = run_cli_of(archive.main, ["--archive", tmp_path / "a", "add", whole[0]])
    assert code == 0, err
    added = {(e["source"]["member"], e["source"]["interval"], e["val_score"], e["iteration"])
             for e in archive.Archive(tmp_path / "a").entries()}
    at_end = {(e["source"]["member"], e["source"]["interval"], e["val_score"], e["iteration"])
              for e in archive.Archive(resumed[0].parent / "archive").entries()}
    assert added == at_end and len(added) == MEMBERS


def test_evaluate_points_a_population_run_to_the_archive(whole, capsys):
    from jaxtrade import evaluate

    run_dir, _ = whole
    assert evaluate.main(["--run-dir", str(run_dir)]) == 2
    assert "is a population run: archive its members" in capsys.readouterr().err


def test_a_run_stopped_before_its_first_interval_leaves_the_directory_free(tmp_path):
    """Stopped while compiling, a run has written an empty population.jsonl and no
    checkpoint: a new run may start there (it is not a run to resume)."""
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    (run_dir / population_run.POPULATION_FILE).write_text("")
    code, _, err = run_cli([*POP, "--iterations", INTERVAL, "--run-dir", run_dir, "-q"])
    assert code == 0, err
    assert len(records(run_dir)) == MEMBERS
    (run_dir.parent / "held").mkdir()
    (run_dir.parent / "held" / population_run.POPULATION_FILE).write_text("{}\n")
    code, _, err = run_cli([*POP, "--iterations", INTERVAL, "--run-dir", run_dir.parent / "held"])
    assert code == 2 and "already holds a run (population.jsonl)" in err

"""`--walk-forward K` (`jaxtrade.walk_forward`, `jaxtrade.walk_forward_report`): no member reads
a bar at or after its fold's start, in training or validation (bounds per member, and bars
poisoned with NaN from each fold's start leave that member's training and validation bit
for bit unchanged); the fold layout's arithmetic; a tiny run end to end, its resume bit for
bit, and evaluate's concatenated report; one-line errors."""

import contextlib
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxtrade import evaluate, parallel, population_run
from jaxtrade import walk_forward as wf
from jaxtrade.errors import UsageError
from tests.test_train import TINY  # 4 assets x 380 bars, 8 envs x 8 steps, episodes of 32

K = 3
STEPS = 64  # timesteps per iteration per member
WF = [*TINY, "--walk-forward", str(K), "--pbt-interval", str(STEPS), "--seed", "1"]
# TINY's market: 380 bars, train [0, 228), validation [228, 304), test [304, 380)
N_BARS, VAL_START, TEST_START, EPISODE = 380, 228, 304, 32


def run_cli(main, argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------- the leakage guarantee
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A walk-forward PopulationRun built (trainer, members, per-member env params), its one
    iteration program and its validation evaluators compiled; nothing trained."""
    args = population_run.build_parser().parse_args(
        [str(a) for a in [*WF, "--iterations", "2", "-q",
                          "--run-dir", tmp_path_factory.mktemp("wf") / "built"]])
    p, pbt, _ = population_run.plan(args)
    from jaxtrade.engine.console import Console

    run = population_run.PopulationRun(p, pbt, False, Console(0, False))
    run.build()
    run.program(1)
    run.compile_evaluation()
    return run


def test_member_bounds_end_before_each_fold(built):
    """Training episodes of member k start in [1, train_hi - 1 - L] and read no bar after
    train_hi - 1; its validation walk trades at [val_lo, start - 2] and marks at start - 1."""
    folds = built.pbt.folds
    params = jax.device_get(built.env_params)
    assert built.env_axes.start_min == 0 and built.env_axes.market.price is None
    for k, f in enumerate(folds):
        assert int(params.end[k]) == f.train[1] - 1 < f.validation[0] < f.start
        assert int(params.start_min[k]) == 1
        assert int(params.start_max[k]) == f.train[1] - 1 - EPISODE
    passes = wf.validation_params(built.trainer.env, built.cfg.env, folds)
    for f, v in zip(folds, passes, strict=True):
        assert int(v.start_min) == int(v.start_max) == f.validation[0]
        assert int(v.end) == f.start - 1  # the last bar it reads: the one before the fold
    # the devices hold nothing of the last fold's test block
    assert built.plan.market.n_bars == folds[-1].start


def _poisoned(market, first: int):
    """`market` with every bar from `first` on NaN (prices, features, scores)."""
    def cut(x):
        x = np.array(x)
        x[first:] = np.nan
        return jnp.asarray(x)

    return market.replace(price=cut(market.price), features=cut(market.features),
                          scores=cut(market.scores))


def _train(run, env_params):
    """Every member after one iteration from the built (untrained) population: params."""
    pop, _ = run.program(1)(parallel.copy(run.pop), env_params)  # it donates its input
    return jax.device_get(pop.members.params)


def test_no_member_reads_its_fold_or_later(built):
    """Poison every bar from fold k's start on: member k's training step and validation walk
    are bit for bit the clean ones (and finite). Poisoning from inside its training range
    does change them: the check can fail."""
    run, folds = built, built.pbt.folds
    clean = _train(run, run.env_params)
    passes = wf.validation_params(run.trainer.env, run.cfg.env, folds)
    health = {"explained_variance": 0.5, "entropy": 1.0, "approx_kl": 0.01, "clip_frac": 0.1}
    take = lambda tree, k: jax.tree.map(lambda x: x[k], tree)

    def score(k, market):
        out = run.evaluator[k](take(clean, k), health, passes[k].replace(market=market))
        return float(out["score"]), float(out["sharpe"])

    for k, f in enumerate(folds):
        market = _poisoned(run.env_params.market, f.start)
        dirty = _train(run, run.env_params.replace(market=market))
        for a, b in zip(jax.tree.leaves(take(clean, k)), jax.tree.leaves(take(dirty, k)),
                        strict=True):
            assert np.all(np.isfinite(b)) and np.array_equal(a, b), f"fold {f.index}"
        assert score(k, market) == score(k, run.env_params.market)
        assert np.isfinite(score(k, market)).all()
        if k + 1 < len(folds):  # the next member validates on these bars: its walk sees them
            assert not np.isfinite(score(k + 1, market)[1])
    # the controls: bars member 0 does read
    f = folds[0]
    inside = _poisoned(run.env_params.market, f.train[1] // 2)
    dirty = _train(run, run.env_params.replace(market=inside))
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(take(clean, 0)), jax.tree.leaves(take(dirty, 0)), strict=True))
    assert not np.isfinite(score(0, _poisoned(run.env_params.market, f.start - 1))[1])


# ---------------------------------------------------------------- the layout
def test_layout_arithmetic():
    folds = wf.layout(N_BARS, VAL_START, TEST_START, K, EPISODE)
    # 75 test steps (bars 304..378 traded, 379 the last mark) in 3 blocks of 25; V = 76
    assert folds == (
        wf.Fold(1, (0, 228), (228, 304), (304, 329)),
        wf.Fold(2, (0, 253), (253, 329), (329, 354)),
        wf.Fold(3, (0, 278), (278, 354), (354, 379)),
    )
    # uneven: 10 steps in 3 blocks -> 3, 3, 4; blocks consecutive, each validation ends at
    # its fold's start and is as long as the run's validation range
    folds = wf.layout(111, 80, 100, 3, 16)
    assert [f.test for f in folds] == [(100, 103), (103, 106), (106, 110)]
    for a, b in zip(folds, folds[1:], strict=False):
        assert a.test[1] == b.test[0]
    for f in folds:
        assert f.train == (0, f.validation[0]) and f.validation[1] == f.start
        assert f.validation[1] - f.validation[0] == 20


@pytest.mark.parametrize("args, message", [
    ((N_BARS, VAL_START, TEST_START, 1, EPISODE), "needs K >= 2 folds, got 1"),
    ((N_BARS, TEST_START, TEST_START, 2, EPISODE), "this run has no validation range"),
    ((N_BARS, VAL_START, TEST_START, 40, EPISODE),
     "the test range has 75 steps, fewer than 2 per fold"),
    ((N_BARS, VAL_START, TEST_START, 3, 240), "fold 1 trains on 228 bars, too few for one "
                                              "episode of 240 steps (needs 242)"),
])
def test_layout_errors(args, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        wf.layout(*args)


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def wf_run(tmp_path_factory):
    """2 intervals of 1 iteration, then evaluate: (run dir, training stdout, evaluate's)."""
    run_dir = tmp_path_factory.mktemp("wf") / "run"
    code, out, err = run_cli(population_run.main, [*WF, "--iterations", "2",
                                                   "--run-dir", run_dir])
    assert code == 0, err
    code, report, err = run_cli(evaluate.main, ["--run-dir", run_dir])
    assert code == 0, err
    return run_dir, out, report


def test_run_trains_folds_independently(wf_run):
    run_dir, out, _ = wf_run
    assert "walk-forward: 3 folds, one member each, trained independently" in out
    assert "  fold 2: train 2010-02-01 .. " in out and "(25 steps)" in out
    assert "pbt:" not in out and "members ranked by val_score" not in out
    assert json.loads((run_dir / population_run.SETTINGS_FILE).read_text()) == {
        "members": K, "interval": 1, "fraction": 0.2, "walk_forward": K}
    recs = [json.loads(x) for x in
            (run_dir / population_run.POPULATION_FILE).read_text().splitlines()]
    assert [r["interval"] for r in recs] == [1] * K + [2] * K
    assert all(r["replaced_by"] is None for r in recs)  # nobody copied, ever
    assert [r["id"] for r in recs] == [0, 1, 2] * 2
    assert len({json.dumps(r["hparams"], sort_keys=True) for r in recs}) == 1  # the config's
    record = json.loads((run_dir / wf.WALK_FORWARD_FILE).read_text())
    assert wf.read_folds(run_dir) == wf.layout(N_BARS, VAL_START, TEST_START, K, EPISODE)
    assert record["members"][0]["test"]["marked_until"] == record["members"][1]["test"]["start"]
    market = json.loads((run_dir / "market.json").read_text())
    assert market["test"]["bars"] == N_BARS - TEST_START  # the whole market's split
    # no "best" across folds (their scores are on different slices): each fold's last one
    last = [r["score"] for r in recs[-K:]]
    assert "\nbest: " not in out
    assert ("last val_score per fold, each on its own validation slice (they do not compare "
            "across folds): " + ", ".join(f"fold {k} {v:+.2f}" for k, v in
                                          enumerate(last, 1))) in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"] is None and summary["fold_scores"] == last


def test_evaluate_reports_the_concatenated_folds(wf_run):
    run_dir, _, out = wf_run
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    folds = pd.read_csv(run_dir / "eval" / "folds.csv")
    equity = pd.read_csv(run_dir / "eval" / "equity.csv")
    assert list(folds["fold"]) == [1, 2, 3] and list(folds["steps"]) == [25, 25, 25]
    assert list(folds["slot"]) == [0, 1, 2]
    assert report["range"]["steps"] == N_BARS - 1 - TEST_START == len(equity) - 1
    # the concatenation is the folds' passes one after the other
    for name, col in (("policy", "policy_return"), ("best_fixed", "baseline_return"),
                      ("buy_and_hold", "buy_and_hold_return")):
        total = np.prod(1.0 + folds[col].to_numpy()) - 1.0
        assert report["strategies"][name]["total_return"] == pytest.approx(total, rel=1e-4,
                                                                           abs=1e-6)
        assert equity[name].iloc[-1] - 1.0 == pytest.approx(total, rel=1e-4, abs=1e-6)
    # each fold's checkpoint is its member's best validated interval
    recs = [json.loads(x) for x in
            (run_dir / population_run.POPULATION_FILE).read_text().splitlines()]
    for row in folds.itertuples():
        mine = [r for r in recs if r["slot"] == row.slot]
        assert row.val_score == pytest.approx(max(r["score"] for r in mine))
    # the deflated Sharpe counts every member's every validation
    policy = report["statistics"]["strategies"]["policy"]
    assert policy["n_trials"] == 2 * K
    assert report["baseline"]["per_fold"] == list(folds["baseline"])
    assert "concatenated out-of-sample: 2011-04-01 .. 2011-07-15 (75 steps)" in out
    assert out.splitlines()[-1].startswith("wrote report.json, folds.csv, equity.csv, "
                                           "equity.png to ")


def test_resume_is_bit_exact(wf_run, tmp_path):
    """1 interval, then --resume for a second: the same records as 2 intervals at once (the
    members' per-fold env params are rebuilt from the config, not saved)."""
    run_dir, _, _ = wf_run
    split = tmp_path / "split"
    code, _, err = run_cli(population_run.main, [*WF, "--iterations", "1", "--run-dir", split,
                                                 "-q"])
    assert code == 0, err
    code, out, err = run_cli(population_run.main, ["--run-dir", split, "--resume",
                                                   "--iterations", "2", "-q"])
    assert code == 0, err
    code, _, err = run_cli(population_run.main, ["--run-dir", split, "--resume",
                                                 "--iterations", "3", "--walk-forward", "2"])
    assert code == 2 and "--walk-forward 2: the run was saved with 3 folds" in err

    def lines(d):
        return [json.loads(x) for x in
                (d / population_run.POPULATION_FILE).read_text().splitlines()]

    assert lines(split) == lines(run_dir)


def test_evaluate_refuses_other_ranges(wf_run):
    run_dir, _, _ = wf_run
    code, out, err = run_cli(evaluate.main, ["--run-dir", run_dir, "--range", "validation"])
    assert code == 2 and "--range: a walk-forward run is evaluated on its folds' test " in err


def test_archive_refuses_a_walk_forward_run(wf_run, tmp_path):
    """Its members trained on different bars and validate on slices that hold other folds'
    test bars: no score ranks them, so none enters the archive."""
    from jaxtrade import archive

    run_dir, _, _ = wf_run
    code, out, err = run_cli(archive.main, ["--archive", tmp_path / "a", "add", run_dir])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "a walk-forward run (walk_forward.json)" in err and "jaxtrade.evaluate" in err


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("extra, message", [
    (["--walk-forward", "1"], "--walk-forward K needs K >= 2 folds, got 1"),
    (["--walk-forward", "3", "--population", "4"],
     "--walk-forward 3 trains 3 members, one per fold; drop --population 4"),
    (["--walk-forward", "3", "--pbt-fraction", "0.5"],
     "--pbt-fraction does not combine with --walk-forward"),
    (["--walk-forward", "2", "--market", "worlds"], "procedural worlds have none"),
    (["--walk-forward", "40"], "the test range has 75 steps, fewer than 2 per fold"),
])
def test_bad_flags_are_one_line_errors(extra, message, tmp_path):
    argv = [*TINY, "--iterations", "2", "--run-dir", tmp_path / "x", *extra]
    code, out, err = run_cli(population_run.main, argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err

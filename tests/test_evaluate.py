"""Validation walks during training (they choose), and `python -m jaxtrade.evaluate` (the test
range reports): files, numbers, the baseline chosen on validation, honest statistics, user
data and one-line errors."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxtrade import checkpoint as ckpt
from jaxtrade import evaluate, train
from jaxtrade import metrics as M
from jaxtrade.data import SyntheticConfig, build_market, synthetic_panel
from jaxtrade.engine.assess import select_range
from jaxtrade.envs import N_REGIMES, PortfolioEnv, Regime
from jaxtrade.errors import UsageError
from jaxtrade.evaluation import BASELINES, STRATEGIES, baseline_actions, choose_baseline, walk_key
from tests.conftest import TRAINED_EVAL_EVERY, TRAINED_ITERATIONS, long_frame

# The trained run's market (tests/test_train.py TINY: 4 assets x 400 bars): 380 bars with
# features, 228 train, 76 validation, 76 test (the default 60/20/20).
RUN_PANEL = SyntheticConfig(n_assets=4, n_bars=400, seed=0)
RANGE_STEPS = 75  # a walk of a 76-bar range
METRIC_KEYS = set(M.compute_all(jnp.ones(3), jnp.ones((2, 5)), jnp.zeros(2, jnp.int32),
                                jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), 252.0,
                                hold=Regime.HOLD, n_actions=N_REGIMES))


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def test_range_evaluation(trained_run, tmp_path_factory):
    """`python -m jaxtrade.evaluate --run-dir RUN` (best checkpoint, the test range)."""
    run_dir, _ = trained_run
    out_dir = tmp_path_factory.mktemp("eval")
    code, out = run_main(["--run-dir", str(run_dir), "--out", str(out_dir)])
    assert code == 0
    return out_dir, out


@pytest.fixture(scope="module")
def validation_evaluation(trained_run, tmp_path_factory):
    """The same on `--range validation`, the range that chose the checkpoint."""
    run_dir, _ = trained_run
    out_dir = tmp_path_factory.mktemp("eval-validation")
    code, out = run_main(["--run-dir", str(run_dir), "--range", "validation",
                          "--out", str(out_dir)])
    assert code == 0
    return out_dir, out


def run_main(argv):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = evaluate.main(argv)
    return code, buf.getvalue()


def read_outputs(out_dir):
    report = json.loads((out_dir / "report.json").read_text())
    equity = pd.read_csv(out_dir / "equity.csv")
    return report, equity


# --------------------------------------------------------------------- during training
def test_training_logs_validation_metrics_and_score_on_eval_iterations(trained_run):
    run_dir, out = trained_run
    rows = rows_of(run_dir)
    evaluated = [r["iteration"] for r in rows if "val_score" in r]
    assert evaluated == list(range(TRAINED_EVAL_EVERY, TRAINED_ITERATIONS + 1,
                                   TRAINED_EVAL_EVERY))
    for r in rows:
        keys = {k for k in r if k.startswith("val_")}
        if r["iteration"] in evaluated:
            assert keys == {f"val_{k}" for k in METRIC_KEYS | {"reward_mean", "score"}}
            assert len(r["val_action_freq"]) == 12
            assert math.isclose(sum(r["val_action_freq"]), 1.0, abs_tol=1e-5)
            # The score: trading terms of the validation walk, RL health of the iteration.
            expected = M.model_score(
                r["val_avg_trade_return"], r["val_win_rate"], r["val_reward_mean"],
                r["explained_variance"], r["entropy"], r["approx_kl"], r["clip_frac"],
                r["valid_actions"])
            assert r["val_score"] == pytest.approx(float(expected), abs=1e-4)
        else:
            assert not keys
    # One compile of the evaluation, reused by every evaluation; one log line each.
    assert out.count("compiling evaluation...") == 1
    assert out.count("validation return") == len(evaluated)
    for r in rows:  # the portfolio's val line (`PortfolioEnv.evaluation_line`), as documented
        if r["iteration"] in evaluated:
            assert (f"val  {r['iteration']:>5} | validation return "
                    f"{100 * r['val_total_return']:+.2f}% | Sharpe {r['val_sharpe']:+.2f} | "
                    f"max DD {100 * r['val_max_drawdown']:.2f}% | score "
                    f"{r['val_score']:+.2f}") in out
    assert f"({RANGE_STEPS} steps) every {TRAINED_EVAL_EVERY} iterations" in out
    assert "test: 76 bars" in out and "withheld: training never reads them" in out

    record = json.loads((run_dir / "market.json").read_text())
    assert record["symbols"] == ["SYN00", "SYN01", "SYN02", "SYN03"] and record["n_assets"] == 4
    assert record["format"] == 2
    assert [record[r]["bars"] for r in ("train", "validation", "test")] == [228, 76, 76]
    assert record["validation"]["start"] > record["train"]["end"]
    assert record["test"]["start"] > record["validation"]["end"]
    assert len(record["stats"]["mean"]) == len(record["stats"]["names"]) == 9


def test_best_checkpoint_follows_val_score_and_counts_the_candidates(trained_run):
    run_dir, out = trained_run
    rows = rows_of(run_dir)
    scores = {r["iteration"]: r["val_score"] for r in rows if "val_score" in r}
    new_bests, best = [], -math.inf
    for it, s in scores.items():
        if s > best:
            new_bests.append(it)
            best = s
    # --save-every 0: a checkpoint at every new best validation score, and the final one.
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir())
    assert steps == sorted(set(new_bests) | {TRAINED_ITERATIONS})
    chosen = ckpt.select(run_dir, "best")
    assert chosen.step == max(scores, key=scores.get)
    assert chosen.meta["metrics"]["val_score"] == max(scores.values())
    latest = ckpt.latest(run_dir).meta
    assert latest["best"] == {
        "iteration": chosen.step, "score": max(scores.values()), "metric": "val_score"}
    assert latest["selection"] == {
        "metric": "val_score", "validations": len(scores), "since_best":
            len([i for i in scores if i > chosen.step]),
        "best_iteration": chosen.step, "best_score": max(scores.values()),
        "sharpes": [r["val_sharpe"] for r in rows if "val_score" in r]}
    assert ckpt.select(run_dir, "latest").step == TRAINED_ITERATIONS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best"]["iteration"] == chosen.step
    assert summary["selection"]["validations"] == len(scores)
    assert (f"best: iteration {chosen.step} by val_score {max(scores.values()):+.2f}, chosen on "
            f"validation among {len(scores)} candidates") in out


def test_eval_every_without_a_validation_range_is_refused_by_the_cli(tmp_path, capsys):
    """One line, exit 2, before anything is written (`tests/engine/test_start.py` checks the
    rule itself)."""
    argv = ["--market", "fixed", "--hyperparams", "n_bars=400,n_assets=4", "--episode-length", "32",
            "--val-fraction", "0", "--eval-every", "5", "--run-dir", str(tmp_path / "r")]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --eval-every 5 walks the validation")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, new", [
    (["--eval-fraction", "0.2"], "--val-fraction and --test-fraction"),
    (["--split-date", "2015-01-02"], "--split-dates VAL_DATE,TEST_DATE"),
])
def test_older_split_flags_name_the_new_ones(argv, new, tmp_path, capsys):
    assert train.main([*argv, "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {argv[0]} was replaced by {new}: data is split into train, "
                   f"validation and test ranges"]


# ------------------------------------------------------------------- the evaluate CLI
def test_evaluate_reports_the_test_range_against_the_baseline_chosen_on_validation(
        trained_run, test_range_evaluation):
    run_dir, _ = trained_run
    out_dir, out = test_range_evaluation
    report, equity = read_outputs(out_dir)
    record = json.loads((run_dir / "market.json").read_text())
    best = ckpt.select(run_dir, "best")
    n_validations = len([r for r in rows_of(run_dir) if "val_score" in r])

    assert report["checkpoint"]["iteration"] == best.step
    assert report["checkpoint"]["requested"] == "best" and report["actions"] == "greedy"
    # The env settings the passes used: frictions, penalties, decide_every; not the
    # training-only ones the passes override (episode cuts, ruin, bootstrap, order, reward).
    assert set(report["env"]) == {"slippage", "spread", "impact", "turnover_penalty",
                                  "drawdown_penalty", "decide_every"}
    assert report["range"] == {"name": "test", "start": record["test"]["start"],
                               "end": record["test"]["end"], "bars": RANGE_STEPS + 1,
                               "steps": RANGE_STEPS,
                               "what": "the run's test range, never read in training"}
    assert report["selection"]["range"] == "validation"
    assert report["selection"]["candidates"] == n_validations
    assert list(report["strategies"]) == list(STRATEGIES)
    for name, m in report["strategies"].items():
        assert METRIC_KEYS | {"reward_mean", "final_value", "psr", "dsr"} == set(m), name
        assert m["total_return"] == pytest.approx(equity[name].iloc[-1] - 1.0, abs=1e-6)

    # The baseline to beat: the best validation Sharpe of the 32 fixed strategies.
    base = report["baseline"]
    assert base["chosen_on"] == "validation" and base["validation"] == record["validation"]
    assert set(base["validation_sharpe"]) == set(BASELINES) and len(BASELINES) == 32
    assert base["name"] == max(base["validation_sharpe"], key=base["validation_sharpe"].get)

    # Statistics: the policy deflated by the validation walks that chose it, the baseline by
    # the distinct strategies compared (some are one position: identical validation
    # Sharpes); PSR and DSR are probabilities, DSR <= PSR.
    st = report["statistics"]
    policy, chosen = st["strategies"]["policy"], st["strategies"][base["name"]]
    distinct = len({round(v, 9) for v in base["validation_sharpe"].values()})
    assert base["candidates"] == distinct and 20 < distinct <= 32
    assert policy["n_trials"] == n_validations and chosen["n_trials"] == distinct
    for s_ in (policy, chosen):
        assert 0 <= s_["dsr"] <= s_["psr"] <= 1
    assert policy["sharpe_annualised"] == pytest.approx(
        report["strategies"]["policy"]["sharpe"], abs=2e-3)
    diff = st["sharpe_difference"]
    assert diff["sharpe_diff"] == pytest.approx(
        policy["sharpe_annualised"] - chosen["sharpe_annualised"], abs=1e-9)
    assert diff["ci_low"] <= diff["sharpe_diff"] <= diff["ci_high"] and diff["level"] == 0.9
    assert diff["beat_with_confidence"] == (diff["ci_low"] > 0)
    ann = st["policy_annual_return"]
    assert ann["estimate"] == pytest.approx(report["strategies"]["policy"]["annual_return"],
                                            abs=1e-4)
    assert ("beat" in report["verdict"]) and f"after {n_validations} candidates" in \
        report["verdict"]

    assert list(equity.columns) == ["date", *STRATEGIES]
    assert len(equity) == RANGE_STEPS + 1
    assert (equity.iloc[0][list(STRATEGIES)] == 1.0).all()  # the start value
    assert equity["date"].iloc[0] == record["test"]["start"]
    assert equity["date"].iloc[-1] == record["test"]["end"]
    assert (equity["cash"] == 1.0).all()
    cash = report["strategies"]["cash"]
    assert cash["costs_total"] == 0 and cash["max_drawdown"] == 0 and cash["sharpe"] == 0
    assert "cash" not in st["strategies"]  # no Sharpe ratio to test

    decisions = pd.read_csv(out_dir / "decisions.csv")
    assert len(decisions) == RANGE_STEPS
    weights = decisions[[c for c in decisions.columns if c.startswith("w_")]]
    assert list(weights.columns) == ["w_SYN00", "w_SYN01", "w_SYN02", "w_SYN03", "w_CASH"]
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)

    png = (out_dir / "equity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    lines = out.splitlines()
    assert lines[1].startswith(f"range: {record['test']['start']} .. {record['test']['end']} "
                               f"(76 bars, the run's test range, never read in training)")
    assert lines[2].startswith(f"baseline: {base['name']}, the best fixed strategy by Sharpe on "
                               f"the validation range")
    header = next(line for line in lines if line.startswith("strategy"))
    for col in ("total", "annual", "Sharpe", "PSR", "DSR", "max DD", "turnover", "costs"):
        assert col in header
    shown = [line.split()[0] for line in lines[lines.index(header) + 2:]][:5]
    assert shown == list(dict.fromkeys(["policy", base["name"], "buy_and_hold", "cash",
                                        "EQUAL_WEIGHT/1"]))
    assert any(line.startswith(f"Sharpe of policy minus {base['name']}: ") for line in lines)
    assert f"verdict: {report['verdict']}" in lines


def test_validation_range_repeats_training_and_marks_itself_optimistic(trained_run,
                                                                       validation_evaluation,
                                                                       test_range_evaluation):
    run_dir, _ = trained_run
    report, _ = read_outputs(validation_evaluation[0])
    best = ckpt.select(run_dir, "best")
    # The same numbers as the validation walk that chose this checkpoint in training.
    row = next(r for r in rows_of(run_dir) if r["iteration"] == best.step)
    policy = report["strategies"]["policy"]
    for key in ("total_return", "sharpe", "max_drawdown", "win_rate", "turnover_total"):
        assert policy[key] == pytest.approx(row[f"val_{key}"], rel=1e-5, abs=1e-6), key
    assert report["model_score"] == pytest.approx(row["val_score"], abs=1e-4)
    assert report["range"]["name"] == "validation" and "optimistic" in report["verdict"]
    # The baseline's validation Sharpe, as the chosen-on-validation walk measured it.
    chosen = read_outputs(test_range_evaluation[0])[0]["baseline"]
    for name in BASELINES:
        assert chosen["validation_sharpe"][name] == pytest.approx(
            report["strategies"][name]["sharpe"], rel=1e-5, abs=1e-6), name


def test_baselines_equal_direct_env_walks(test_range_evaluation):
    """EQUAL_WEIGHT/1: the env stepped with EQUAL_WEIGHT at every bar (the same step keys);
    buy_and_hold: the first bar's trade cost, then the assets' own price paths."""
    report, equity = read_outputs(test_range_evaluation[0])
    market = build_market(synthetic_panel(RUN_PANEL), episode_length=32)
    env = PortfolioEnv(market)
    first = market.test_start
    params = env.make_params("test", start=first, episode_length=RANGE_STEPS,
                             ruin_fraction=0.0)
    step = jax.jit(env.step)
    _, state = env.reset(jax.random.key(0), params)
    values = [1.0]
    for key in jax.random.split(walk_key(report["seed"]), RANGE_STEPS):
        _, state, _, done, info = step(key, state, jnp.int32(Regime.EQUAL_WEIGHT), params)
        values.append(float(info["value"]))
    assert bool(done)  # the range ends with the walk
    np.testing.assert_allclose(equity["EQUAL_WEIGHT/1"], values, rtol=2e-6)

    price = np.asarray(market.data.price)[first:first + RANGE_STEPS + 1]
    paid = report["strategies"]["buy_and_hold"]["costs_total"]
    assert paid > 0
    held = (1.0 - paid) * np.mean(price / price[0], axis=1)
    np.testing.assert_allclose(equity["buy_and_hold"].iloc[1:], held[1:], rtol=2e-6)
    assert set(BASELINES) <= set(equity.columns)


def test_fixed_regimes_rebalance_every_k_bars_and_hold_between():
    actions = dict(zip(BASELINES, baseline_actions(7), strict=True))
    m, h = Regime.MOMENTUM, Regime.HOLD
    assert list(actions["MOMENTUM/1"]) == [m] * 7
    assert list(actions["MOMENTUM/5"]) == [m, h, h, h, h, m, h]
    assert list(actions["MOMENTUM/20"]) == [m] + [h] * 6
    assert list(actions["buy_and_hold"]) == [Regime.EQUAL_WEIGHT] + [h] * 6
    assert {name.split("/")[0] for name in BASELINES[2:]} == {
        r.name for r in Regime if r not in (Regime.HOLD, Regime.FULL_CASH)}
    sharpes = {name: 0.0 for name in BASELINES} | {"LOW_VOL/5": 0.4, "RISK_ON/20": 0.4}
    assert choose_baseline(sharpes) == "LOW_VOL/5"  # ties go to the earlier one


def test_evaluate_on_a_user_csv_with_other_dates(csv_evaluation, user_csv):
    out_dir, out = csv_evaluation
    path, frame = user_csv
    report, equity = read_outputs(out_dir)
    dates = sorted(frame["date"].unique())
    # The whole file, from the first bar with a complete feature window and one before it.
    assert report["range"]["what"] == "the whole data"
    assert report["range"]["start"] == f"{dates[21]:%Y-%m-%d}"
    assert report["range"]["end"] == f"{dates[-1]:%Y-%m-%d}"
    assert len(equity) == len(dates) - 21 and (equity.iloc[0][list(STRATEGIES)] == 1.0).all()
    assert report["data"]["source"] == str(path)
    assert list(report["strategies"]) == list(STRATEGIES)
    assert all(math.isfinite(m["sharpe"]) for m in report["strategies"].values())
    assert f"of {path}" in out
    # Other data is compared with the baseline the run's own validation range chose.
    assert report["range"]["name"] is None and report["baseline"]["chosen_on"] == "validation"


def test_asset_count_mismatch_is_one_line_naming_both_counts(trained_run, tmp_path, capsys):
    panel = synthetic_panel(SyntheticConfig(n_assets=3, n_bars=60, seed=3))
    path = tmp_path / "three.csv"
    long_frame(panel).to_csv(path, index=False)
    assert evaluate.main(["--run-dir", str(trained_run[0]), "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "trained on 4 assets (SYN00, SYN01, SYN02, SYN03) but the data has 3" in err[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "newest"],
         "checkpoint must be 'best', 'latest' or an iteration number, got 'newest'"),
        (["--checkpoint", "5"], "no checkpoint at iteration 5 (kept: "),
        (["--start", "2011-06-01", "--end", "2011-05-01"], "--start 2011-06-01 is after --end"),
        (["--start", "someday"], "--start 'someday' is not a date"),
        (["--start", "2030-01-01"], "holds fewer than 2 bars with features"),
        (["--data", "/nonexistent/prices.csv"], "/nonexistent/prices.csv: no such file"),
        (["--range", "test", "--data", "x.csv"], "--range picks one of the run's own ranges"),
        (["--range", "train", "--start", "2011-01-03"], "--range picks one of the run's own"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, trained_run, capsys):
    assert evaluate.main(["--run-dir", str(trained_run[0]), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_missing_run_or_checkpoint_from_the_command_line(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtrade.evaluate", "--run-dir", str(tmp_path / "empty")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (f"error: {tmp_path / 'empty'}: no complete checkpoint in "
                                   f"{tmp_path / 'empty' / 'checkpoints'}")
    assert evaluate.main(["--run-dir", str(tmp_path / "missing")]) == 2


def test_select_range():
    dates = pd.date_range("2020-01-01", periods=10, freq="D")
    assert select_range(dates, None, None, None) == (1, 9, [])
    assert select_range(dates, None, None, ("2020-01-03", "2020-01-06"))[:2] == (2, 5)
    first, last, notes = select_range(dates, "2019-12-01", "2020-01-04", None)
    assert (first, last) == (1, 3) and "starts at 2020-01-02" in notes[0]
    intraday = pd.date_range("2020-01-01 10:00", periods=12, freq="h")
    assert select_range(intraday, None, "2020-01-01", None)[1] == 11  # the whole day
    with pytest.raises(UsageError, match="fewer than 2 bars"):
        select_range(dates, "2020-01-10", None, None)


@pytest.mark.parametrize("argv", [["--n-env", "8"], ["--check", "latest"], ["--samp"]])
def test_flag_abbreviations_are_rejected(argv, capsys):
    """A shortened flag (`--check` for --checkpoint) is an error, never another flag."""
    parser = evaluate.build_parser()
    assert parser.parse_args(["--run-dir", "r", "--checkpoint", "latest", "--sample"]).sample
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--run-dir", "r", *argv])
    assert info.value.code == 2
    assert f"unrecognized arguments: {' '.join(argv)}" in capsys.readouterr().err

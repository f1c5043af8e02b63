"""A run on procedural worlds through the CLI: the pool, its refresh without recompiling,
validation worlds, market.json's record, resume, and `evaluate` on the test worlds."""

import contextlib
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from jaxtrade import evaluate, train
from jaxtrade.engine.worlds_report import median_interval, sign_test
from jaxtrade.evaluation import BASELINES
from jaxtrade.worlds import RunWorlds

WORLDS = [
    "--market", "worlds", "--worlds", "4", "--world-bars", "120", "--val-worlds", "3",
    "--test-worlds", "5", "--encoder", "set",
    "--hidden-dim", "8", "--n-gru-layers", "1", "--n-envs", "8", "--n-steps", "8",
    "--n-minibatches", "2", "--ppo-epochs", "1", "--critic-epochs", "1", "--episode-length", "32",
]


def run(module, argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = module.main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def worlds_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("worlds") / "run"
    # Calls of up to 3 iterations, cut at every refresh: 2 + 2.
    code, text = run(train, [*WORLDS, "--iterations", "4", "--refresh-every", "2",
                             "--iterations-per-call", "3", "--eval-every", "2",
                             "--run-dir", str(run_dir)])
    assert code == 0, text
    return run_dir, text


def test_the_banner_names_the_worlds_and_the_pool_refreshes_without_compiling_again(worlds_run):
    run_dir, text = worlds_run
    assert ("market: procedural worlds (seed 0): 4 training worlds of 100 bars, 4-24 assets "
            "(padded to 24)") in text
    assert "3 validation worlds, 5 test worlds" in text
    assert "a fresh training pool every 2 iterations" in text
    assert "test: 5 test worlds, a seed stream of their own" in text
    assert "worlds: training pool 1 (train worlds 4..7)" in text
    assert "training pool 2" not in text  # iteration 4 is the last: no pool for iteration 5
    assert text.count("compiling") == 2  # the program of 2 iterations and the evaluation:
    assert "compiling 2 iteration(s) per call" in text  # the swap compiled nothing again
    assert "greedy walks of 3 validation worlds (98 steps each)" in text
    assert "validation worlds: median return" in text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["refresh_s"] > 0


def test_market_json_records_every_world_and_validation_rows_aggregate_worlds(worlds_run):
    run_dir, _ = worlds_run
    record = json.loads((run_dir / "market.json").read_text())
    worlds = RunWorlds.from_record(record["worlds"])
    assert worlds == RunWorlds(seed=0, n_worlds=4, n_bars=120, val_worlds=3, test_worlds=5,
                               refresh_every=2)
    assert len(record["worlds"]["validation"]["settings"]) == 3
    assert len(record["worlds"]["test"]["settings"]) == 5
    assert all(4 <= s["n_assets"] <= 24 for s in record["worlds"]["test"]["settings"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    walked = [r for r in rows if "val_score" in r]
    assert [r["iteration"] for r in walked] == [2, 4]
    for r in walked:
        assert 0.0 <= r["val_worlds_won"] <= 1.0 and r["val_sharpe_iqr"] >= 0.0
        assert len(r["val_world_sharpe"]) == 3
        assert r["val_sharpe"] == pytest.approx(np.median(r["val_world_sharpe"]), rel=1e-5)
        assert sum(r["val_action_freq"]) == pytest.approx(1.0, abs=1e-5)
        assert r["val_baseline"] in BASELINES


def test_a_resumed_run_trains_on_the_pool_of_its_iteration(worlds_run, tmp_path):
    run_dir, _ = worlds_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    code, text = run(train, ["--run-dir", str(copy), "--resume", "--iterations", "6"])
    assert code == 0, text
    # Iteration 5 is the first of generation 2: made before the first call.
    assert "worlds: training pool 2 (train worlds 8..11)" in text
    assert text.index("training pool 2") < text.index("it     6/6")
    # The refresh numbers the pools: a resume may not change it.
    code, text = run(train, ["--run-dir", str(copy), "--resume", "--iterations", "8",
                             "--refresh-every", "3"])
    assert code == 2 and "refresh_every" in text


def test_evaluate_reports_the_test_worlds_against_the_baseline_chosen_on_validation(
        worlds_run, tmp_path):
    run_dir, _ = worlds_run
    code, text = run(evaluate, ["--run-dir", str(run_dir), "--out", str(tmp_path / "e")])
    assert code == 0, text
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    record = json.loads((run_dir / "market.json").read_text())["worlds"]
    st = report["statistics"]
    assert report["worlds"]["stream"] == "test" and st["worlds"] == 5
    assert "augment" not in report["env"] and report["env"]["decide_every"] == 1
    assert report["baseline"]["chosen_on"] == "validation worlds"
    medians = report["baseline"]["validation_median_sharpe"]
    assert report["baseline"]["name"] == max(medians, key=medians.get)
    assert st["wins"] + st["losses"] + st["ties"] == 5
    assert st["share_won"] == pytest.approx(st["wins"] / 5)
    assert st["dsr_trials"]["candidates"] == 2  # the two validation walks of the run
    # ... deflated by how far the two candidates' Sharpe ratios spread within a world.
    assert st["dsr_trials"]["variance_of"] == "candidates' Sharpe within a world"
    walks = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if "val_world_sharpe" in line]
    per_bar = np.asarray([w["val_world_sharpe"] for w in walks]) / np.sqrt(252.0)
    assert st["dsr_trials"]["trial_sharpe_variance"] == pytest.approx(
        per_bar.var(axis=0, ddof=1).mean(), rel=1e-6)
    # Each world is the test world market.json names.
    assert [r["n_assets"] for r in report["per_world"]] == [
        s["n_assets"] for s in record["test"]["settings"]]
    table = pd.read_csv(tmp_path / "e" / "worlds.csv")
    assert len(table) == 5 and "sharpe_policy" in table and "policy_dsr" in table
    assert (tmp_path / "e" / "worlds.png").stat().st_size > 10_000
    assert "strategy (medians over worlds)" in text and "verdict:" in text
    # The validation worlds are there too, named as optimistic.
    code, text = run(evaluate, ["--run-dir", str(run_dir), "--range", "validation", "--out",
                                str(tmp_path / "v")])
    assert code == 0 and "which chose the checkpoint and the baseline: optimistic" in text
    code, text = run(evaluate, ["--run-dir", str(run_dir), "--start", "2001-01-01"])
    assert code == 2 and "this run trained on procedural worlds" in text
    assert report["selection"]["chosen_by"].startswith("best val_score on the validation worlds")
    freq = report["strategies"]["policy"]  # medians; the shares of actions are a mean
    assert freq["sharpe"]["p25"] <= freq["sharpe"]["median"] <= freq["sharpe"]["p75"]


@pytest.mark.parametrize("argv,message", [
    (["--data", "data/example_long.csv"], "market='worlds' must be fixed with --data"),
    (["--world-bars", "40"], "episode_length=32 must be <= 18 with world_bars=40"),
])
def test_worlds_settings_that_cannot_run_are_refused(argv, message, tmp_path):
    code, text = run(train, [*WORLDS, *argv, "--iterations", "1", "--run-dir",
                             str(tmp_path / "r")])
    assert code == 2 and message in text


def test_the_sign_test_and_the_interval_of_the_median():
    assert sign_test(5, 0) == pytest.approx(1 / 32)
    assert sign_test(0, 0) == 1.0
    assert sign_test(3, 3) == pytest.approx(42 / 64)
    assert sign_test(600, 500) == pytest.approx(0.00148, abs=2e-4)  # no overflow at n > 1023
    assert sign_test(500, 600) > 0.99
    x = np.linspace(-1.0, 3.0, 101)
    out = median_interval(x, seed=0)
    assert out["estimate"] == pytest.approx(1.0)
    assert out["ci_low"] < 1.0 < out["ci_high"]
    assert median_interval(x, seed=0) == out  # seeded


@pytest.mark.parametrize("n_assets", [3, 40])
def test_a_policy_trained_on_worlds_decides_on_any_number_of_assets(worlds_run, n_assets):
    from jaxtrade import load_policy
    from jaxtrade.data import SyntheticConfig, synthetic_panel
    from tests.conftest import long_frame

    run_dir, _ = worlds_run
    policy = load_policy(run_dir, "latest")
    assert policy.any_assets
    bars = long_frame(synthetic_panel(SyntheticConfig(n_assets=n_assets, n_bars=40, seed=3)))
    decision = policy(bars)
    assert len(decision.weights) == n_assets + 1
    assert sum(decision.weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert sum(decision.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_worlds_weights_evaluate_zero_shot_and_fine_tune_on_real_data(worlds_run, tmp_path):
    run_dir, _ = worlds_run
    data = "data/example_long.csv"
    # Zero-shot: the worlds model on the data, against the baseline of the validation worlds.
    code, text = run(evaluate, ["--run-dir", str(run_dir), "--data", data, "--start",
                                "2021-01-01", "--out", str(tmp_path / "zero")])
    assert code == 0, text
    report = json.loads((tmp_path / "zero" / "report.json").read_text())
    assert report["baseline"]["chosen_on"] == "validation worlds"
    assert len(report["data"]["symbols"]) == 6
    # Fine-tuning: --data makes the market fixed; the observation keeps the asset flags.
    tuned = tmp_path / "tuned"
    code, text = run(train, ["--data", data, "--checkpoint", str(run_dir / "checkpoints" / "4"),
                             "--weights-only", "--iterations", "1", "--eval-every", "1",
                             "--run-dir", str(tuned)])
    assert code == 0, text
    assert "weights of" in text and "market: 6 assets" in text
    env = json.loads((tuned / "env.json").read_text())
    assert env["obs_layout"]["mask_token"] is not None
    assert json.loads((tuned / "config.json").read_text())["data"]["market"] == "fixed"
    code, text = run(evaluate, ["--run-dir", str(tuned), "--out", str(tmp_path / "e")])
    assert code == 0, text
    assert json.loads((tmp_path / "e" / "report.json").read_text())["range"]["name"] == "test"


def test_the_market_is_worlds_for_the_portfolio_and_fixed_otherwise():
    from jaxtrade import config as C

    assert C.resolve(C.Config(), "cpu").data.market == "worlds"
    assert C.resolve(C.with_values(C.Config(), path="x.csv"), "cpu").data.market == "fixed"
    assert C.resolve(C.with_values(C.Config(), name="masked-walk"), "cpu").data.market == "fixed"
    # A run saved before worlds existed trained on one market.
    assert C.from_saved({"data": {"n_assets": 12}}).data.market == "fixed"
    with pytest.raises(C.ConfigError, match="fixed for the masked-walk env"):
        C.validate(C.with_values(C.Config(), market="worlds", name="masked-walk"))

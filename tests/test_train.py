"""`python -m jaxtrade.train`: outputs, run directory, and one-line errors."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from jaxtrade import train

TINY = [
    "--market", "fixed",
    "--hidden-dim", "8", "--n-gru-layers", "1", "--n-envs", "8", "--n-steps", "8",
    "--n-minibatches", "2", "--ppo-epochs", "1", "--critic-epochs", "1",
    "--episode-length", "32", "--hyperparams", "n_bars=400,n_assets=4",
]
REQUIRED = (
    "iteration", "timesteps", "sps", "policy_loss", "value_loss", "entropy", "approx_kl",
    "clip_frac", "explained_variance", "episode_return_mean", "actor_lr", "critic_lr", "ent_coef",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    argv = [*TINY, "--iterations", "3", "--iterations-per-call", "2", "--run-dir", str(run_dir),
            "-v"]
    return run_dir, argv


def test_run_writes_config_metrics_and_summary(tiny_run, capsys):
    run_dir, argv = tiny_run
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "model: GRU actor-critic, hidden 8 x 1 layers" in out
    assert "4 assets x 380 bars" in out and "compiling 2 iteration(s) per call" in out
    # 3 iterations at 2 per call: a second program for the last one.
    assert "compiling 1 iteration(s) per call" in out
    assert out.count("it ") >= 3 and "actions: HOLD=" in out and "grad norm actor" in out
    assert "done: 3 iterations, 192 timesteps" in out

    config = json.loads((run_dir / "config.json").read_text())
    assert config["ppo"]["n_envs"] == 8 and config["data"]["n_bars"] == 400
    assert config["run"]["run_dir"] == str(run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert [r["timesteps"] for r in rows] == [64, 128, 192]
    for key in REQUIRED:
        assert all(isinstance(r[key], float | int) for r in rows), key
    assert len(rows[0]["action_freq"]) == 12
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == 3
    assert summary["compile_s"] > 0 and summary["n_params"] > 0
    assert summary["final_metrics"]["iteration"] == 3
    # The banner's memory lines: the estimate before compiling, the measured peak (XLA's
    # buffer plan on CPU) after the first call; the estimate within 2x of the plan.
    mem = summary["memory"]
    assert "memory: estimated " in out and "budget (50% of " in out
    assert "memory: peak " in out and "(XLA buffer plan; estimated " in out
    assert mem["peak_source"] == "XLA buffer plan" and mem["budget_bytes"] > 1e9
    assert 0.5 < mem["estimated_bytes"] / mem["peak_bytes"] < 4, mem  # tiny run: market-bound
    assert (summary["n_devices"], summary["n_processes"]) == (1, 1)
    # The final checkpoint (default --save-every 10 > 3 iterations: the only one).
    assert summary["checkpoint"] == str(run_dir / "checkpoints" / "3")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["3"]
    # TensorBoard events of the same rows (tests/test_tensorboard.py reads them back).
    assert [p.name.startswith("events.out.tfevents.") for p in (run_dir / "tb").iterdir()] \
        == [True]

    # The same run directory is not silently overwritten.
    assert train.main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_non_finite_run_stops_with_the_iteration_and_quantity(tmp_path, capsys):
    argv = [*TINY, "--iterations", "2", "--run-dir", str(tmp_path / "nan"), "-q",
            "--actor-lr", "1e38", "--critic-lr", "1e38", "--max-grad-norm", "1e38"]
    assert train.main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: iteration 1: ")
    assert "became non-finite" in err[0]
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["iterations"] == 0
    assert (tmp_path / "nan" / "metrics.jsonl").read_text() == ""
    assert summary["checkpoint"] is None  # nothing non-finite is ever saved
    assert not list((tmp_path / "nan" / "checkpoints").iterdir())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--n-envs", "100", "--n-minibatches", "8"],
         "n_envs=100 must be a multiple of n_minibatches=8 (try 96 or 104)"),
        (["--hyperparams", "lr=3"], "unknown key 'lr'; valid keys: path, symbols"),
        (["--data", "/nonexistent/prices.csv"], "/nonexistent/prices.csv: no such file"),
        (["--gamma", "1.5"], "gamma=1.5 must be in [0, 1]"),
        (["--market", "fixed", "--episode-length", "5000"], "too few"),
        (["--episode-length", "5000"], "episode_length=5000 must be <= 578 with world_bars=600"),
        (["--config", "/nonexistent.toml"], "config file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert train.main([*argv, "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_bad_flag_type_is_rejected_by_argparse():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtrade.train", "--n-envs", "many"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "invalid int value: 'many'" in proc.stderr


# --- memory budget and presets ------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max-vram", "0.000001"], "not even n_envs=2 fits: it needs an estimated"),
        (["--max-vram", "0"], "--max-vram must be a positive number of GB"),
    ],
)
def test_memory_flag_errors(argv, message, tmp_path, capsys):
    assert train.main([*TINY, *argv, "--iterations", "1", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


CPU_SMALL = Path(__file__).resolve().parents[1] / "configs" / "cpu-small.toml"


def test_vram_presets_come_after_config_and_before_flags():
    from jaxtrade import config as C

    parser = train.build_parser()
    high = train.config_from_args(parser.parse_args(["--high-vram"]))
    assert (high.ppo.n_envs, high.ppo.n_steps, high.ppo.n_minibatches) == (65536, 512, 32)
    assert high.network.precision == "bf16"
    low = train.config_from_args(
        parser.parse_args(["--config", str(CPU_SMALL), "--low-vram", "--n-steps", "32"])
    )
    assert (low.ppo.n_envs, low.ppo.n_steps, low.ppo.n_minibatches) == (8192, 32, 16)
    assert low.network.hidden_dim == 64  # from the config file
    assert C.PRESET_MAX_VRAM_GB["low-vram"] == 8.0
    with pytest.raises(SystemExit):
        parser.parse_args(["--high-vram", "--low-vram"])


def test_episode_length_is_the_envs_own_unless_given():
    from jaxtrade import config as C

    parser = train.build_parser()

    def length(argv, saved=None):
        args = parser.parse_args(argv)
        cfg = (train.config_from_args(args) if saved is None
               else train.checkpoint_config(args, saved, keep_run_dir=False))
        return C.resolve(cfg, "cpu").env.episode_length

    assert length(["--env", "funding"]) == 24
    assert length(["--env", "funding", "--episode-length", "256"]) == 256
    assert length(["--env", "funding", "--hyperparams", "episode_length=48"]) == 48
    assert length([]) == 256
    # From a checkpoint: the saved length, unless the run switches env (weights only).
    portfolio = C.resolve(C.with_values(C.Config(), episode_length=100), "cpu")
    assert length(["--checkpoint", "ckpt/x"], portfolio) == 100
    assert length(["--checkpoint", "ckpt/x", "--weights-only", "--env", "funding"],
                  portfolio) == 24
    assert length(["--checkpoint", "ckpt/x", "--weights-only", "--env", "funding",
                   "--episode-length", "12"], portfolio) == 12


def test_flag_abbreviations_are_rejected(capsys):
    """`--n-env 8` is no longer read as `--n-envs 8`: argparse exits 2 naming it."""
    parser = train.build_parser()
    assert parser.parse_args(["--n-envs", "8"]).n_envs == 8
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--n-env", "8"])
    assert info.value.code == 2
    assert "unrecognized arguments: --n-env 8" in capsys.readouterr().err


@pytest.mark.slow
def test_test_range_cannot_leak_into_training_validation_or_selection(tmp_path, capsys):
    """Every price and volume of the test bars shaken (so every feature there too): training
    metrics, validation scores, the chosen checkpoint and its weights stay bit-identical;
    only `python -m jaxtrade.evaluate`'s test report changes."""
    import jax
    import numpy as np

    from jaxtrade import checkpoint as ckpt
    from jaxtrade import evaluate
    from jaxtrade.data import SyntheticConfig, build_market, synthetic_panel
    from tests.conftest import long_frame

    panel = synthetic_panel(SyntheticConfig(n_assets=4, n_bars=400, seed=5))
    first_test = build_market(panel, episode_length=32).span("test")["start"]
    frame = long_frame(panel)
    later = (frame["date"] >= first_test).to_numpy()
    rng = np.random.default_rng(0)
    shaken = frame.copy()
    factor = rng.uniform(0.5, 1.5, later.sum())  # one per bar and asset: OHLC stay consistent
    for column in ("open", "high", "low", "close"):
        shaken.loc[later, column] *= factor
    shaken.loc[later, "volume"] *= rng.uniform(0.1, 3.0, later.sum())

    runs = {}
    for name, data in (("clean", frame), ("shaken", shaken)):
        path = tmp_path / f"{name}.csv"
        data.to_csv(path, index=False)
        run_dir = tmp_path / name
        argv = [*TINY, "--data", str(path), "--iterations", "6", "--eval-every", "2",
                "--save-every", "0", "--run-dir", str(run_dir), "-q"]
        assert train.main(argv) == 0
        rows = [{k: v for k, v in json.loads(line).items() if k not in ("sps", "wall_s")}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run_dir / "summary.json").read_text())
        best = ckpt.select(run_dir, "best")
        assert evaluate.main(["--run-dir", str(run_dir), "--out", str(tmp_path / f"e-{name}")]) \
            == 0
        report = json.loads((tmp_path / f"e-{name}" / "report.json").read_text())
        runs[name] = (rows, summary, best, ckpt.read_params(best), report)
    capsys.readouterr()

    (rows_a, sum_a, best_a, params_a, rep_a), (rows_b, sum_b, best_b, params_b, rep_b) = (
        runs["clean"], runs["shaken"])
    assert sum(1 for r in rows_a if "val_score" in r) == 3
    assert rows_a == rows_b  # training and validation metrics, bit for bit
    assert sum_a["best"] == sum_b["best"] and sum_a["selection"] == sum_b["selection"]
    assert best_a.step == best_b.step
    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert rep_a["baseline"] == rep_b["baseline"]  # chosen on validation, before the test bars
    assert rep_a["range"] == rep_b["range"] and rep_a["range"]["name"] == "test"
    assert (rep_a["strategies"]["policy"]["total_return"]
            != rep_b["strategies"]["policy"]["total_return"])  # the shaking was real


@pytest.mark.slow
def test_early_stop_ends_the_run_after_n_walks_without_a_new_best(tmp_path, capsys):
    run_dir = tmp_path / "early"
    argv = [*TINY, "--iterations", "60", "--eval-every", "1", "--early-stop", "2",
            "--save-every", "0", "--run-dir", str(run_dir)]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scores = [r["val_score"] for r in rows]  # one walk per iteration
    since, top, counts = 0, -float("inf"), []
    for s in scores:
        since, top = (0, s) if s > top else (since + 1, top)
        counts.append(since)
    # It stopped at the second walk in a row without a new best, and not before.
    assert len(rows) < 60 and counts[-1] == 2 and max(counts[:-1]) < 2
    best = scores.index(top)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped_early" and summary["iterations"] == len(rows)
    assert summary["selection"]["since_best"] == 2
    assert summary["best"]["iteration"] == best + 1
    assert (f"stopped early after {len(rows)} of 60 iterations: no new best val_score in 2 "
            f"validation walks; the best is iteration {best + 1}") in out
    from jaxtrade import checkpoint as ckpt

    assert ckpt.latest(run_dir).meta["final"] is True


def test_a_single_asset_market_names_the_regimes_that_coincide(tmp_path, capsys):
    """One series (a single-series file, named after itself): the banner says which regimes
    are the same position with one asset."""
    import pandas as pd

    from jaxtrade.data import SyntheticConfig, synthetic_panel

    panel = synthetic_panel(SyntheticConfig(n_assets=1, n_bars=400, seed=2))
    path = tmp_path / "EURUSD.csv"
    pd.DataFrame({"Date": panel.dates, "Open": panel.open[:, 0], "High": panel.high[:, 0],
                  "Low": panel.low[:, 0], "Close": panel.close[:, 0],
                  "Volume": panel.volume[:, 0]}).to_csv(path, index=False)
    argv = [*TINY[:-2], "--data", str(path), "--iterations", "1", "--eval-every", "0",
            "--run-dir", str(tmp_path / "fx")]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert "market: 1 assets x 380 bars" in out and "loaded 1 symbols" in out
    assert ("  with 1 asset these regimes are the same position: EQUAL_WEIGHT = MOMENTUM = "
            "LOW_VOL = QUALITY = SIZE_SMALL = RISK_ON") in out
    assert "  with 1 asset these regimes are the same position: SAFE_MOMENTUM = SAFE_QUALITY" \
        in out


@pytest.mark.slow
def test_a_resumed_early_stopped_run_trains_until_its_next_walk(tmp_path, capsys):
    """Resumed with more iterations, a run that stopped early does not stop again before
    it has walked its validation range once more."""
    run_dir = tmp_path / "early2"
    argv = [*TINY, "--iterations", "40", "--eval-every", "2", "--early-stop", "1",
            "--save-every", "0", "--run-dir", str(run_dir), "-q"]
    assert train.main(argv) == 0
    stopped = json.loads((run_dir / "summary.json").read_text())
    assert stopped["status"] == "stopped_early"
    n = stopped["iterations"]  # a walk without a new best, at an even iteration
    assert n % 2 == 0 and n < 40
    assert train.main(["--run-dir", str(run_dir), "--resume", "--iterations", str(n + 3),
                       "-q"]) == 0
    capsys.readouterr()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows][-1] >= n + 2  # not stopped at n + 1, before a walk
    assert "val_score" in rows[n + 1]  # the walk at n + 2


def test_cli_trains_another_env_and_network_and_resumes(tmp_path, capsys):
    """`--env` and `--network` go through the same CLI code path as the defaults: a masked
    env with the feed-forward network trains, checkpoints, and resumes; changing either on
    resume is refused (they change shapes)."""
    import tests.envs.masked  # noqa: F401  (registers masked-walk)

    run_dir = tmp_path / "walk"
    argv = [*TINY, "--env", "masked-walk", "--network", "mlp", "--eval-every", "0",
            "--save-every", "2", "-v"]
    assert train.main([*argv, "--iterations", "2", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "env: masked-walk" in out and "model: MLP actor-critic (no memory), hidden 8" in out
    assert "(obs 7, 4 actions)" in out and "actions: left=" in out and "teleport=" in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["invalid_rate"] for r in rows] == [0.0, 0.0] and len(rows[0]["action_freq"]) == 4
    config = json.loads((run_dir / "config.json").read_text())
    assert config["env"]["name"] == "masked-walk" and config["network"]["kind"] == "mlp"
    # env.json names the actions, so plots and TensorBoard label the env's own actions.
    from jaxtrade import plot, tensorboard

    env_record = json.loads((run_dir / "env.json").read_text())
    assert env_record == {"name": "masked-walk", "num_actions": 4, "obs_dim": 7,
                          "obs_layout": None,  # no assets: the set encoder is not for it
                          "action_names": ["left", "right", "stay", "teleport"]}
    run = plot.read_run(run_dir)
    assert run.action_names == ("left", "right", "stay", "teleport")
    assert plot.actions_figure([run]) is not None
    tags = tensorboard.scalars(rows[0], run.action_names)
    assert "actions/teleport" in tags and not any("HOLD" in t for t in tags)

    assert train.main(["--run-dir", str(run_dir), "--resume", "--iterations", "3"]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    capsys.readouterr()
    for flag in (["--network", "gru"], ["--env", "portfolio"]):
        assert train.main(["--run-dir", str(run_dir), "--resume", "--iterations", "4",
                           *flag]) == 2
        err = capsys.readouterr().err
        assert f"{flag[0]} '{flag[1]}' would change array shapes" in err, err

    assert train.main([*TINY, "--env", "nope", "--run-dir", str(tmp_path / "y")]) == 2
    assert "a registered env" in capsys.readouterr().err


def test_another_env_validates_on_its_episodes_stops_early_and_is_evaluated(tmp_path, capsys):
    """The masked walk with validation walks through the CLI: the base class's evaluation
    (the greedy policy's first episodes in 64 envs of its validation params) writes `val_`
    columns whose val_score ranks checkpoints and stops the run early; `python -m
    jaxtrade.evaluate` reports its episodes against a uniformly random policy, and on the
    validation params repeats the numbers training logged for the chosen checkpoint."""
    import tests.envs.masked  # noqa: F401  (registers masked-walk)
    from jaxtrade import checkpoint as ckpt
    from jaxtrade import evaluate

    run_dir = tmp_path / "walk"
    argv = [*TINY, "--env", "masked-walk", "--network", "mlp", "--iterations", "40",
            "--eval-every", "1", "--early-stop", "3", "--save-every", "0",
            "--run-dir", str(run_dir)]
    assert train.main(argv) == 0
    out = capsys.readouterr().out
    assert ("eval: greedy policy in 64 envs of the validation params, the first episode of "
            "each (at most 32 steps), scored by its mean return every 1 iterations and at the "
            "end; checkpoints ranked by val_score; stop after 3 walks without a new best") in out
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # a walk every iteration
        assert {k for k in r if k.startswith("val_")} == {
            "val_return_mean", "val_return_std", "val_length_mean", "val_episodes", "val_score"}
        assert r["val_score"] == r["val_return_mean"]
        # Episodes of at most 16 steps: all 64 end within 32; a return is +1 at the goal
        # minus 0.01 a step, so it lies in [-0.16, 0.99].
        assert r["val_episodes"] == 64 and 1 <= r["val_length_mean"] <= 16
        assert -0.16 - 1e-6 <= r["val_return_mean"] <= 0.99 + 1e-6
    scores = [r["val_score"] for r in rows]
    since, top, counts = 0, -math.inf, []
    for s in scores:
        since, top = (0, s) if s > top else (since + 1, top)
        counts.append(since)
    assert len(rows) < 40 and counts[-1] == 3 and max(counts[:-1]) < 3
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped_early"
    best = ckpt.select(run_dir, "best")
    assert best.step == scores.index(top) + 1 == summary["best"]["iteration"]
    r = rows[best.step - 1]
    assert (f"val  {best.step:>5} | validation return {r['val_return_mean']:+.4f} | episodes 64 "
            f"| length {r['val_length_mean']:.1f} | score {top:+.2f} (best)") in out

    out_dir = tmp_path / "eval"
    for range_ in ("validation", "test"):
        assert evaluate.main(["--run-dir", str(run_dir), "--range", range_,
                              "--out", str(out_dir)]) == 0
        printed = capsys.readouterr().out
        report = json.loads((out_dir / "report.json").read_text())
        assert report["report"] == "episodes" and report["range"]["name"] == range_
        assert report["checkpoint"]["iteration"] == best.step
        policy, chance = report["strategies"]["policy"], report["strategies"]["random"]
        # The masked walk's params do not depend on the split: both repeat training's walk.
        for key in ("return_mean", "return_std", "length_mean", "episodes"):
            assert policy[key] == pytest.approx(r[f"val_{key}"], abs=1e-6), key
        assert chance["episodes"] <= 64 and chance["return_mean"] != policy["return_mean"]
        diff = report["difference"]
        assert diff["return_mean"] == pytest.approx(
            policy["return_mean"] - chance["return_mean"])
        assert diff["ci_low"] < diff["return_mean"] < diff["ci_high"]
        assert f"verdict: {report['verdict']}" in printed and "random" in printed
    assert evaluate.main(["--run-dir", str(run_dir), "--start", "2011-01-03"]) == 2
    assert "the masked-walk env is reported on its own params" in capsys.readouterr().err


def test_mlp_network_trains_and_evaluates_the_portfolio_end_to_end(tmp_path, capsys):
    """`--network mlp` through the whole pipeline: training with validation walks, a best
    checkpoint, and `python -m jaxtrade.evaluate` on the test range."""
    from jaxtrade import evaluate

    run_dir = tmp_path / "mlp"
    assert train.main([*TINY, "--network", "mlp", "--iterations", "2", "--eval-every", "1",
                       "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "model: MLP actor-critic (no memory), hidden 8" in out and "val      2" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["selection"]["validations"] == 2
    assert evaluate.main(["--run-dir", str(run_dir), "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["range"]["name"] == "test" and "policy" in report["strategies"]
    assert math.isfinite(report["strategies"]["policy"]["total_return"])

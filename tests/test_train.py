"""`python -m jaxtrade.train`: outputs, run directory, and one-line errors."""

import json
import subprocess
import sys

import pytest

from jaxtrade import train

TINY = [
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
    # The final checkpoint (default --save-every 10 > 3 iterations: the only one).
    assert summary["checkpoint"] == str(run_dir / "checkpoints" / "3")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["3"]

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
        (["--episode-length", "5000"], "too few"),
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

"""`python -m jaxtrade.train`: outputs, run directory, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

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


# --- memory budget and presets ------------------------------------------------------------


def test_memory_budget_caps_n_envs_or_refuses(small_market):
    """An asked-for n_envs over the budget is capped with a warning naming the estimate; a
    default one is lowered with a note; a resumed one cannot change and only warns; a
    budget too small for any n_envs is refused."""
    from jaxtrade import config as C
    from jaxtrade import memory
    from jaxtrade.envs import PortfolioEnv

    env = PortfolioEnv(small_market)
    cfg = C.resolve(C.with_values(C.Config(), hidden_dim=8, n_gru_layers=1, n_envs=4096,
                                  n_steps=8, n_minibatches=2), "cpu")
    need = memory.estimate(cfg, env).per_device_bytes
    gb = need / 4 / 1e9  # a quarter of what 4,096 envs need
    asked = train.size_n_envs(cfg, env, 1, gb, given=True, fixed=False)
    n = asked.cfg.ppo.n_envs
    assert 0 < n < 4096 and n % 2 == 0 and asked.estimate.per_device_bytes <= gb * 1e9
    assert memory.estimate(C.with_values(cfg, n_envs=n + 2), env).per_device_bytes > gb * 1e9
    assert asked.warning.startswith("n_envs=4,096 needs an estimated ")
    assert f"capped to {n:,} envs" in asked.warning and asked.note is None
    default = train.size_n_envs(cfg, env, 1, gb, given=False, fixed=False)
    assert default.cfg.ppo.n_envs == n and default.warning is None
    assert default.note.startswith("default n_envs=4,096 lowered to")
    resumed = train.size_n_envs(cfg, env, 1, gb, given=True, fixed=True)
    assert resumed.cfg.ppo.n_envs == 4096 and "the checkpoint fixes n_envs" in resumed.warning
    fits = train.size_n_envs(cfg, env, 1, 4 * need / 1e9, given=True, fixed=False)
    assert fits.cfg is cfg and fits.warning is None and fits.note is None
    with pytest.raises(train.UsageError, match="not even n_envs=2 fits"):
        train.size_n_envs(cfg, env, 1, 1e-6, given=True, fixed=False)


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


def test_flag_abbreviations_are_rejected(capsys):
    """`--n-env 8` is no longer read as `--n-envs 8`: argparse exits 2 naming it."""
    parser = train.build_parser()
    assert parser.parse_args(["--n-envs", "8"]).n_envs == 8
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--n-env", "8"])
    assert info.value.code == 2
    assert "unrecognized arguments: --n-env 8" in capsys.readouterr().err

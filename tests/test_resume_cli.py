"""`python -m jaxtrade.train` stopped by SIGINT, SIGTERM and SIGKILL, then resumed; warm starts;
and the one-line errors of --resume and --checkpoint.

The subprocesses share the session's persistent XLA compilation cache, so only the first one
compiles the (identical) training program; the comparisons are between runs of that program.
"""

import json
import re
import shutil
import signal

import pytest

from jaxtrade import checkpoint as ckpt
from jaxtrade import train
from tests.cli import Cli
from tests.stalled_save import STALL_LINE
from tests.test_train import TINY

ITERATIONS = 200  # long enough that a signal sent after the first log line lands mid-run
VOLATILE = ("sps", "wall_s")  # the only columns that may differ between identical runs


@pytest.fixture(scope="module")
def cli(xla_cache):
    return Cli(xla_cache)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def stable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.fixture(scope="module")
def straight(cli, tmp_path_factory):
    """The uninterrupted run the stopped-and-resumed ones must reproduce."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    cli.check(*TINY, "--iterations", ITERATIONS, "--save-every", 0, "--run-dir", run_dir, "-q")
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_exits_0_and_resume_finishes_identically(sig, cli, straight, tmp_path):
    run_dir = tmp_path / "run"
    proc = cli.start(*TINY, "--iterations", ITERATIONS, "--save-every", 0, "--run-dir", run_dir)
    cli.wait_for(proc, r"^it +1/")
    proc.send_signal(sig)
    out = cli.finish(proc)
    assert proc.returncode == 0, out
    assert f"{sig.name}: stopping after the current call; press Ctrl+C again to exit now" in out
    assert f"resume with: python -m jaxtrade.train --run-dir {run_dir} --resume" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    stopped = summary["iterations"]
    assert summary["status"] == "interrupted" and 0 < stopped < ITERATIONS
    assert summary["checkpoint"] == str(run_dir / "checkpoints" / str(stopped))
    source = ckpt.latest(run_dir)
    assert source.step == stopped and source.meta["interrupted"] is True
    assert [r["iteration"] for r in metrics(run_dir)] == list(range(1, stopped + 1))

    out = cli.check("--run-dir", run_dir, "--resume")
    assert f"start: resumed from {run_dir}/checkpoints/{stopped} (saved on interrupt)" in out
    assert "changed:" not in out
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert ckpt.latest(run_dir).meta["final"] is True
    # Every iteration once, and the same numbers as the run that was never stopped.
    assert stable(metrics(run_dir)) == stable(metrics(straight))


@pytest.mark.slow
def test_hard_kill_during_a_save_resumes_from_the_previous_checkpoint(cli, xla_cache, tmp_path):
    run_dir = tmp_path / "run"  # given relative to the working directory, as users do
    cli.check(*TINY, "--iterations", 2, "--save-every", 2, "--run-dir", "run", cwd=tmp_path)
    # Extend to 4 iterations with every save stalled after its items are written and before
    # it commits (`tests.stalled_save`), and kill it there.
    stalled = Cli(xla_cache, module="tests.stalled_save")
    proc = stalled.start(120, "--run-dir", "run", "--resume", "--iterations", 4, cwd=tmp_path)
    stalled.wait_for(proc, rf"^{re.escape(STALL_LINE)} \(.*checkpoints/4\.orbax-checkpoint-tmp")
    proc.kill()
    proc.wait(timeout=30)
    checkpoints = run_dir / "checkpoints"
    assert not (checkpoints / "4").exists()
    assert list(checkpoints.glob("4.orbax-checkpoint-tmp*")), "killed before Orbax wrote"
    assert [r["iteration"] for r in metrics(run_dir)] == [1, 2, 3, 4]

    out = cli.check("--run-dir", "run", "--resume", cwd=tmp_path)
    assert "start: resumed from run/checkpoints/2;" in out
    assert "metrics.jsonl: dropped 2 row(s) after iteration 2" in out
    assert [r["iteration"] for r in metrics(run_dir)] == [1, 2, 3, 4]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2", "4"]  # tmp dir cleaned


@pytest.mark.slow
def test_weights_only_warm_start_records_lineage_and_scales_learning_rates(
    cli, straight, tmp_path
):
    child = tmp_path / "child"
    out = cli.check("--checkpoint", straight, "--weights-only", "--lr-multiplier", 0.5,
                    "--iterations", 2, "--run-dir", child)
    assert (f"start: weights of {straight}/checkpoints/{ITERATIONS}; fresh optimizers, envs "
            f"and counters; iteration 0, generation 1, {ITERATIONS * 64:,} timesteps") in out
    config = json.loads((child / "config.json").read_text())
    assert config["ppo"]["actor_lr"] == pytest.approx(1.5e-4)
    assert config["ppo"]["critic_lr"] == pytest.approx(4.5e-4)
    rows = metrics(child)
    assert [r["iteration"] for r in rows] == [1, 2]
    assert rows[0]["actor_lr"] == pytest.approx(1.5e-4)
    lineage = ckpt.latest(child).meta["lineage"]
    assert lineage == {
        "parent_run": str(straight), "parent_checkpoint": ITERATIONS, "generation": 1,
        "base_timesteps": ITERATIONS * 64, "start": "weights",
        "total_timesteps": (ITERATIONS + 2) * 64,
    }


def corrupt_copy(run_dir, dest):
    shutil.copytree(run_dir, dest)
    for f in (dest / "checkpoints").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0xFF
            f.write_bytes(data)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resume", "--run-dir", "{run}", "--n-envs", "16"],
         "error: --n-envs 16 would change array shapes or the market: the run was saved with "
         "n_envs=8; --resume keeps them"),
        (["--resume", "--run-dir", "{run}", "--hidden-dim", "16"],
         "error: --hidden-dim 16 would change array shapes"),
        (["--resume", "--run-dir", "{run}", "--hyperparams", "n_assets=5"],
         "error: n_assets=5 would change array shapes or the market: the run was saved with "
         "n_assets=4"),
        (["--resume", "--run-dir", "{run}"],
         f"is at iteration {ITERATIONS} and this run asks for {ITERATIONS}; train longer"),
        (["--resume", "--run-dir", "{tmp}"], "no complete checkpoint to resume from in"),
        (["--resume", "--run-dir", "{tmp}/missing"], "missing: no such run directory"),
        (["--resume", "--run-dir", "{corrupt}", "--iterations", "300"],
         f"checkpoints/{ITERATIONS}: cannot read checkpoint (DATA_LOSS"),
        (["--resume"], "error: --resume needs --run-dir DIR"),
        (["--checkpoint", "{run}", "--weights-only", "--hidden-dim", "16", "--run-dir",
          "{tmp}/new"],
         f"error: architecture mismatch with {{run}}/checkpoints/{ITERATIONS}: "
         "params/encoder/dense_0/bias is (8,) in the checkpoint but (16,) in this run (use "
         "--on-mismatch fresh to start from fresh weights)"),
        (["--checkpoint", "{tmp}/nothing", "--run-dir", "{tmp}/new"],
         "nothing: no such checkpoint or run directory"),
        (["--checkpoint", "{run}", "--run-dir", "{run}", "--iterations", "300"],
         "--checkpoint starts a new run: choose a --run-dir other than"),
        (["--weights-only"], "error: --weights-only needs --checkpoint PATH"),
        (["--lr-multiplier", "0.5"], "error: --lr-multiplier needs --checkpoint or --resume"),
    ],
)
def test_resume_and_checkpoint_errors_are_one_line_and_exit_2(argv, message, straight,
                                                              tmp_path, capsys):
    corrupt = corrupt_copy(straight, tmp_path / "corrupt") if "{corrupt}" in argv else None
    fill = {"run": straight, "tmp": tmp_path, "corrupt": corrupt}
    before = (straight / "metrics.jsonl").read_text()
    assert train.main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message.format(**fill) in err[0], err
    assert (straight / "metrics.jsonl").read_text() == before  # a refused resume changes nothing

"""Devices and hosts: N simulated CPU devices and 2 local processes match 1 device."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrade import checkpoint as ckpt
from jaxtrade import parallel, train
from tests import xla_flags
from tests.test_train import TINY

REPO = Path(__file__).resolve().parents[1]


def cpu_env(n_devices: int) -> dict[str, str]:
    """The environment of a child process with `n_devices` simulated CPU devices."""
    # JAX settings of this process stay out, but for the session's compilation cache
    # (tests/conftest.py): a program a child compiled loads in the next child.
    keep = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k in keep}
    env["XLA_FLAGS"] = xla_flags.flags(n_devices)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO)
    return env


# --- one process, N devices ---------------------------------------------------------------


@pytest.fixture(scope="module")
def four_vs_one():
    proc = subprocess.run(
        [sys.executable, "-m", "tests.multidevice_worker", "4"],
        cwd=REPO, env=cpu_env(4), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_four_devices_train_like_one(four_vs_one):
    """Same global n_envs and seed, float32, 3 iterations: the parameters and losses of a
    4-device run match the 1-device run to 1e-5 relative (summation order is all that
    differs), while training moved the parameters far more than that."""
    r = four_vs_one
    assert r["obs_sharding"] == "P('data',)" and r["obs_shards"] == 4
    assert r["params_rel"] < 1e-5, r
    assert r["params_max_leaf_rel"] < 1e-3, r  # small leaves (biases near 0) differ more
    assert r["params_changed_rel"] > 1e-3, r  # the comparison above is not vacuous
    for k, v in r["losses_rel"].items():
        # The policy loss is near 0 by construction (normalized advantages, ratio ~1):
        # its relative error gets an absolute floor of 1e-7 against losses of order 1.
        scale = np.linalg.norm(r["losses_1"][k])
        assert v * scale < 1e-5 * scale + 1e-7, (k, r)


@pytest.mark.slow
def test_four_device_program_moves_no_env_data_between_devices(four_vs_one):
    """Minibatches are built from each device's own envs: the only collectives are the
    all-reduces of gradients and metrics (no all-gather, all-to-all or permute)."""
    c = four_vs_one["collectives"]
    assert c["all-reduce"] >= 1, c
    assert c["all-gather"] == c["all-to-all"] == c["collective-permute"] == 0, c


def test_mesh_of_this_process():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == (parallel.AXIS,) and mesh.size == jax.device_count()
    assert parallel.make_mesh(1).size == 1
    assert parallel.describe(parallel.make_mesh(1)).startswith("1 x ")
    assert parallel.is_primary() and parallel.any_process(True) and not parallel.any_process(False)
    with pytest.raises(parallel.ParallelError, match="only 1 cpu device"):
        parallel.select_devices(jax.device_count() + 1)
    with pytest.raises(parallel.ParallelError, match="--devices must be >= 1"):
        parallel.select_devices(0)


def test_put_replicated_and_env_sharding():
    mesh = parallel.make_mesh(1)
    x = parallel.put_replicated({"a": np.arange(6.0).reshape(2, 3)}, mesh)["a"]
    assert x.sharding.is_fully_replicated
    np.testing.assert_array_equal(x, np.arange(6.0).reshape(2, 3))
    assert parallel.replicated(mesh).spec == jax.sharding.PartitionSpec()
    assert parallel.env_sharding(mesh, 1).spec == jax.sharding.PartitionSpec(None, parallel.AXIS)


def test_copy_has_its_own_buffers_placed_as_the_source():
    """`parallel.copy` (a checkpoint's snapshot): new buffers with the same values and
    placement, which outlive the source's deletion (as after a donating call)."""
    mesh = parallel.make_mesh(1)
    src = {"split": jax.device_put(jnp.arange(8.0).reshape(4, 2), parallel.env_sharding(mesh)),
           "whole": parallel.put_replicated(np.ones(3, np.int32), mesh),
           "key": jax.random.key_data(jax.random.key(0)), "none": None}
    out = parallel.copy(src)
    assert out["none"] is None
    for name in ("split", "whole", "key"):
        a, b = src[name], out[name]
        assert b.sharding == a.sharding and b.dtype == a.dtype
        ptrs = {s.data.unsafe_buffer_pointer() for s in a.addressable_shards}
        assert ptrs.isdisjoint(s.data.unsafe_buffer_pointer() for s in b.addressable_shards)
        expected = np.asarray(a)
        a.delete()
        np.testing.assert_array_equal(b, expected)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(coordinator="127.0.0.1:1234"), "missing --num-processes, --process-id"),
        (dict(num_processes=2, process_id=0), "missing --coordinator"),
        (dict(coordinator="localhost", num_processes=2, process_id=0), "must be HOST:PORT"),
        (dict(coordinator="h:1", num_processes=2, process_id=2), "must be in [0, 1]"),
        (dict(coordinator="h:1", num_processes=0, process_id=0), "must be >= 1"),
    ],
)
def test_bad_multi_process_flags_are_refused_before_joining(kwargs, message, monkeypatch):
    for var in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(parallel.ParallelError) as e:
        parallel.initialize(**kwargs)
    assert message in str(e.value)


def test_single_process_needs_no_initialization(monkeypatch):
    for var in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
        monkeypatch.delenv(var, raising=False)
    assert parallel.initialize() is False
    monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, "two")
    with pytest.raises(parallel.ParallelError, match="JAX_NUM_PROCESSES must be an integer"):
        parallel.initialize()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--devices", "64"], "--devices 64: only 1 cpu device(s) are visible"),
        (["--n-envs", "7"], "n_envs=7 must be a multiple of n_minibatches=2 (try 6 or 8)"),
        (["--coordinator", "127.0.0.1:1"], "missing --num-processes, --process-id"),
    ],
)
def test_device_flags_errors_are_one_line(argv, message, tmp_path, capsys):
    argv = [*TINY, *argv, "--iterations", "1", "--run-dir", str(tmp_path / "r")]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_n_envs_indivisible_by_devices_names_devices(tmp_path):
    """4 devices x 2 minibatches: n_envs=12 is refused with the nearest valid values."""
    proc = subprocess.run(
        [sys.executable, "-m", "jaxtrade.train", *TINY, "--n-envs", "12", "--iterations", "1",
         "--run-dir",
         str(tmp_path / "r")],
        cwd=REPO, env=cpu_env(4), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert ("n_envs=12 must be a multiple of n_minibatches=2 x 4 devices = 8 (try 8 or 16)"
            in proc.stderr), proc.stderr[-2000:]


# --- two processes ------------------------------------------------------------------------

MP = [*TINY, "--eval-every", "0", "--save-every", "2", "-q"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(argv: list[str]) -> list[subprocess.CompletedProcess]:
    """`python -m jaxtrade.train argv` as processes 0 and 1 of a run on 127.0.0.1 (one
    simulated CPU device each)."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxtrade.train", *argv, "--coordinator",
             f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            cwd=REPO, env=cpu_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for i in range(2)
    ]
    done = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return done


def read_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """Two processes train 2 iterations, then resume together to 4 (the checkpoint is
    saved and restored collectively); one process with 2 devices trains 4 in one go."""
    root = tmp_path_factory.mktemp("mp")
    first = two_processes([*MP, "--iterations", "2", "--run-dir", str(root / "two")])
    resumed = two_processes([*MP, "--iterations", "4", "--run-dir", str(root / "two"),
                             "--resume"])
    single = subprocess.run(
        [sys.executable, "-m", "jaxtrade.train", *MP, "--iterations", "4", "--run-dir",
         str(root / "one")],
        cwd=REPO, env=cpu_env(2), capture_output=True, text=True, timeout=600,
    )
    return root, first, resumed, single


@pytest.mark.slow
def test_two_processes_train_together_and_match_two_devices(two_process_runs):
    root, first, resumed, single = two_process_runs
    for p in (*first, *resumed, single):
        assert p.returncode == 0, p.stderr[-3000:]
    # Process 0 writes the logs and run metadata; process 1 prints nothing of its own
    # (gloo, the CPU collectives library, announces its connections on both).
    def own(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("[Gloo]")]

    assert own(first[0].stdout)[0].startswith("done: 2 iterations"), first[0].stdout
    assert own(first[1].stdout) == [] and own(resumed[1].stdout) == []
    summary = json.loads((root / "two" / "summary.json").read_text())
    assert (summary["n_devices"], summary["n_processes"], summary["iterations"]) == (2, 2, 4)
    two, one = read_rows(root / "two"), read_rows(root / "one")
    assert [r["iteration"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(two, one, strict=True):
        for k in ("policy_loss", "value_loss", "entropy", "episode_return_mean"):
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7, err_msg=k)
        assert ("val_score" in a) == ("val_score" in b)
    # The final checkpoints hold the same parameters, and the 2-process one says so.
    src_two, src_one = ckpt.latest(root / "two"), ckpt.latest(root / "one")
    assert src_two.step == src_one.step == 4 and src_two.meta["n_devices"] == 2
    p_two, p_one = ckpt.read_params(src_two), ckpt.read_params(src_one)
    for a, b in zip(jax.tree.leaves(p_two), jax.tree.leaves(p_one), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

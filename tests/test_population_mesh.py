"""A population on several devices: a 2-D mesh (member groups x env shards) trains every
member as on one device, moves nothing between member groups while they train, and runs
from the CLI with --devices / --member-groups, its checkpoint resumed on another layout;
league rounds on several devices, archived models continued there."""

import json
import subprocess
import sys

import jax
import pytest

from jaxtrade import archive, parallel, population_run
from tests import xla_flags
from tests.cli import REPO, Cli
from tests.test_parallel import cpu_env
from tests.test_population_run import POP, run_cli
from tests.test_train import TINY


@pytest.fixture(scope="module")
def layouts():
    proc = subprocess.run([sys.executable, "-m", "tests.population_mesh_worker"], cwd=REPO,
                          env=cpu_env(4), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_layout_trains_as_one_device(layouts):
    """4 members, 2 iterations, a copy, 1 more: parameters of 4 groups x 1 device and 2
    groups x 2 devices match 1 device to float32 summation order, member by member,
    while training moved them far more than that."""
    assert layouts["changed_rel"] > 1e-2
    for name in ("4x1", "2x2"):
        r = layouts[name]
        assert r["finite"] and r["params_rel"] < 1e-5, (name, r)
        assert max(r["members_rel"]) < 1e-5, (name, r)


@pytest.mark.slow
def test_members_and_envs_are_placed_on_the_mesh(layouts):
    one, g4, g2 = layouts["1x1"], layouts["4x1"], layouts["2x2"]
    assert one["params_spec"] == one["obs_spec"] == "P()" and one["obs_shard_shape"] == [4, 16, 53]
    for r in (g4, g2):
        assert r["params_spec"] == "P('members',)" and r["obs_spec"] == "P('members', 'data')"
        assert r["key_spec"] == "P()"  # the PBT key and bookkeeping: replicated
    assert g4["obs_shard_shape"] == [1, 16, 53] and g4["params_shard_shape"] == [1, 16]
    assert g2["obs_shard_shape"] == [2, 8, 53] and g2["params_shard_shape"] == [2, 16]
    assert g2["describe"] == "4 x cpu (1 process) as 2 member groups x 2 env shards"
    # exploit/explore hands the population back placed as the program takes it
    assert g4["traces"] == g2["traces"] == [1, 1]


@pytest.mark.slow
def test_member_groups_exchange_nothing_while_training(layouts):
    """One member per device: no collective at all. Two devices per member: only the
    all-reduces of its gradients and metrics over its own env shards."""
    assert not any(layouts["4x1"]["collectives"].values()), layouts["4x1"]
    c = layouts["2x2"]["collectives"]
    assert c["all-reduce"] >= 1, c
    assert c["all-gather"] == c["all-to-all"] == c["collective-permute"] == 0, c


def test_population_mesh_layouts():
    d = jax.devices()[:1]
    mesh = parallel.population_mesh(1, devices=d)
    assert mesh.axis_names == (parallel.MEMBERS, parallel.AXIS)
    assert parallel.member_groups(mesh) == parallel.data_size(mesh) == 1
    assert parallel.member_groups(parallel.make_mesh(1)) == 1
    with pytest.raises(parallel.ParallelError, match="2 member group.* cannot share 1 device"):
        parallel.population_mesh(2, devices=d)


@pytest.mark.parametrize("extra, message", [
    (["--member-groups", "0"], "--member-groups must be at least 1, got 0"),
    (["--member-groups", "2"], "--member-groups 2 must divide both the 3 members and the 1 "
                               "device(s)"),
    (["--devices", "2"], "--devices 2: only 1 cpu device(s) are visible"),
])
def test_bad_layouts_are_one_line_errors(extra, message):
    code, out, err = run_cli([*POP, "--iterations", "2", *extra])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err


def test_default_groups_are_the_gcd():
    args = population_run.build_parser().parse_args([])
    assert population_run.layout(args, 6)[1] == 1  # one device here
    args.devices, args.member_groups = 1, 1
    assert population_run.layout(args, 6)[1] == 1


@pytest.mark.slow
def test_cli_on_four_devices_and_resume_on_one(xla_cache, tmp_path):
    """The README's command: 4 members on 4 devices as 2 groups x 2 env shards for one
    interval, then --resume in this process, on its 1 device (Orbax places the saved
    population on the new mesh), for a second."""
    cli = Cli(xla_cache, module="jaxtrade.population")
    four = {"XLA_FLAGS": xla_flags.flags(4), "JAX_PLATFORMS": "cpu"}
    argv = [*TINY, "--population", 4, "--pbt-interval", 128, "--seed", 1]
    run_dir = tmp_path / "pop"
    out = cli.check(*argv, "--iterations", 2, "--devices", 4, "--member-groups", 2,
                    "--run-dir", run_dir, env=four, timeout=600)
    assert "4 x cpu (1 process) as 2 member groups x 2 env shards" in out
    assert "population: 4 members x 8 envs = 32 envs in one program" in out
    assert "per device (2 members x the estimate above)" in out
    assert "interval   1/1 | it     2/2 |" in out
    code, out, err = run_cli(["--run-dir", run_dir, "--resume", "--iterations", 4])  # here
    assert code == 0, err
    assert "1 x cpu (1 process)" in out and "start: resumed from " in out
    assert "interval   2/2 | it     4/4 |" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["iterations"] == 4


@pytest.mark.slow
def test_league_second_round_on_four_devices(xla_cache, tmp_path):
    """Round 1, in this process on one device: 4 explorers archived. Round 2, on 4 devices:
    2 refiners and 2 champions continued from the archive, on 2 groups x 2 env shards (the
    groups divide every category's members; 2 champions share the refiners' program).
    (One member per device, 4 groups x 1 shard, is `layouts`' 4x1 above.)"""
    from tests.test_league import run_cli as run_league

    cli = Cli(xla_cache, module="jaxtrade.league")
    four = {"XLA_FLAGS": xla_flags.flags(4), "JAX_PLATFORMS": "cpu"}
    argv = [*TINY, "--seed", 1, "--pbt-interval", 64, "--explorer-timesteps", 128,
            "--refiners", 2, "--refiner-timesteps", 128, "--champions", 2,
            "--champion-timesteps", 128, "--league-dir", tmp_path / "league",
            "--archive", tmp_path / "archive"]
    code, out, err = run_league([*argv, "--explorers", 4])
    assert code == 0, err
    assert "1 x cpu (1 process)" in out
    assert len(archive.Archive(tmp_path / "archive").entries()) == 4
    out = cli.check(*argv, "--explorers", 0, env=four, timeout=600)
    assert "4 x cpu (1 process) as 2 member groups x 2 env shards" in out
    assert "== round 2: refiners (2 members" in out and "== round 2: champion (2 members," in out
    record = [json.loads(x) for x in (tmp_path / "league" / "league.jsonl").read_text()
              .splitlines()][-1]
    assert record["status"] == "completed", record

"""benchmarks/throughput.py: a tiny sweep end to end, its FLOP count against an analytic
count of the network's matmuls, and the peak-FLOP/s lookups."""

import contextlib
import io
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import throughput
from benchmarks.common import device_info, result_path
from jaxtrade.config import Config
from jaxtrade.data import load_market
from jaxtrade.envs import PortfolioEnv
from jaxtrade.networks import GRUActorCritic, count_params, param_shapes
from jaxtrade.rollout import bootstrap_capacity

HIDDEN, LAYERS, N_ENVS, N_STEPS = 16, 1, 8, 8
TINY = ["--n-envs", str(N_ENVS), "--n-steps", str(N_STEPS), "--hidden-dim", str(HIDDEN),
        "--n-gru-layers", str(LAYERS), "--iterations", "1", "--env-steps", "8"]

ROW_FIELDS = {
    "env", "episode_length", "n_devices", "n_envs", "n_steps", "hidden_dim", "n_gru_layers",
    "precision", "n_params",
    "env_steps_per_s", "train_steps_per_s", "s_per_iteration", "compile_s",
    "peak_memory_bytes", "peak_memory_source", "estimated_memory_bytes", "flops_per_env_step",
    "achieved_flops_per_s", "peak_flops_per_s", "peak_flops_source", "flops_fraction",
}


def run_main(argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert throughput.main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A one-row sweep at tiny shapes: (results dir, stdout, the JSON record)."""
    out = tmp_path_factory.mktemp("throughput")
    stdout = run_main([*TINY, "--out", str(out)])
    files = list(out.iterdir())
    assert len(files) == 1
    return out, stdout, json.loads(files[0].read_text())


@pytest.fixture(scope="module")
def row(sweep):
    (row,) = sweep[2]["results"]
    return row


def test_writes_a_file_named_by_device_and_date(sweep):
    out, stdout, record = sweep
    path = result_path("throughput", device_info(), out)
    assert path.exists() and path.name.startswith("throughput_cpu-")
    assert path.name.endswith(f"_{device_info()['date']}.json")
    assert f"saved {path}" in stdout
    assert record["benchmark"] == "throughput"
    assert record["settings"]["ppo_epochs"] == Config().ppo.ppo_epochs
    assert (record["settings"]["env"], record["settings"]["episode_length"]) == ("portfolio", 256)
    assert "portfolio: devices 1, n_envs 8:" in stdout  # the line printed as it was measured


def test_row_has_every_field(row):
    assert ROW_FIELDS <= set(row)
    assert (row["n_devices"], row["n_envs"], row["n_steps"]) == (1, N_ENVS, N_STEPS)
    assert (row["env"], row["episode_length"]) == ("portfolio", 256)
    assert (row["hidden_dim"], row["n_gru_layers"], row["precision"]) == (HIDDEN, LAYERS, "float32")


def test_rates_are_positive_and_below_peak(row):
    assert row["env_steps_per_s"] > 0
    assert row["train_steps_per_s"] > 0
    assert row["train_steps_per_s"] == pytest.approx(N_ENVS * N_STEPS / row["s_per_iteration"])
    assert row["compile_s"] > 0
    assert row["peak_memory_source"] == "XLA plan"  # CPUs report no peak
    assert row["peak_memory_bytes"] > 0 and row["estimated_memory_bytes"] > 0
    assert row["achieved_flops_per_s"] == pytest.approx(
        row["flops_per_env_step"] * row["train_steps_per_s"])
    assert row["peak_flops_source"].startswith("estimated")
    assert 0 < row["flops_fraction"] < 1


def matmul_flops(tree) -> int:
    """2 x in x out for every Dense kernel (the GRU's input and recurrent ones included)."""
    return sum(2 * math.prod(leaf.shape)
               for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
               if "kernel" in jax.tree_util.keystr(path))


def check_flops(row, env, episode_length: int) -> None:
    """The row's FLOPs per env step and per forward within 1.5x of an analytic count of the
    matmuls of the tiny network on `env`."""
    ppo = Config().ppo
    params = param_shapes(GRUActorCritic(env.obs_dim, env.num_actions, HIDDEN, LAYERS,
                                         dropout=0.0))
    assert row["n_params"] == count_params(params)
    forward = matmul_flops(params)
    trunk = matmul_flops({k: params[k] for k in ("encoder", "gru")})
    value_head = matmul_flops(params["value_head"])
    # Rollout: the acting forward, and once per rollout a forward over the bootstrap slots
    # (S per env) and one for the value after the last step; joint epochs: forward +
    # backward (about 2 forwards); critic epochs: one trunk forward, then value-head
    # forward + backward.
    slots = bootstrap_capacity(N_STEPS, episode_length)
    analytic = ((1 + (slots + 1) / N_STEPS) * forward + ppo.ppo_epochs * 3 * forward + trunk
                + ppo.critic_epochs * 3 * value_head)
    assert 1 / 1.5 < row["flops_per_env_step"] / analytic < 1.5
    assert 1 / 1.5 < row["flops_per_forward"] / forward < 1.5


def test_flops_match_an_analytic_count(row):
    check_flops(row, PortfolioEnv(load_market(synthetic=Config().data.synthetic())), 256)


def test_a_funding_row_runs_and_names_its_env(tmp_path):
    """`--env funding`: the funding env on its own market, with its one-day episodes; the
    file, the settings and the row say so, and its FLOPs are counted."""
    from jaxtrade.envs.funding import FundingEnv, load_funding_market

    stdout = run_main(["--env", "funding", *TINY, "--out", str(tmp_path)])
    (path,) = tmp_path.iterdir()
    assert path == result_path("funding_throughput", device_info(), tmp_path)
    assert "env funding, episodes of 24 steps" in stdout
    assert "funding: devices 1, n_envs 8:" in stdout
    record = json.loads(path.read_text())
    assert record["benchmark"] == "funding_throughput"
    assert (record["settings"]["env"], record["settings"]["episode_length"]) == ("funding", 24)
    assert record["settings"]["market"].startswith("synthetic_funding(")
    (row,) = record["results"]
    assert ROW_FIELDS <= set(row)
    assert (row["env"], row["episode_length"], row["n_envs"]) == ("funding", 24, N_ENVS)
    assert row["env_steps_per_s"] > 0 and row["train_steps_per_s"] > 0
    assert 0 < row["flops_fraction"] < 1
    check_flops(row, FundingEnv(load_funding_market(Config())), 24)


def test_a_scan_of_one_step_is_counted_exactly():
    """What the counting relies on: XLA counts a loop body once, whatever its trip count."""
    x = jnp.ones((32, 32))

    def body(c, _):
        return c @ c, None

    one = throughput.xla_flops(lambda x: body(x, None)[0], x)
    assert one == pytest.approx(2 * 32**3, rel=0.01)
    assert throughput.xla_flops(lambda x: jax.lax.scan(body, x, None, length=1)[0], x) == (
        pytest.approx(one, rel=0.01))
    # ... and once only for ten trips, which is why the whole program's count is useless.
    assert throughput.xla_flops(lambda x: jax.lax.scan(body, x, None, length=10)[0], x) < 2 * one


def test_sizes_that_do_not_split_are_skipped(tmp_path):
    stdout = run_main(["--n-envs", "6", "--out", str(tmp_path)])
    assert "skipped: n_envs 6 on 1 device(s)" in stdout
    (path,) = tmp_path.iterdir()
    assert json.loads(path.read_text())["results"] == []


CPUINFO_AVX512 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor @ 2.50GHz
cpu MHz\t\t: 2499.998
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512dq
"""
CPUINFO_AVX2 = """processor\t: 0
model name\t: AMD EPYC 7B12
cpu MHz\t\t: 3000.000
flags\t\t: fpu sse sse2 avx fma avx2
"""


def test_cpu_peak_estimate():
    peak, source = throughput.cpu_peak_flops(CPUINFO_AVX512, 2)
    assert peak == pytest.approx(2 * 2.5e9 * 64)
    assert source.startswith("estimated") and "AVX-512" in source
    peak, source = throughput.cpu_peak_flops(CPUINFO_AVX2, 4)
    assert peak == pytest.approx(4 * 3.0e9 * 32) and "AVX2" in source
    peak, source = throughput.cpu_peak_flops("", 1)  # nothing known: SSE at an assumed clock
    assert peak == pytest.approx(2.5e9 * 8) and "assumed" in source
    peak, source = throughput.peak_flops(jax.devices("cpu"), jnp.float32)
    assert peak > 0 and source.startswith("estimated")


@pytest.mark.parametrize("kind, dtype, expected", [
    ("NVIDIA H100 80GB HBM3", jnp.bfloat16, 989e12),
    ("NVIDIA H100 80GB HBM3", jnp.float32, 67e12),
    ("NVIDIA H100 PCIe", jnp.bfloat16, 756e12),
    ("NVIDIA H100 NVL", jnp.bfloat16, 835e12),
    ("NVIDIA H200", jnp.bfloat16, 989e12),
    ("NVIDIA GH200 480GB", jnp.bfloat16, 989e12),
    ("NVIDIA A100-SXM4-80GB", jnp.bfloat16, 312e12),
    ("NVIDIA A100 80GB PCIe", jnp.float32, 19.5e12),
    ("NVIDIA L4", jnp.bfloat16, 121e12),
    ("NVIDIA GeForce RTX 4090", jnp.float32, 82.6e12),
    ("NVIDIA L40S", jnp.bfloat16, None),  # not an L4
    ("TPU v5 lite", jnp.bfloat16, None),
])
def test_gpu_peak_lookup(kind, dtype, expected):
    found = throughput.gpu_peak_flops(kind, dtype)
    if expected is None:
        assert found is None
    else:
        assert found[0] == expected
        assert "datasheet" in found[1] or "whitepaper" in found[1]


def test_default_device_counts():
    assert throughput.default_device_counts(1) == [1]
    assert throughput.default_device_counts(8) == [1, 2, 4, 8]
    assert throughput.default_device_counts(6) == [1, 2, 4, 6]


def test_worlds_headroom_groups_worlds_and_takes_each_worlds_best():
    """The headroom table: per group of worlds by signal strength, the medians, the
    difference to buy-and-hold in the same world, and the per-world oracle."""
    from benchmarks.worlds_headroom import headroom
    from jaxtrade.evaluation import BASELINES

    rng = np.random.default_rng(0)
    sharpe = rng.normal(size=(6, len(BASELINES)))
    hold, best = BASELINES.index("buy_and_hold"), BASELINES.index("QUALITY/20")
    sharpe[:, best] = sharpe[:, hold] + 1.0  # beats buy-and-hold by 1 in every world
    signal = np.array([0.0, 0.0, 0.3, 0.5, 0.9, 1.2])
    rows = {r["group"]: r for r in headroom(sharpe, signal)}
    assert [rows[g]["worlds"] for g in ("none", "weak", "strong")] == [2, 2, 2]
    strong = rows["strong"]
    assert strong["median_over_buy_and_hold"]["QUALITY/20"] == pytest.approx(1.0)
    assert strong["share_beating_buy_and_hold"]["QUALITY/20"] == 1.0
    assert strong["oracle"] == pytest.approx(np.median(sharpe[4:].max(axis=1)))
    assert strong["buy_and_hold"] == pytest.approx(np.median(sharpe[4:, hold]))


def test_gpu_check_script_parses_and_runs_its_frame(tmp_path):
    """benchmarks/gpu_check.sh: valid bash, and with no checks selected it reports the
    device, runs nothing and exits 0 (the checks themselves run on a GPU machine)."""
    import os
    import subprocess
    import sys

    script = "benchmarks/gpu_check.sh"
    subprocess.run(["bash", "-n", script], check=True)
    env = dict(os.environ, SKIP_INSTALL="1", STEPS="none", PYTHON=sys.executable,
               OUT=str(tmp_path / "logs"), RESULTS=str(tmp_path / "results"))
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "done, status 0" in done.stdout
    assert "devices:" in (tmp_path / "logs" / "device.txt").read_text()
    assert "throughput sweep" not in done.stdout


def test_worlds_rules_factor_payoffs_and_switch():
    """benchmarks/worlds_rules.py: a factor's payoff is its top half's return over the bar,
    ranked two bars before (as its regime earns it), minus the mean of the assets that
    exist; the switch trades the factor whose payoffs stand out, and holds or rebalances
    equal weight otherwise."""
    from benchmarks.worlds_rules import factor_payoffs, switch_actions
    from jaxtrade.envs import Regime

    price = np.array([[1.0, 1.0, 1.0], [1.1, 1.0, 1.0], [1.21, 0.9, 5.0], [1.21, 0.99, 1.0]])
    scores = np.zeros((4, 3, 4))
    scores[:, 1, 0] = 1.0  # momentum ranks asset 1 first at every bar
    mask = np.array([[True, True, False]] * 4)  # asset 2 is padding: its jump is ignored
    pay = factor_payoffs(price, scores, mask)
    assert pay.shape == (4, 4)
    np.testing.assert_allclose(pay[:2], 0.0)
    np.testing.assert_allclose(pay[2, 0], -0.1 - (0.1 - 0.1) / 2)  # asset 1: -10%; mean 0
    np.testing.assert_allclose(pay[3, 0], 0.1 - (0.0 + 0.1) / 2)
    # Other factors tie at 0: the first asset in order is the top half of two.
    np.testing.assert_allclose(pay[2, 1], 0.1 - 0.0)

    rng = np.random.default_rng(0)
    payoff = rng.normal(0.0, 0.01, (200, 4))
    payoff[:, 2] += 0.02  # quality pays
    acts = switch_actions(payoff, 100, window=20, threshold=2.0, every=10)
    assert acts[0] == Regime.EQUAL_WEIGHT
    assert set(acts[10::10]) == {Regime.QUALITY}
    assert set(np.delete(acts, np.arange(0, 100, 10))) == {Regime.HOLD}
    safe = switch_actions(payoff, 100, window=20, threshold=2.0, every=10, regimes="safe")
    assert set(safe[10::10]) == {Regime.SAFE_QUALITY}
    never = switch_actions(payoff, 100, window=20, threshold=1e9, every=10)
    assert list(never) == [Regime.EQUAL_WEIGHT] + [Regime.HOLD] * 99  # buy-and-hold
    rebalance = switch_actions(payoff, 100, window=20, threshold=1e9, every=10,
                               fallback="rebalance")
    assert set(rebalance[::10]) == {Regime.EQUAL_WEIGHT}


def test_purejaxrl_baseline_network_and_gae(small_env):
    """benchmarks/purejaxrl_equivalent.py: the baseline's network has jaxtrade's widths (its
    count is jaxtrade's less the 2H biases torch's GRU layout has beyond flax's GRUCell), and
    its GAE is jaxtrade's with every end terminal."""
    from benchmarks import purejaxrl_equivalent as pj
    from jaxtrade import ppo

    h, d = 128, small_env.obs_dim
    net = pj.ActorCriticGRU(h, small_env.num_actions)
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, h)),
                            jnp.zeros((1, 1, d)), jnp.ones((1, 1), bool))
    ours = count_params(param_shapes(GRUActorCritic(d, small_env.num_actions, h, 1)))
    assert count_params(shapes) == ours - 2 * h

    k = jax.random.split(jax.random.key(0), 3)
    reward, value = jax.random.normal(k[0], (6, 3)), jax.random.normal(k[1], (6, 3))
    done = jax.random.bernoulli(k[2], 0.3, (6, 3))
    last = jnp.array([0.5, -1.0, 2.0])
    tr = pj.BaselineTransition(obs=None, reset=None, action=None, log_prob=None, value=value,
                               reward=reward, done=done)
    next_values = jnp.concatenate([value[1:], last[None]])
    expected, _ = ppo.gae(reward, value, next_values, done, done, 0.9, 0.8)
    np.testing.assert_allclose(pj.gae(tr, last, 0.9, 0.8), expected, rtol=1e-5, atol=1e-6)


POP_TOML = """
[data]
market = "fixed"
[network]
hidden_dim = 8
n_gru_layers = 1
precision = "fp32"
[ppo]
n_steps = 4
n_minibatches = 1
ppo_epochs = 1
critic_epochs = 0
"""
POP_FIELDS = {
    "members", "envs_per_member", "total_envs", "n_steps", "iterations_per_call",
    "steps_per_call", "population_s_per_call", "single_s_per_call", "population_steps_per_s",
    "single_steps_per_s", "ratio", "ratio_to_one_member", "population_compile_s",
    "single_compile_s", "population_times", "single_times", "load_average",
}


def test_population_sweep_records_every_member_count(tmp_path):
    """benchmarks/population_sweep.py at tiny shapes (members 1 and 2 x 2 envs, one
    iteration per call, one repeat): one row per member count with both sides' rates, the
    ratio of their wall times, compile times and the load average; the goal's row (8
    members) is absent, so its verdict says not measured."""
    from benchmarks import population_sweep

    config = tmp_path / "tiny.toml"
    config.write_text(POP_TOML)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert population_sweep.main([
            "--config", str(config), "--members", "1,2", "--envs-per-member", "2",
            "--iterations-per-call", "1", "--repeats", "1", "--out", str(tmp_path / "res"),
        ]) == 0
    stdout = out.getvalue()
    path = result_path("population_sweep", device_info(), tmp_path / "res")
    assert f"saved {path}" in stdout and "not measured" in stdout
    record = json.loads(path.read_text())
    assert record["benchmark"] == "population_sweep"
    s = record["settings"]
    assert (s["preset"], s["market"], s["hidden_dim"], s["n_steps"]) == ("cpu", "fixed", 8, 4)
    assert s["members"] == [1, 2] and s["envs_per_member"] == 2
    assert s["goal"] == {"members": 8, "envs_per_member": 2, "total_envs": 16,
                         "max_ratio": 1.3, "ratio": None, "met": None}
    assert s["load_average_start"] is None or len(s["load_average_start"]) == 3
    rows = record["results"]
    assert [r["members"] for r in rows] == [1, 2]
    for r in rows:
        assert POP_FIELDS <= set(r)
        n = r["members"]
        assert (r["envs_per_member"], r["total_envs"]) == (2, 2 * n)
        assert r["steps_per_call"] == 2 * n * 4
        assert len(r["population_times"]) == len(r["single_times"]) == 1
        assert r["population_steps_per_s"] == pytest.approx(
            r["steps_per_call"] / r["population_s_per_call"])
        assert r["ratio"] == pytest.approx(r["population_s_per_call"] / r["single_s_per_call"])
        assert r["population_compile_s"] > 0 and r["single_compile_s"] > 0
    assert rows[0]["ratio_to_one_member"] == pytest.approx(1.0)
    assert rows[1]["ratio_to_one_member"] == pytest.approx(
        rows[1]["population_s_per_call"] / rows[0]["population_s_per_call"])


def test_population_sweep_presets():
    """The CPU default (cpu-small, 1..16 members, goal 8 members) and --gpu (the reference
    network in bf16, 1..64 members, goal 64), flags overriding a preset."""
    from benchmarks.population_sweep import parse_args

    cpu = parse_args([])
    assert (cpu.config, cpu.members, cpu.envs_per_member) == (
        "configs/cpu-small.toml", [1, 2, 4, 8, 16], 64)
    gpu = parse_args(["--gpu"])
    assert (gpu.config, gpu.members[-1], gpu.hidden_dim, gpu.n_gru_layers, gpu.precision) == (
        None, 64, 256, 2, "bf16")
    assert parse_args(["--gpu", "--members", "2,8"]).members == [2, 8]


def test_pbt_comparison_chooses_on_validation_and_compares_world_by_world(tmp_path):
    """benchmarks/pbt_comparison.py's host helpers: each arm's interval, the member chosen by
    its validation score alone, the hyperparameters each slot started with, the founders PBT
    left alone (compared with the independent arm's), and the paired
    PBT - independent comparison over the same test worlds (hand-computed)."""
    from benchmarks.pbt_comparison import (
        best_entry,
        head_to_head,
        initial_hparams,
        pbt_intervals,
        untouched_founders,
    )

    assert pbt_intervals(40, 4, 4096) == {"pbt": 40_960, "independent": 163_840}
    with pytest.raises(SystemExit):
        pbt_intervals(41, 4, 4096)
    # a test figure planted in an entry does not sway the choice; an unscored one is skipped
    entries = [{"id": "m0001", "val_score": 3.0, "test_sharpe": 9.0},
               {"id": "m0002", "val_score": 5.0, "test_sharpe": -9.0},
               {"id": "m0003", "val_score": None}]
    assert best_entry(entries)["id"] == "m0002"
    log = tmp_path / "population.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"interval": 1, "slot": 1, "hparams": {"actor_lr": 2e-4}},
        {"interval": 1, "slot": 0, "hparams": {"actor_lr": 3e-4}},
        {"interval": 2, "slot": 0, "hparams": {"actor_lr": 9e-4}}]) + "\n")
    assert initial_hparams(log) == [{"actor_lr": 3e-4}, {"actor_lr": 2e-4}]
    # founder 0 kept its slot in PBT (compared), founder 1 was replaced by copy 2 (not)
    (tmp_path / "pbt.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"interval": 1, "id": 0, "generation": 0, "score": 1.0},
        {"interval": 2, "id": 0, "generation": 0, "score": 4.0},
        {"interval": 2, "id": 2, "generation": 1, "score": 5.0}]) + "\n")
    (tmp_path / "ind.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"interval": 1, "id": 0, "generation": 0, "score": 4.0},
        {"interval": 1, "id": 1, "generation": 0, "score": 2.0}]) + "\n")
    assert untouched_founders(tmp_path / "pbt.jsonl", tmp_path / "ind.jsonl") == [
        {"id": 0, "pbt_score": 4.0, "independent_score": 4.0, "equal": True}]
    pbt = [{"world": w, "sharpe_policy": s} for w, s in enumerate([1.0, 0.0, 2.0, 0.5, 0.3])]
    ind = [{"world": w, "sharpe_policy": s} for w, s in enumerate([0.0, 1.0, 0.0, 0.0, 0.3])]
    h = head_to_head(pbt, ind, seed=0)  # differences 1, -1, 2, 0.5, 0
    assert h["median_difference"]["estimate"] == pytest.approx(0.5)
    assert (h["worlds"], h["pbt_wins"], h["pbt_losses"], h["ties"]) == (5, 3, 1, 1)
    assert h["sign_test_p"] == pytest.approx(5 / 16)  # 3 or more wins of 4 flips
    with pytest.raises(SystemExit):
        head_to_head(pbt, ind[:4], seed=0)


TINY_PHASES = ("--n-envs", "8", "--n-steps", "8", "--hidden-dim", "8", "--n-gru-layers", "1",
               "--precision", "fp32", "--critic-epochs", "1", "--repeats", "1")


def test_phases_times_every_part_of_an_iteration(tmp_path):
    """benchmarks/phases.py on a tiny config: one row per part of the iteration, each with a
    positive time and its share of the whole, saved by device and date; the rollout's and
    the iteration's env-step rates are the batch over their time. gpu_check.sh runs it."""
    import os
    import subprocess
    import sys

    from benchmarks import phases

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert phases.main([*TINY_PHASES, "--out", str(tmp_path)]) == 0
    record = json.loads(result_path("phases", device_info(), tmp_path).read_text())
    rows = {r["part"]: r for r in record["results"]}
    assert list(rows) == ["rollout", "rollout: env alone", "advantages", "joint epochs",
                          "joint: one minibatch step", "joint: its forward (unroll)",
                          "critic epochs", "iteration"]
    assert all(r["seconds"] > 0 and r["compile_s"] > 0 for r in rows.values())
    assert rows["iteration"]["share"] == 1.0
    for name in ("rollout", "iteration"):
        assert rows[name]["env_steps_per_s"] == pytest.approx(64 / rows[name]["seconds"])
    assert rows["joint epochs"]["env_steps_per_s"] is None
    assert record["settings"]["critic_epochs"] == 1 and "of iteration" in out.getvalue()
    # The traced joint epochs: op time per minibatch step by part, every part of the network
    # in both directions; the ops the trace tags with the program are the instructions of
    # its text.
    profile = record["op_profile"]
    assert profile["part"] == "joint epochs" and profile["op_s"] > 0
    steps = record["settings"]["ppo_epochs"] * record["settings"]["n_minibatches"]
    assert profile["steps"] == steps > 1
    # per minibatch step, the GRU cell's ops run once per time step of the minibatch
    in_cell = {o["events"] for o in profile["top_ops"] if "/gru.step/" in o["op_name"]}
    assert in_cell == {8.0}, profile["top_ops"]
    found = {(r["part"], r["direction"]) for r in profile["rows"]}
    for part in ("encoder", "gru", "policy_head", "value_head"):
        assert {(part, "forward"), (part, "backward")} <= found, found
    assert sum(r["share"] for r in profile["rows"]) == pytest.approx(1.0)
    assert profile["unmatched_s"] < 0.01 * profile["op_s"] and profile["source"] == "host"
    top = profile["top_ops"]
    assert top and [o["seconds"] for o in top] == sorted((o["seconds"] for o in top),
                                                         reverse=True)
    assert all((o["part"], o["direction"]) in found and o["events"] > 0 for o in top)
    assert sum(o["seconds"] for o in top) <= profile["op_s"] * (1 + 1e-9)
    assert "the joint epochs' op time per minibatch step" in out.getvalue()
    assert "costliest ops (ms per step, events per step" in out.getvalue()

    # benchmarks/gpu_check.sh's step 5 alone, on the same config (its programs load from the
    # session's compilation cache): its figures land in RESULTS.
    env = dict(os.environ, SKIP_INSTALL="1", STEPS="phases", PYTHON=sys.executable,
               PHASES_ARGS=" ".join([*TINY_PHASES, "--no-op-profile"]), OUT=str(tmp_path / "logs"),
               RESULTS=str(tmp_path / "results"))
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "where an iteration's time goes" in done.stdout and "done, status 0" in done.stdout
    assert result_path("phases", device_info(), tmp_path / "results").exists()

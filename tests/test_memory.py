"""The memory estimate against XLA's buffer plan of the real training program (CPU), its
scaling, the n_envs that fits a budget, and the budget, peak and formatting helpers."""

import os

import jax
import jax.numpy as jnp
import pytest

from jaxtrade import memory
from jaxtrade.config import Config, resolve, validate, with_values
from jaxtrade.trainer import make_train
from tests.conftest import SMALL_EPISODE

BASE = dict(
    hidden_dim=16, n_gru_layers=1, n_steps=16, n_minibatches=2, ppo_epochs=1, critic_epochs=1,
    episode_length=SMALL_EPISODE, precision="fp32",
)
# Five programs, compiled once for the module: SMALL and LARGE differ in n_envs only
# (LARGE is dominated by per-env memory), WIDE varies width, depth, n_steps, minibatches,
# MLP is the feed-forward network (no recurrent state; its own `saved_bytes_per_step`),
# REMAT is WIDE recomputing the GRU's gates in the backward pass.
PROGRAMS = {
    "small": dict(n_envs=32),
    "large": dict(n_envs=512),
    "wide": dict(n_envs=64, hidden_dim=64, n_gru_layers=2, n_steps=32, n_minibatches=4),
    "mlp": dict(n_envs=64, kind="mlp", hidden_dim=64),
    "remat": dict(n_envs=64, hidden_dim=64, n_gru_layers=2, n_steps=32, n_minibatches=4,
                  remat=True),  # WIDE with the GRU's gates recomputed in the backward pass
}


def make_config(**fields) -> Config:
    return validate(resolve(with_values(Config(), **{**BASE, **fields}), "cpu"))


@pytest.fixture(scope="module")
def compiled(small_market):
    """name -> (config, compiled_bytes of `make_train(config).program` for one iteration)."""
    out = {}
    for name, fields in PROGRAMS.items():
        cfg = make_config(**fields)
        trainer = make_train(cfg, small_market)
        state = jax.eval_shape(trainer.init, jax.random.key(0))
        out[name] = cfg, memory.compiled_bytes(trainer.compile(state, 1))
    return out


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_estimate_within_2x_of_xla(compiled, small_env, name):
    cfg, measured = compiled[name]
    est = memory.estimate(cfg, small_env)
    assert sum(est.breakdown.values()) == est.per_device_bytes
    assert 0.5 <= est.per_device_bytes / measured <= 2.0, (name, est.per_device_bytes, measured)


def test_remat_keeps_less_and_the_estimate_says_so(compiled, small_env):
    (wide_cfg, wide), (remat_cfg, remat) = compiled["wide"], compiled["remat"]
    assert remat < wide
    assert (memory.estimate(remat_cfg, small_env).per_env_bytes
            < memory.estimate(wide_cfg, small_env).per_env_bytes)


def test_large_program_is_dominated_by_per_env_memory(compiled, small_env):
    cfg, _ = compiled["large"]
    est = memory.estimate(cfg, small_env)
    assert est.per_env_bytes * cfg.ppo.n_envs > 0.9 * est.per_device_bytes


def test_per_env_slope_within_2x_of_xla(compiled, small_env):
    (cfg_small, small), (cfg_large, large) = compiled["small"], compiled["large"]
    per_env = memory.estimate(cfg_large, small_env).per_env_bytes
    assert memory.estimate(cfg_small, small_env).per_env_bytes == per_env
    measured_slope = (large - small) / (cfg_large.ppo.n_envs - cfg_small.ppo.n_envs)
    assert 0.5 <= per_env / measured_slope <= 2.0, (per_env, measured_slope)


def test_devices_split_the_per_env_part_and_replicate_the_rest(small_env):
    cfg = make_config(n_envs=512)
    one, two = memory.estimate(cfg, small_env), memory.estimate(cfg, small_env, n_devices=2)
    assert two.fixed_bytes == one.fixed_bytes > 0
    assert two.per_env_bytes == one.per_env_bytes
    assert two.per_device_bytes - two.fixed_bytes == (one.per_device_bytes - one.fixed_bytes) // 2
    assert two.breakdown["params"] == one.breakdown["params"]
    assert two.breakdown["rollout"] * 2 == one.breakdown["rollout"]
    assert sum(two.breakdown.values()) == two.per_device_bytes


def test_bf16_stores_observations_in_half_the_bytes(small_env):
    fp32 = memory.estimate(make_config(n_envs=64), small_env)
    bf16 = memory.estimate(make_config(n_envs=64, precision="bf16"), small_env)
    # obs [T, n, D]: 4 -> 2 bytes per element; nothing else in the rollout changes.
    saved = 64 * BASE["n_steps"] * small_env.obs_dim * 2
    assert fp32.breakdown["rollout"] - bf16.breakdown["rollout"] == saved
    assert bf16.per_device_bytes < fp32.per_device_bytes
    assert bf16.fixed_bytes == fp32.fixed_bytes  # parameters and optimizer stay float32


def test_deeper_wider_longer_cost_more(small_env):
    base = memory.estimate(make_config(n_envs=64), small_env).per_env_bytes
    for fields in (dict(hidden_dim=32), dict(n_gru_layers=2), dict(n_steps=32)):
        assert memory.estimate(make_config(n_envs=64, **fields), small_env).per_env_bytes > base
    # No recurrence: the MLP network of the same width keeps less (no GRU state or gates).
    assert memory.estimate(make_config(n_envs=64, kind="mlp"), small_env).per_env_bytes < base
    # More minibatches: fewer envs' activations alive at once.
    assert memory.estimate(make_config(n_envs=64, n_minibatches=4), small_env).per_env_bytes < base


def test_estimate_needs_a_resolved_n_envs(small_env):
    with pytest.raises(ValueError, match="n_envs is not set"):
        memory.estimate(with_values(Config(), **BASE), small_env)


@pytest.mark.parametrize("n_devices", [1, 2])
def test_max_n_envs_is_the_largest_valid_size_that_fits(small_env, n_devices):
    cfg = make_config(n_envs=64, n_minibatches=4)
    budget = 50 * 2**20
    n = memory.max_n_envs(cfg, small_env, budget, n_devices=n_devices)
    step = n_devices * 4
    assert n > 0 and n % step == 0
    fits = memory.estimate(with_values(cfg, n_envs=n), small_env, n_devices).per_device_bytes
    over = memory.estimate(with_values(cfg, n_envs=n + step), small_env, n_devices)
    assert fits <= budget < over.per_device_bytes
    validate(with_values(cfg, n_envs=n), n_devices)  # a size the trainer accepts


def test_max_n_envs_is_zero_when_nothing_fits(small_env):
    cfg = make_config(n_envs=64)
    fixed = memory.estimate(cfg, small_env).fixed_bytes
    assert memory.max_n_envs(cfg, small_env, 1000) == 0
    assert memory.max_n_envs(cfg, small_env, fixed) == 0  # room for the parameters only


def test_device_budget_from_max_vram_in_gb():
    assert memory.device_budget(40) == (40_000_000_000, "--max-vram 40 GB")
    assert memory.device_budget(0.5)[0] == 500_000_000


@pytest.mark.parametrize("bad", [0, -1.5])
def test_device_budget_rejects_non_positive_max_vram(bad):
    with pytest.raises(ValueError, match="--max-vram must be a positive number of GB"):
        memory.device_budget(bad)


def test_device_budget_on_cpu_is_half_the_ram_per_device():
    assert jax.devices()[0].platform == "cpu"
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    budget, how = memory.device_budget()
    assert budget == int(0.5 * ram / jax.local_device_count())
    assert how == (f"50% of {memory.format_bytes(ram)} RAM shared by "
                   f"{jax.local_device_count()} CPU device(s)")


def test_peak_bytes_is_none_on_cpu():
    assert memory.peak_bytes() is None
    assert memory.peak_bytes(jax.devices()[0]) is None


def test_compiled_bytes_adds_arguments_outputs_temporaries_less_aliases():
    x = jnp.ones(256, jnp.float32)
    # Two [256, 256] float32 matmul operands must exist as temporaries; x is donated
    # and reused for the output.
    f = jax.jit(
        lambda x, y: (jnp.sin(jnp.outer(x, y)) @ jnp.cos(jnp.outer(y, x))).sum(0) + x,
        donate_argnums=0,
    )
    compiled = f.lower(x, x).compile()
    m = compiled.memory_analysis()
    assert (m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes) == (
        2048, 1024, 1024)
    assert m.temp_size_in_bytes >= 2 * 256 * 256 * 4
    assert memory.compiled_bytes(compiled) == 2048 + m.temp_size_in_bytes


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (1536, "1.50 KiB"),
        (512 * 2**20, "512.0 MiB"),
        (int(1.23 * 2**30), "1.23 GiB"),
        (int(139.8 * 2**30), "139.8 GiB"),
        (3 * 2**40, "3.00 TiB"),
    ],
)
def test_format_bytes(n, text):
    assert memory.format_bytes(n) == text


def test_dropout_masks_are_counted_where_the_sites_exist(small_env, tmp_path):
    """A mask per dropout site is counted with dropout on, and with dropout 0 under a
    schedule whose phases name a rate (the network has the sites for the whole run), but
    not without either."""
    path = tmp_path / "s.toml"
    path.write_text("[[phase]]\nend = 1_000_000\ndropout = [0.1, 0.0]\n")

    def per_env(**fields) -> int:
        return memory.estimate(make_config(n_envs=32, **fields), small_env).per_env_bytes

    plain = per_env()
    assert per_env(dropout=0.1) > plain
    assert per_env(schedule=str(path)) == per_env(dropout=0.1)

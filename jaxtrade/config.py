"""Run configuration: frozen dataclasses, TOML presets and "key=value" overrides.

A `Config` is built once (defaults <- TOML file <- overrides <- CLI flags) and never
changed afterwards; every step returns a new instance. Sizes that depend on the
machine (`n_envs`), the clock (`run_dir`) or the env (`episode_length`: each env declares
its own) stay None in the file and are filled by `resolve` / `resolve_run_dir`, also
returning new instances, so a run's saved config holds the values it used. Derived sizes
(`total_iterations`, `steps_per_iteration`) are pure functions of a config.

TOML layout: one table per section, keys are the field names; an env's own settings
sit in a sub-table of [env] named after it::

    [ppo]
    n_envs = 8192
    n_steps = 256

    [env]
    name = "portfolio"

    [env.portfolio]
    slippage = 0.001

Every bare field name is unique across sections, so overrides may name a field
as `n_envs=8192`, `ppo.n_envs=8192`, `slippage=0.001` or `env.portfolio.slippage=0.001`.
A field typed `tuple[Item, ...]` with `Item` a dataclass is an array of tables (TOML
`[[section.name]]`, one table per item; `build_table` checks each, `validate` applies the
rules of `Item`'s `setting` fields); schedules and populations are made of them.

Each field is declared once, with `setting`: its default, help, valid range (`Rule`),
CLI flag, and whether it is a runtime hyperparameter or fixes shapes. Everything else
reads those facts: `validate`, `add_flags` (the train command's flags), `FLAG_OF`,
`RUNTIME_FIELDS` (`trainer.HParams`), `SHAPE_FIELDS` (what a resume refuses), and
`PortfolioEnv.make_params` (friction defaults and ranges, from `PortfolioConfig`).

Host-only: nothing here runs under `jit`. JAX is imported only by `compute_dtype`, the
rules of `name` and `kind` (which ask the env registry and the network kinds when `validate`
checks them) and `default_episode_length` (which asks the env registry when `resolve` fills
an unset episode length), and the data package only by `DataConfig.synthetic`, so loading a
config is cheap.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import hashlib
import json
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jax.numpy as jnp

    from jaxtrade.data.synthetic import SyntheticConfig

ACCELERATOR_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")
CPU_PLATFORMS = ("cpu",)
PRECISIONS = ("auto", "fp32", "bf16")
WORLD_WARMUP = 20  # a world's first bars, which only warm its features (features.WINDOW)
DEFAULT_TIMESTEPS = 2_000_000  # run length when none of timesteps/episodes/iterations is given
RUN_ROOT = "ckpt"  # parent of the default run directories


class ConfigError(ValueError):
    """A config file, override or setting that cannot be used; the message is one line."""


# ---------------------------------------------------------------------------
# Settings: every field of the section dataclasses below is declared with `setting`, which
# keeps its facts in the field's metadata: default, help, valid range (a `Rule`), CLI flag,
# and whether it is a runtime hyperparameter or fixes shapes. The tables after the
# dataclasses (`SETTINGS`, `RUNTIME_FIELDS`, `SHAPE_FIELDS`, `FLAG_OF`) and `validate`,
# `add_flags` and `PortfolioEnv.make_params` read them; nothing lists fields by hand.


class Rule:
    """What a setting's value must be; `str(rule)` completes "<key>=<value> must be ..."."""

    def holds(self, value: Any) -> bool:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class AtLeast(Rule):
    low: int | float

    def holds(self, value: Any) -> bool:
        return value >= self.low

    def __str__(self) -> str:
        return f">= {self.low}"


@dataclasses.dataclass(frozen=True)
class Above(Rule):
    low: int | float

    def holds(self, value: Any) -> bool:
        return value > self.low

    def __str__(self) -> str:
        return f"> {self.low}"


@dataclasses.dataclass(frozen=True)
class Between(Rule):
    """low <= value < high, or <= high when `closed`."""

    low: float
    high: float
    closed: bool = False

    def holds(self, value: Any) -> bool:
        return self.low <= value <= self.high if self.closed else self.low <= value < self.high

    def __str__(self) -> str:
        return f"in [{self.low:g}, {self.high:g}{']' if self.closed else ')'}"


@dataclasses.dataclass(frozen=True)
class OneOf(Rule):
    """One of `choices` (a tuple, or a function giving it when JAX may be imported);
    `text` formats them ("{}": the choices joined by '|')."""

    choices: tuple | typing.Callable[[], Iterable]
    text: str = "one of {}"

    def values(self) -> tuple:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def holds(self, value: Any) -> bool:
        return value in self.values()

    def __str__(self) -> str:
        return self.text.format("|".join(map(str, self.values())))


@dataclasses.dataclass(frozen=True)
class Check(Rule):
    """Any test of the value, described by `text`."""

    test: typing.Callable[[Any], bool]
    text: str

    def holds(self, value: Any) -> bool:
        return self.test(value)

    def __str__(self) -> str:
        return self.text


def _registered_envs() -> tuple[str, ...]:
    from jaxtrade.envs import registered

    return tuple(registered())


def _network_kinds() -> tuple[str, ...]:
    from jaxtrade.networks import KINDS

    return tuple(KINDS)


@dataclasses.dataclass(frozen=True)
class Setting:
    """The facts of one config field besides its name, type and default (see `setting`)."""

    help: str
    rule: Rule | None = None
    # The CLI flag, or None: none of its own (set by --config, --hyperparams). As given to
    # `setting`: True for --field-name, False for none; `SETTINGS` holds the resolved flag.
    flag: str | bool | None = None
    metavar: str | None = None
    default_text: str | None = None  # the default as the flag's help shows it, if not the value
    runtime: bool = False
    shape: bool = False


_META = "jaxtrade"  # the key of a field's `Setting` in its dataclasses metadata


def setting(
    default: Any,
    help: str,
    *,
    rule: Rule | None = None,
    flag: str | bool = True,
    metavar: str | None = None,
    default_text: str | None = None,
    runtime: bool = False,
    shape: bool = False,
) -> Any:
    """A config field with its facts.

    Args:
        default: the field's default.
        help: what it means; the help of its CLI flag, which adds " [default]".
        rule: the values `validate` (and `PortfolioEnv.make_params`, for the env's) accept;
            None (the value, for fields that may be None) always passes.
        flag: True: the CLI flag `--field-name`; a string: that flag; False: no flag of its
            own (the field is set by a config file, --hyperparams, or another option).
        metavar: the flag's value placeholder in --help (default: the field name, upper case).
        default_text: the default as --help shows it, when not the value itself.
        runtime: a runtime hyperparameter: it lives in `TrainState.hparams` and may change
            between iterations (or on resume) without recompiling.
        shape: it fixes array shapes, the market or the compiled program's numerics, so a
            resumed run may not change it (`checkpoint.resume_changes`).
    """
    meta = Setting(help=help, rule=rule, flag=flag, metavar=metavar, default_text=default_text,
                   runtime=runtime, shape=shape)
    return dataclasses.field(default=default, metadata={_META: meta})


@dataclasses.dataclass(frozen=True)
class WorldsConfig:
    """[data.worlds]: the procedural worlds of a `--market worlds` run (`jaxtrade.worlds`).

    Training worlds, validation worlds and test worlds come from three disjoint seed
    streams of `world_seed`; the validation and test worlds are fixed for the run and
    recorded in market.json, the training pool may be regenerated (`refresh_every`)."""

    n_worlds: int | None = setting(  # None = sized by `default_n_worlds`
        None, "training worlds held on device", flag="--worlds", metavar="N",
        rule=AtLeast(1), shape=True,
        default_text="256 on CPU; on accelerators as many as a twentieth of the memory "
                     "budget holds, at most 4096")
    world_bars: int = setting(  # the first features.WINDOW (20) only warm the features
        600, "bars generated per world", rule=AtLeast(32), shape=True)
    val_worlds: int = setting(
        64, "validation worlds: they choose checkpoints and the baseline to beat",
        rule=AtLeast(1), shape=True)
    test_worlds: int = setting(
        128, "test worlds: only python -m jaxtrade.evaluate reads them", rule=AtLeast(1),
        shape=True)
    world_seed: int = setting(
        0, "seed of the run's worlds (same seed, same worlds)", rule=AtLeast(0), shape=True)
    refresh_every: int = setting(
        0, "regenerate the training pool from fresh seeds every K iterations; 0 = never",
        metavar="K", rule=AtLeast(0), shape=True)  # it numbers the pools: fixed for a run


MARKETS = ("fixed", "worlds")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the bars come from and how they are split (see `jaxtrade.data.load_market`)."""

    path: str | None = setting(  # None = the embedded synthetic market
        None, "CSV/Parquet file or directory of per-symbol CSVs (default: the embedded "
        "synthetic market)", flag="--data", metavar="PATH", shape=True)
    symbols: tuple[str, ...] | None = setting(  # assets to keep, in this order; None = all
        None, "comma-separated subset of symbols", shape=True)
    start: str | None = setting(None, "first date to load (inclusive)", shape=True)
    end: str | None = setting(None, "last date to load (inclusive)", shape=True)
    max_fill: int = setting(  # longest gap forward-filled per asset before it is an error
        5, "max consecutive missing bars to forward-fill", rule=AtLeast(0), shape=True)
    val_fraction: float = setting(
        0.2, "share of bars in the validation range, which chooses checkpoints and stops early",
        rule=Between(0, 1), shape=True)
    test_fraction: float = setting(
        0.2, "share of bars in the test range, last; training never reads it, only "
        "python -m jaxtrade.evaluate does", rule=Between(0, 1), shape=True)
    split_dates: tuple[str, ...] | None = setting(
        None, "first validation date and first test date (override the fractions)",
        metavar="VAL_DATE,TEST_DATE", shape=True,
        rule=Check(lambda v: len(v) == 2, "two dates: the first validation and the first test "
                                          "date"))
    n_assets: int = setting(
        12, "synthetic market: stocks (cash is added by the env)", rule=AtLeast(1), flag=False,
        shape=True)
    n_bars: int = setting(
        2520, "synthetic market: bars to generate (about 10 years of days)", rule=AtLeast(2),
        flag=False, shape=True)
    synthetic_seed: int = setting(
        0, "synthetic market: same seed, same market", rule=AtLeast(0), flag=False, shape=True)
    signal_strength: float = setting(  # 0 = no signal
        1.0, "synthetic market: strength of the tradable signal", rule=AtLeast(0), shape=True)
    market: str | None = setting(  # None = resolve_market: worlds, or fixed with a path
        None, "fixed: one market (the embedded one, or --data) split by date; worlds: "
        "procedural worlds, train, validation and test worlds apart ([data.worlds])",
        flag="--market", metavar="KIND", rule=OneOf(MARKETS), shape=True,
        default_text="worlds for the portfolio env; fixed with --data or another env")
    worlds: WorldsConfig = WorldsConfig()  # [data.worlds]

    def synthetic(self) -> SyntheticConfig:
        """The `SyntheticConfig` of the embedded market (other parameters at their defaults)."""
        from jaxtrade.data.synthetic import SyntheticConfig

        return SyntheticConfig(
            n_assets=self.n_assets,
            n_bars=self.n_bars,
            seed=self.synthetic_seed,
            signal_strength=self.signal_strength,
        )


@dataclasses.dataclass(frozen=True)
class PortfolioConfig:
    """[env.portfolio]: frictions and reward shaping of the portfolio env (its `make_params`
    takes its defaults and checks its ranges from here)."""

    slippage: float = setting(
        0.0005, "proportional cost per unit traded", rule=Between(0, 0.1), flag=False)
    spread: float = setting(
        0.0002, "half the bid-ask spread paid per unit traded", rule=Between(0, 0.1), flag=False)
    impact: float = setting(
        0.01, "square-root market-impact coefficient", rule=Between(0, 1), flag=False)
    turnover_penalty: float = setting(
        0.0, "reward penalty per unit of turnover", rule=AtLeast(0), flag=False)
    drawdown_penalty: float = setting(
        0.0, "reward penalty per unit of drawdown", rule=AtLeast(0), flag=False)
    ruin_fraction: float = setting(
        0.5, "episode ends when equity falls below this share of the start",
        rule=Between(0, 1), flag=False)
    bootstrap_block: float = setting(  # stationary bootstrap (Politis-Romano) of the bars
        0.0, "training episodes as stationary block-bootstrap paths of the training range, "
        "blocks of this mean length in bars (each step jumps to a random bar with "
        "probability 1/L); 0 = the bars in order", metavar="L",
        rule=Check(lambda v: v == 0 or v >= 2, "0 (off) or at least 2 bars"))
    reward_benchmark: str = setting(  # a control variate: it does not depend on the actions
        "none", "training reward relative to a benchmark: none (the portfolio's log growth) "
        "or equal_weight (its log growth minus that of the assets' equal-weight index, "
        "rebalanced every bar at no cost); the benchmark does not depend on the actions, so "
        "the best policy is the same; reported figures stay the plain after-cost returns",
        metavar="NAME", rule=OneOf(("none", "equal_weight")))
    decide_every: int = setting(  # the policy's REGIME/k: the baselines trade every 1, 5, 20
        1, "bars between the policy's decisions: it chooses a regime every k-th step of an "
        "episode (or evaluation walk) and may only HOLD in between (an action mask), as the "
        "fixed strategies REGIME/k do; 1 = every bar", metavar="K", rule=AtLeast(1))
    augment: str = setting(  # only the flat encoder can tell: the set encoder is invariant
        "none", "training augmentation: none, or permute (every training episode sees the "
        "assets in a random order of its own; evaluation keeps the data's order)",
        metavar="KIND", rule=OneOf(("none", "permute")), shape=True)


@dataclasses.dataclass(frozen=True)
class FundingConfig:
    """[env.funding]: fees, margin rules and the ranges of the trading configs the funding
    env draws per episode (`jaxtrade.envs.funding`; its `make_params` takes its defaults and
    checks its ranges here). A range whose min equals its max fixes the config."""

    taker_fee: float = setting(
        0.0005, "fee per leg on traded value, at entry and at exit", rule=Between(0, 0.01),
        flag=False)
    fill_slippage: float = setting(
        0.0002, "fraction of the mark price a fill moves against the trade",
        rule=Between(0, 0.05), flag=False)
    maintenance_rate: float = setting(
        0.005, "maintenance margin rate of a leg (one risk tier)", rule=Between(0, 0.5),
        flag=False)
    liquidation_penalty: float = setting(
        0.0, "reward penalty per liquidated leg (basis points of the initial equity)",
        rule=AtLeast(0), flag=False)
    ruin_equity: float = setting(
        0.5, "episode ends when equity falls below this share of the start",
        rule=Between(0, 1), flag=False)
    leverage_min: float = setting(1.0, "least max leverage drawn per episode",
                                  rule=AtLeast(1), flag=False)
    leverage_max: float = setting(10.0, "largest max leverage drawn per episode",
                                  rule=AtLeast(1), flag=False)
    utilisation_min: float = setting(0.3, "least target utilisation drawn per episode",
                                     rule=Between(0.01, 1), flag=False)
    utilisation_max: float = setting(0.8, "largest target utilisation drawn per episode",
                                     rule=Between(0.01, 1), flag=False)
    positions_min: int = setting(1, "fewest max positions drawn per episode",
                                 rule=Between(1, 6), flag=False)
    positions_max: int = setting(5, "most max positions drawn per episode",
                                 rule=Between(1, 6), flag=False)
    buffer_min: float = setting(0.0, "least liquidation buffer drawn per episode",
                                rule=Between(0, 0.5), flag=False)
    buffer_max: float = setting(0.05, "largest liquidation buffer drawn per episode "
                                "(a position closes when a leg's mark comes within this "
                                "fraction of its entry of its liquidation price)",
                                rule=Between(0, 0.5), flag=False)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Which env and its episode length, then one sub-table per env with settings of its own
    (`[env.portfolio]`); an env reads only its own (`params_kwargs`)."""

    name: str = setting(
        "portfolio", "registered environment (jaxtrade.envs.registered())", flag="--env",
        metavar="NAME", rule=OneOf(_registered_envs, "a registered env: {}"), shape=True)
    episode_length: int | None = setting(  # None = the env's own (`default_episode_length`)
        None, "steps per training episode", rule=AtLeast(1), shape=True,
        default_text="the env's own: 256 bars for portfolio, 24 hours (a day) for funding")
    portfolio: PortfolioConfig = PortfolioConfig()  # [env.portfolio]
    funding: FundingConfig = FundingConfig()  # [env.funding]

    def section(self, name: str | None = None) -> Any | None:
        """The settings of env `name` (default: the chosen env), `[env.<name>]` with dashes
        as underscores; None for an env without a table of its own."""
        value = getattr(self, (self.name if name is None else name).replace("-", "_"), None)
        return value if dataclasses.is_dataclass(value) else None

    def steps_per_episode(self) -> int:
        """The episode length: as set, else the chosen env's own (`default_episode_length`;
        `resolve` fills it in, so a resolved config holds it)."""
        if self.episode_length is not None:
            return self.episode_length
        return default_episode_length(self.name)

    def params_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the chosen env's `make_params` (besides `split`, `start`):
        the episode length and the fields of the env's own section, no other env's."""
        section = self.section()
        return {"episode_length": self.steps_per_episode(),
                **(dataclasses.asdict(section) if section is not None else {})}


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Actor-critic kind, shape and compute precision (see `jaxtrade.networks`)."""

    kind: str = setting(
        "gru", "network: gru (recurrent), mlp (feed-forward) or transformer (attention over "
        "the last --context steps)", flag="--network", metavar="KIND",
        rule=OneOf(_network_kinds), shape=True)
    encoder: str = setting(  # how the trunk reads an observation
        "flat", "encoder: flat (one vector) or set (the same blocks per asset, pooled over "
        "assets: any number of assets, in any order)", rule=OneOf(("flat", "set")),
        shape=True)
    hidden_dim: int = setting(  # the heads are hidden_dim // 2 wide
        256, "encoder/GRU width", rule=AtLeast(2), shape=True)
    n_gru_layers: int = setting(2, "stacked GRU layers", rule=AtLeast(1), shape=True)  # gru only
    n_layers: int = setting(  # transformer only
        2, "transformer blocks", rule=AtLeast(1), shape=True)
    n_heads: int = setting(  # transformer only; hidden_dim must split into them (or head_dim)
        4, "attention heads per transformer block", rule=AtLeast(1), shape=True)
    head_dim: int | None = setting(  # transformer only; set it to grow heads at a fixed width
        None, "width of an attention head", default_text="hidden_dim / n_heads",
        rule=AtLeast(1), shape=True)
    context: int = setting(  # transformer only: the memory is K steps of every block's input
        16, "steps before the current one a transformer attends to", metavar="K",
        rule=AtLeast(1), shape=True)
    dropout: float = setting(  # in updates only; > 0 (or in a schedule) compiles the sites
        0.0, "dropout rate", rule=Between(0, 1), runtime=True)
    precision: str = setting(  # the matmul dtype
        "auto", "matmul precision: auto = bf16 on GPU, fp32 on CPU", rule=OneOf(PRECISIONS),
        shape=True)
    remat: bool = setting(  # gru only: the CLI's --remat; jax.checkpoint of each unroll step
        False, "recompute the GRU's gates in the backward pass instead of keeping them: less "
        "memory per env and step, more compute", flag=False, shape=True)

    def compute_dtype(self, platform: str) -> jnp.dtype:
        """The matmul dtype on `platform`; see the module function `compute_dtype`."""
        return compute_dtype(self.precision, platform)

    def problems(self) -> list[str]:
        """What breaks the rules across this section's fields (one item of `validate`'s
        message each)."""
        out = []
        if self.kind == "transformer" and self.head_dim is None and self.hidden_dim % self.n_heads:
            out.append(f"hidden_dim={self.hidden_dim!r} must be a multiple of "
                       f"n_heads={self.n_heads!r} for the transformer (or set head_dim)")
        if self.remat and self.kind != "gru":
            out.append(f"remat recomputes the GRU's gates; the {self.kind} network has none")
        return out


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Rollout sizes and PPO hyperparameters (initial values; schedules may change the
    runtime ones)."""

    n_envs: int | None = setting(  # None = default_n_envs(platform)
        None, "parallel envs over all devices", rule=AtLeast(1), shape=True,
        default_text="64 on CPU, 65536 on GPU; fewer when the memory estimate exceeds "
                     "--max-vram")
    n_steps: int = setting(128, "rollout steps per iteration", rule=AtLeast(1), shape=True)
    n_minibatches: int = setting(  # each takes n_envs / n_minibatches whole envs
        4, "minibatches per epoch (split envs)", rule=AtLeast(1), shape=True)
    ppo_epochs: int = setting(4, "joint actor-critic epochs", rule=AtLeast(1))
    critic_epochs: int = setting(  # on cached trunk features; 0 = none
        4, "extra critic-only epochs", rule=AtLeast(0))
    actor_lr: float = setting(  # every parameter but the value head
        3e-4, "actor chain learning rate", rule=Above(0), runtime=True)
    critic_lr: float = setting(  # value head
        9e-4, "critic chain learning rate", rule=Above(0), runtime=True)
    gamma: float = setting(0.99, "discount", rule=Between(0, 1, closed=True), runtime=True)
    gae_lambda: float = setting(
        0.95, "GAE lambda", rule=Between(0, 1, closed=True), runtime=True)
    clip: float = setting(0.2, "PPO clip range", rule=Above(0), runtime=True)
    ent_coef: float = setting(0.01, "entropy bonus coefficient", rule=AtLeast(0), runtime=True)
    vf_coef: float = setting(  # in the actor-critic loss
        0.5, "value loss coefficient", rule=AtLeast(0), runtime=True)
    max_grad_norm: float = setting(  # in both optimizer chains' states
        0.5, "per-chain global-norm clip", rule=Above(0), runtime=True)
    clip_value: bool = setting(
        False, "clip the value update to +-clip around the rollout's values", flag=False)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Duration, seed, output and logging of a run (the first duration given counts; none
    given = DEFAULT_TIMESTEPS steps)."""

    timesteps: int | None = setting(None, "train for this many env steps", rule=AtLeast(1))
    episodes: int | None = setting(
        None, "train for this many x episode length steps", rule=AtLeast(1))
    iterations: int | None = setting(
        None, "train for this many x n_envs x n_steps steps", rule=AtLeast(1))
    seed: int = setting(  # same config + seed + device count = same result
        0, "random seed", rule=AtLeast(0))
    run_dir: str | None = setting(  # None = filled by resolve_run_dir
        None, "run directory", rule=Check(lambda v: v != "", "a path or none"),
        default_text="ckpt/<UTC time>-<preset name or config hash>")
    iterations_per_call: int = setting(
        1, "iterations fused into one compiled call between host checks", rule=AtLeast(1))
    log_every: int = setting(1, "iterations between log lines", rule=AtLeast(1))
    verbosity: int = setting(  # set by the CLI's -q / -v
        1, "0 quiet, 1 default, 2 verbose", rule=OneOf((0, 1, 2), "0, 1 or 2"), flag=False)
    save_every: int = setting(  # at a call boundary
        10, "iterations between checkpoints; 0 = only the final one", rule=AtLeast(0))
    keep_checkpoints: int = setting(
        3, "most recent checkpoints kept, besides the best and the final one", rule=AtLeast(1))
    eval_every: int = setting(  # at a call boundary
        10, "iterations between greedy walks of the validation range, logged as val_* in "
        "metrics.jsonl and ranking checkpoints by val_score; 0 = off", rule=AtLeast(0))
    early_stop: int = setting(
        0, "stop when N validation walks in a row found no new best val_score; 0 = off",
        metavar="N", rule=AtLeast(0))
    schedule: str | None = setting(  # jaxtrade.schedule
        None, "schedule TOML: phases of runtime hyperparameters (linear within a phase) that "
        "the compiled program follows from its timestep; e.g. configs/schedules/reference.toml",
        metavar="PATH", rule=Check(lambda v: v != "", "a path or none"))
    schedule_scale: float = setting(
        1.0, "multiply the schedule's phase ends (in timesteps) by this, e.g. 0.1 runs a 10M "
        "schedule in 1M", metavar="X", rule=Above(0))
    schedule_fixed: tuple[str, ...] | None = setting(  # set from --hyperparams and flags
        None, "runtime hyperparameters the schedule leaves at the config's value (those the "
        "user set with --hyperparams or their own flags)", flag=False)
    phase_transitions: str = setting(  # jaxtrade.transitions
        "plateau", "when a schedule's phase may end before its end step: 'plateau' (its "
        "transition rule, checked at each validation walk) or 'off'", metavar="RULE",
        rule=OneOf(("plateau", "off")))
    reset_optimizer_on_plateau: bool = setting(  # the CLI's --reset-optimizer-on-plateau
        False, "fresh Adam moments for the next phase when a phase ended on its transition "
        "rule", flag=False)
    adjust: str = setting(  # jaxtrade.adjust
        "off", "hyperparameter adjustments at each validation walk: 'off' or 'rules' (the "
        "reference rule book, logged to hparams.jsonl)", metavar="MODE",
        rule=OneOf(("off", "rules")))


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run: one field per TOML section."""

    data: DataConfig = DataConfig()  # [data]
    env: EnvConfig = EnvConfig()  # [env]
    network: NetworkConfig = NetworkConfig()  # [network]
    ppo: PPOConfig = PPOConfig()  # [ppo]
    run: RunConfig = RunConfig()  # [run]


# ---------------------------------------------------------------------------
# Field tables, built once from the dataclasses.

def _is_table(tp: Any) -> bool:
    """Whether a field of type `tp` is a (sub)section: a dataclass, a TOML table."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _walk_sections(cls: type, path: str = "") -> Iterable[tuple[str, type]]:
    """(dotted path, dataclass) of every section under `cls`, depth first, in declaration
    order: data, env, env.portfolio, network, ..."""
    for name, tp in typing.get_type_hints(cls).items():
        if _is_table(tp):
            sub = f"{path}.{name}" if path else name
            yield sub, tp
            yield from _walk_sections(tp, sub)


_SECTIONS: dict[str, type] = dict(_walk_sections(Config))  # section path -> dataclass
_FIELD_TYPES: dict[str, dict[str, Any]] = {  # section path -> {field: type}, sub-tables aside
    path: {k: tp for k, tp in typing.get_type_hints(cls).items() if not _is_table(tp)}
    for path, cls in _SECTIONS.items()
}


def _field_sections() -> dict[str, str]:
    """Bare field name -> section path; bare names must be unique for overrides to work."""
    owner: dict[str, str] = {}
    for section, types_ in _FIELD_TYPES.items():
        for name in types_:
            if name in owner:
                raise RuntimeError(f"field {name!r} is in both [{owner[name]}] and [{section}]")
            owner[name] = section
    return owner


_FIELD_SECTION = _field_sections()


def section_of(cfg: Any, path: str) -> Any:
    """The section at dotted `path` of `cfg` (`section_of(cfg, "env.portfolio")`)."""
    for name in path.split("."):
        cfg = getattr(cfg, name)
    return cfg


def field_names() -> list[str]:
    """All valid bare keys, section by section in declaration order."""
    return list(_FIELD_SECTION)


def values_of(cfg: Config) -> dict[str, Any]:
    """Bare key -> value of every field of `cfg`, as JSON types (tuples become lists)."""
    return {k: _plain(getattr(section_of(cfg, path), k)) for k, path in _FIELD_SECTION.items()}


def value_of(cfg: Config, key: str) -> Any:
    """The value of the field named `key` (bare) in `cfg`."""
    return getattr(section_of(cfg, _FIELD_SECTION[key]), key)


def _array_item(tp: Any) -> type | None:
    """The dataclass of an array-of-tables field (`tuple[Item, ...]`, TOML `[[...]]`), else
    None."""
    base = _base_type(tp)
    if typing.get_origin(base) is tuple and _is_table(typing.get_args(base)[0]):
        return typing.get_args(base)[0]
    return None


def _base_type(tp: Any) -> Any:
    """`tp` without its `| None`."""
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _settings() -> dict[str, Setting]:
    """Bare field name -> its `Setting`, flags resolved (every field must be a `setting`)."""
    table: dict[str, Setting] = {}
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            if f.name not in _FIELD_TYPES[section]:  # a sub-table: a section of its own
                continue
            meta = f.metadata.get(_META)
            if meta is None:
                raise RuntimeError(f"[{section}] {f.name} is not declared with setting()")
            if meta.runtime and _FIELD_TYPES[section][f.name] is not float:
                raise RuntimeError(f"[{section}] {f.name}: a runtime hyperparameter is a float")
            flag = "--" + f.name.replace("_", "-") if meta.flag is True else meta.flag or None
            table[f.name] = dataclasses.replace(meta, flag=flag)
    return table


SETTINGS: dict[str, Setting] = _settings()
# Runtime hyperparameters (`trainer.HParams`): they may change between iterations, and on
# resume, without recompiling.
# [ppo]'s in their section's order, then dropout; `trainer.HParams` is built by keyword
# and keeps its own field order (the saved state's), which need not be this one.
RUNTIME_FIELDS: tuple[str, ...] = tuple(sorted(
    (k for k, s in SETTINGS.items() if s.runtime), key=lambda k: _FIELD_SECTION[k] != "ppo"))
# Settings a resumed run may not change: they fix array shapes, the market, or the compiled
# program's numerics (precision), so the saved state would not fit or would mean something
# else (`checkpoint.resume_changes`).
SHAPE_FIELDS: tuple[str, ...] = tuple(k for k, s in SETTINGS.items() if s.shape)
# Config key -> the CLI flag that sets it, for the fields that have one (named in messages).
FLAG_OF: dict[str, str] = {k: s.flag for k, s in SETTINGS.items() if s.flag}


def default_of(key: str) -> Any:
    """The default of the field named `key` (bare)."""
    return getattr(_SECTIONS[_FIELD_SECTION[key]], key)


def broken_rule(key: str, value: Any) -> Rule | None:
    """The rule of the field named `key` that `value` breaks, or None when it holds (or the
    field has no rule, or `value` is None: whether a field may be None is its type's)."""
    rule = SETTINGS[key].rule
    if rule is None or value is None or rule.holds(value):
        return None
    return rule


# ---------------------------------------------------------------------------
# CLI flags of the settings (the train command's `build_parser`).


def _show(value: Any) -> str:
    """A default as --help shows it: 0.99, 1.0, 256, 3e-4, auto."""
    if isinstance(value, float) and value and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return str(value)


def flag_help(key: str) -> str:
    """The --help text of the flag of `key`: its help and its default in brackets."""
    s = SETTINGS[key]
    shown = s.default_text if s.default_text is not None else default_of(key)
    return s.help if shown is None else f"{s.help} [{_show(shown)}]"


def add_flags(group: Any, keys: Iterable[str]) -> None:
    """Adds the CLI flags of the fields `keys`, in that order, to an argparse parser or group.

    Each flag stores into the field's name, None when not given; ints and floats are
    typed, lists are one comma-separated string (`flag_values` splits it), a static
    `OneOf` rule gives the choices. Help: the setting's help and default ("discount [0.99]").

    Raises:
        ValueError: a field without a flag, or of a type no flag can carry (bool).
    """
    for key in keys:
        s = SETTINGS[key]
        if s.flag is None:
            raise ValueError(f"{key} has no CLI flag")
        tp = _base_type(_FIELD_TYPES[_FIELD_SECTION[key]][key])
        kwargs: dict[str, Any] = {"dest": key, "help": flag_help(key).replace("%", "%%")}
        if tp in (int, float):
            kwargs["type"] = tp
        elif tp is not str and typing.get_origin(tp) is not tuple:
            raise ValueError(f"{key}: no CLI flag for a field of type {_describe(tp)}")
        if s.metavar is not None:
            kwargs["metavar"] = s.metavar
        if isinstance(s.rule, OneOf) and not callable(s.rule.choices):
            kwargs["choices"] = s.rule.choices
        group.add_argument(s.flag, **kwargs)


def flag_values(args: Any, keys: Iterable[str]) -> dict[str, Any]:
    """The values of the flags of `keys` in parsed `args` (None: not given), comma-separated
    lists split into tuples; for `with_values`."""
    values = {}
    for key in keys:
        value = getattr(args, key)
        tp = _base_type(_FIELD_TYPES[_FIELD_SECTION[key]][key])
        if isinstance(value, str) and typing.get_origin(tp) is tuple:
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        values[key] = value
    return values


# ---------------------------------------------------------------------------
# Type checking and coercion of loaded values.


def _describe(tp: Any) -> str:
    """A reader's name for a field type: 'int', 'float or none', 'list of str or none'."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + " or none"
    if typing.get_origin(tp) is tuple:
        return f"list of {_describe(args[0])}"
    return tp.__name__


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` as type `tp`: ints widen to float, lists become tuples, TOML dates become str.

    Integral floats (e.g. `timesteps = 2e6`) are accepted for int fields; bools are
    never taken for numbers, nor numbers for bools. Arrays of tables (`tuple[Item, ...]`,
    TOML `[[name]]`) become tuples of `Item`s, each table checked by `build_table`.

    Raises:
        ConfigError: naming `where`, the expected type and the value.
    """
    optional = typing.get_origin(tp) in (types.UnionType, typing.Union)
    base = next(a for a in typing.get_args(tp) if a is not type(None)) if optional else tp

    def fail() -> typing.NoReturn:
        shown = "none" if value is None else f"{type(value).__name__} {value!r}"
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {shown}")

    if value is None:
        if optional:
            return None
        fail()
    if (item_cls := _array_item(base)) is not None:  # [[...]]: a list of tables
        if not isinstance(value, list | tuple):
            fail()
        return tuple(v if isinstance(v, item_cls) else build_table(item_cls, v, f"{where} #{i + 1}")
                     for i, v in enumerate(value))
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        if isinstance(value, str):  # a single symbol
            value = [value]
        if not isinstance(value, list | tuple):
            fail()
        if item is str:  # TOML date literals, e.g. split_dates = [2021-01-04, 2022-01-03]
            value = [v.isoformat() if isinstance(v, dt.date | dt.datetime | dt.time) else v
                     for v in value]
        if not all(isinstance(v, item) for v in value):
            fail()
        return tuple(value)
    if base is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if base is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail()
        return float(value)
    if base is str:
        if isinstance(value, dt.date | dt.datetime | dt.time):  # TOML date literals
            return value.isoformat()
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"unsupported field type {tp!r}")  # a new field type needs a case above


def _prefix(source: str | os.PathLike | None) -> str:
    return f"{os.fspath(source)}: " if source is not None else ""


# Keys of older versions -> what replaced them, named when a file or override uses one.
_RENAMED = {
    "eval_fraction": "val_fraction and test_fraction (--val-fraction, --test-fraction): data "
                     "is split into train, validation and test ranges",
    "split_date": "split_dates (--split-dates FIRST_VALIDATION,FIRST_TEST): data is split "
                  "into train, validation and test ranges",
}


def _renamed(key: str, source: str | os.PathLike | None) -> ConfigError | None:
    if key not in _RENAMED:
        return None
    return ConfigError(f"{_prefix(source)}'{key}' was replaced by {_RENAMED[key]}")


def _unknown_key(key: str, section: str, source: str | os.PathLike | None) -> ConfigError:
    if (renamed := _renamed(key, source)) is not None:
        return renamed
    valid = list(_FIELD_TYPES[section])
    valid += [f"[{sub}]" for sub in _SECTIONS if sub.rpartition(".")[0] == section]
    hint = ""
    if key in _FIELD_SECTION:
        hint = f" ('{key}' belongs in [{_FIELD_SECTION[key]}])"
    elif close := difflib.get_close_matches(key, valid, n=1):
        hint = f" (did you mean '{close[0]}'?)"
    return ConfigError(
        f"{_prefix(source)}unknown key '{key}' in [{section}]{hint}; valid keys: {', '.join(valid)}"
    )


# ---------------------------------------------------------------------------
# Loading and dumping.


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The raw tables of a TOML file (check and apply them with `from_dict`).

    Raises:
        ConfigError: the file is missing or is not valid TOML.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{os.fspath(path)}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{os.fspath(path)}: invalid TOML: {e}") from None


def build_table(cls: type, table: Any, where: str) -> Any:
    """An instance of the dataclass `cls` from a TOML table (one item of an array of tables,
    or a whole file of another layout, e.g. a schedule): every key known and type-checked
    (`_coerce`; sub-tables and arrays of tables recursively), every field without a default
    given. The rules of its `setting` fields are `table_problems`'.

    Raises:
        ConfigError: naming `where`: not a table, an unknown key, a wrong type, a missing key.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table of keys, got {table!r}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in table.items():
        if key not in hints:
            close = difflib.get_close_matches(key, list(hints), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key '{key}'{hint}; valid keys: "
                              f"{', '.join(hints)}")
        tp = hints[key]
        values[key] = (build_table(tp, value, f"{where} {key}") if _is_table(tp)
                       else _coerce(value, tp, f"{where} {key}"))
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    return cls(**values)


def _apply(obj: Any, path: str, table: Mapping[str, Any], source: str | os.PathLike | None
           ) -> Any:
    """The section `obj` (at dotted `path`) with the values of `table` applied, sub-tables
    recursively."""
    pre = _prefix(source)
    updates = {}
    for key, value in table.items():
        sub = f"{path}.{key}"
        if sub in _SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{pre}[{sub}] must be a table of keys, got {value!r}")
            updates[key] = _apply(getattr(obj, key), sub, value, source)
        elif key in _FIELD_TYPES[path]:
            updates[key] = _coerce(value, _FIELD_TYPES[path][key], f"{pre}[{path}] {key}")
        elif isinstance(value, Mapping) and key not in _FIELD_SECTION:
            raise ConfigError(f"{pre}unknown section [{sub}]; valid sections: "
                              f"{', '.join(_SECTIONS)}")
        else:
            raise _unknown_key(key, path, source)
    return dataclasses.replace(obj, **updates)


def from_dict(
    d: Mapping[str, Any],
    base: Config = Config(),
    *,
    source: str | os.PathLike | None = None,
) -> Config:
    """`base` with the values of `d` (sections data, env with its sub-tables, network, ppo,
    run) applied.

    Missing sections and keys keep `base`'s values. Accepts `load_toml`'s and
    `to_dict`'s output, so `from_dict(to_dict(cfg)) == cfg`.

    Args:
        d: {section: {key: value or {key: value} for a sub-table}}.
        base: the config the values are applied to.
        source: the file `d` came from, named in error messages.

    Raises:
        ConfigError: an unknown section or key, or a value of the wrong type.
    """
    pre = _prefix(source)
    updates: dict[str, Any] = {}
    for section, table in d.items():
        if section not in _SECTIONS or "." in section:
            if section in _FIELD_SECTION:
                raise ConfigError(
                    f"{pre}key '{section}' must be inside a section: "
                    f"put it under [{_FIELD_SECTION[section]}]"
                )
            raise ConfigError(
                f"{pre}unknown section [{section}]; valid sections: {', '.join(_SECTIONS)}"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"{pre}[{section}] must be a table of keys, got {table!r}")
        updates[section] = _apply(getattr(base, section), section, table, source)
    return dataclasses.replace(base, **updates)


def from_saved(d: Mapping[str, Any], *, source: str | os.PathLike | None = None) -> Config:
    """`from_dict` of a config a run saved (config.json, checkpoint metadata), older layouts
    included: before per-env sections, the portfolio's settings sat in [env] itself."""
    if "market" not in d.get("data", {}):  # saved before worlds existed: one market
        d = {**d, "data": {**d.get("data", {}), "market": "fixed"}}
    env = dict(d.get("env", {}))
    moved = {k: env.pop(k) for k in list(env) if k in _FIELD_TYPES["env.portfolio"]}
    if moved:
        env["portfolio"] = {**moved, **env.get("portfolio", {})}
        d = {**d, "env": env}
    return from_dict(d, source=source)


def load(path: str | os.PathLike, base: Config = Config()) -> Config:
    """`from_dict(load_toml(path), base)`, with `path` named in error messages."""
    return from_dict(load_toml(path), base, source=path)


def _plain(value: Any) -> Any:
    """`value` as JSON types: sections and table items as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """{section: {key: value, sub-table: {...}}} with only JSON types (tuples become lists);
    for `config.json`."""
    return _plain(cfg)


# ---------------------------------------------------------------------------
# Overrides.


def _unknown_bare_key(key: str, source: str) -> ConfigError:
    if (renamed := _renamed(key, source)) is not None:
        return renamed
    close = difflib.get_close_matches(key, list(_FIELD_SECTION), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(
        f"{source}: unknown key '{key}'{hint}; valid keys: {', '.join(_FIELD_SECTION)}"
    )


def _set(cfg: Config, key: str, value: Any, source: str) -> Config:
    """`cfg` with the field named `key` (bare) set to `value`, type-checked."""
    if key not in _FIELD_SECTION:
        raise _unknown_bare_key(key, source)
    table: dict[str, Any] = {key: value}
    for name in reversed(_FIELD_SECTION[key].split(".")):
        table = {name: table}
    return from_dict(table, cfg, source=source)


def with_values(cfg: Config, **fields: Any) -> Config:
    """`cfg` with bare-named fields set; a value of None means "not given" and is skipped.

    This is how CLI flags land in a config: `with_values(cfg, n_envs=args.n_envs)`.

    Raises:
        ConfigError: an unknown field name or a value of the wrong type.
    """
    for key, value in fields.items():
        if value is not None:
            cfg = _set(cfg, key, value, f"flag {key}")
    return cfg


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """`text` split on `sep` outside quotes and brackets (so `symbols=["A","B"]` stays whole)."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _parse_value(text: str) -> Any:
    """A TOML value where `text` is one (numbers, true/false, "quoted", [arrays]), else a string.

    `none` and `null` (any case) give None. In a bracketed list, unquoted items
    are strings too: `[AAPL, MSFT]` is `["AAPL", "MSFT"]`.
    """
    text = text.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_parse_value(item) for item in _split_top_level(inner)] if inner else []
    return text


def override_keys(overrides: str | Iterable[str]) -> list[str]:
    """The bare field names that "key=value,..." overrides set, in order (malformed items
    are `apply_overrides`' to refuse)."""
    strings = [overrides] if isinstance(overrides, str) else list(overrides)
    keys = []
    for item in (part.strip() for s in strings for part in _split_top_level(s)):
        key, eq, _ = item.partition("=")
        if eq and key.strip():
            keys.append(key.strip().replace("-", "_").rpartition(".")[2])
    return keys


def apply_overrides(cfg: Config, overrides: str | Iterable[str]) -> Config:
    """`cfg` with "key=value,key=value" applied, left to right.

    Keys are bare field names (`n_envs`) or `section.field` (`ppo.n_envs`); dashes
    may stand for underscores. Values are parsed by `_parse_value`. `overrides`
    may also be a list of such strings (e.g. repeated `--set` flags).

    Raises:
        ConfigError: a malformed item, an unknown key (listing all valid keys), or
            a value of the wrong type.
    """
    strings = [overrides] if isinstance(overrides, str) else list(overrides)
    for item in (part.strip() for s in strings for part in _split_top_level(s)):
        if not item:
            continue
        source = f"override '{item}'"
        key, eq, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"{source}: expected key=value")
        section, dot, name = key.rpartition(".")
        if dot:
            if section not in _SECTIONS:
                raise ConfigError(
                    f"{source}: unknown section '{section}'; valid sections: {', '.join(_SECTIONS)}"
                )
            if name not in _FIELD_TYPES[section]:
                raise _unknown_key(name, section, source)
        cfg = _set(cfg, name, _parse_value(text), source)
    return cfg


# ---------------------------------------------------------------------------
# Machine-dependent settings.


def _platform(platform: str) -> str:
    p = platform.lower()
    if p not in ACCELERATOR_PLATFORMS + CPU_PLATFORMS:
        valid = ", ".join(ACCELERATOR_PLATFORMS + CPU_PLATFORMS)
        raise ConfigError(f"unknown platform '{platform}'; expected one of {valid}")
    return p


# Built-in presets behind the CLI's --high-vram and --low-vram (configs/high-vram.toml and
# configs/low-vram.toml hold the same values, as files to copy and edit). Minibatches are
# whole env sequences, and the activations of their backward pass dominate memory, so the
# presets raise n_minibatches with n_steps to keep a minibatch near 1M env steps.
PRESETS: dict[str, dict[str, Any]] = {
    # GPUs with 50 GB or more (A100 80GB, H100, H200): 65,536 envs x 512 steps, bfloat16.
    "high-vram": {"precision": "bf16", "n_envs": 65536, "n_steps": 512, "n_minibatches": 32},
    # GPUs with about 8 GB: 8,192 envs x 256 steps.
    "low-vram": {"n_envs": 8192, "n_steps": 256, "n_minibatches": 16},
}
# The device-memory budget (GB per device) a preset implies when --max-vram is not given.
PRESET_MAX_VRAM_GB: dict[str, float] = {"low-vram": 8.0}


def preset(cfg: Config, name: str) -> Config:
    """`cfg` with the built-in preset `name` applied (see `PRESETS`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return with_values(cfg, **PRESETS[name])


def default_n_envs(platform: str) -> int:
    """Parallel envs when the config leaves n_envs unset: 65536 on accelerators, 64 on CPU."""
    return 65536 if _platform(platform) in ACCELERATOR_PLATFORMS else 64


CPU_WORLDS = 256  # default training worlds on CPU
MAX_DEFAULT_WORLDS = 4096  # ... and the most on an accelerator
WORLDS_BUDGET_SHARE = 0.05  # ... which may hold this share of the device-memory budget


def default_n_worlds(platform: str, budget_bytes: int, world_bytes: int) -> int:
    """Training worlds when `n_worlds` is unset: `CPU_WORLDS` on CPU; on accelerators as
    many as `WORLDS_BUDGET_SHARE` of the memory budget holds (`world_bytes` each), between
    `CPU_WORLDS` and `MAX_DEFAULT_WORLDS`."""
    if _platform(platform) not in ACCELERATOR_PLATFORMS:
        return CPU_WORLDS
    fit = int(WORLDS_BUDGET_SHARE * budget_bytes // max(world_bytes, 1))
    return max(CPU_WORLDS, min(MAX_DEFAULT_WORLDS, fit))


def compute_dtype(precision: str, platform: str) -> jnp.dtype:
    """The matmul dtype for `precision` on `platform` ('auto': bf16 on accelerators, else fp32)."""
    import jax.numpy as jnp

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {'|'.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        precision = "bf16" if _platform(platform) in ACCELERATOR_PLATFORMS else "fp32"
    return jnp.dtype(jnp.bfloat16 if precision == "bf16" else jnp.float32)


def resolve_market(cfg: Config) -> str:
    """The market a config trains on: its `market`, or when unset procedural worlds for the
    portfolio env without a data path (they are portfolio markets), else the fixed one."""
    if cfg.data.market is not None:
        return cfg.data.market
    return "worlds" if cfg.data.path is None and cfg.env.name == "portfolio" else "fixed"


def default_episode_length(name: str) -> int:
    """Steps per training episode when the config leaves episode_length unset: what env
    `name` declares (`Environment.default_episode_length`: 256 bars for the portfolio env,
    24 hourly steps, one trading day, for funding)."""
    from jaxtrade.envs import env_class

    return env_class(name).default_episode_length


def resolve(cfg: Config, platform: str) -> Config:
    """`cfg` with n_envs filled for `platform`, and the market and the episode length
    chosen for its env when unset (precision stays as given). An explicit value (flag,
    file, override, a saved run's config) is kept; an unregistered env name is left for
    `validate` to name."""
    if cfg.data.market is None:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data,
                                                                market=resolve_market(cfg)))
    if cfg.env.episode_length is None and cfg.env.name in _registered_envs():
        env = dataclasses.replace(cfg.env, episode_length=default_episode_length(cfg.env.name))
        cfg = dataclasses.replace(cfg, env=env)
    if cfg.ppo.n_envs is not None:
        return cfg
    ppo = dataclasses.replace(cfg.ppo, n_envs=default_n_envs(platform))
    return dataclasses.replace(cfg, ppo=ppo)


def default_run_dir(cfg: Config, now: dt.datetime, name: str | None = None) -> str:
    """`ckpt/<UTC YYYYmmdd-HHMMSS>-<name>`; the name defaults to a 6-hex hash of the config."""
    if name:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"
    else:
        text = json.dumps(to_dict(cfg), sort_keys=True)
        name = hashlib.sha1(text.encode()).hexdigest()[:6]
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return os.path.join(RUN_ROOT, f"{stamp}-{name}")


def resolve_run_dir(cfg: Config, now: dt.datetime | None = None, name: str | None = None) -> Config:
    """`cfg` with run_dir filled by `default_run_dir` when unset.

    Host-only: reads the clock when `now` is None (pass `now` to stay pure).
    `name` is e.g. the preset's file stem.
    """
    if cfg.run.run_dir is not None:
        return cfg
    now = now if now is not None else dt.datetime.now(dt.UTC)
    run = dataclasses.replace(cfg.run, run_dir=default_run_dir(cfg, now, name))
    return dataclasses.replace(cfg, run=run)


# ---------------------------------------------------------------------------
# Derived sizes.


def _resolved_n_envs(cfg: Config) -> int:
    if cfg.ppo.n_envs is None:
        raise ConfigError("n_envs is not set; call resolve(cfg, platform) first")
    return cfg.ppo.n_envs


def steps_per_iteration(cfg: Config) -> int:
    """Env steps collected per PPO iteration (all devices): n_envs * n_steps."""
    return _resolved_n_envs(cfg) * cfg.ppo.n_steps


def envs_per_minibatch(cfg: Config, n_devices: int = 1) -> int:
    """Whole envs in one minibatch on one device (validate checks the division is exact)."""
    return _resolved_n_envs(cfg) // (n_devices * cfg.ppo.n_minibatches)


def total_iterations(cfg: Config) -> int:
    """PPO iterations of the run, at least 1.

    From the first duration given, in priority order: timesteps, episodes (each
    episode_length steps), iterations; none given means DEFAULT_TIMESTEPS steps.
    Step counts round up to whole iterations of `steps_per_iteration`.
    """
    run = cfg.run
    if run.timesteps is not None:
        steps = run.timesteps
    elif run.episodes is not None:
        steps = run.episodes * cfg.env.steps_per_episode()
    elif run.iterations is not None:
        _resolved_n_envs(cfg)  # same precondition whichever duration is given
        return max(1, run.iterations)
    else:
        steps = DEFAULT_TIMESTEPS
    return max(1, math.ceil(steps / steps_per_iteration(cfg)))


# ---------------------------------------------------------------------------
# Validation.


def _multiples_around(n: int, m: int) -> list[int]:
    """The positive multiples of `m` nearest below and above `n`."""
    below = n // m * m
    return [v for v in (below, below + m) if v > 0]


def table_problems(item: Any, where: str) -> list[str]:
    """What breaks the rules of a table built by `build_table` (fields declared with
    `setting` carry rules; plain fields have none), sub-tables and arrays included, each
    as "<where> <key>=<value> must be <rule>"."""
    problems = []
    for f in dataclasses.fields(item):
        value = getattr(item, f.name)
        if dataclasses.is_dataclass(value):
            problems += table_problems(value, f"{where} {f.name}")
            continue
        if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
            for i, sub in enumerate(value):
                problems += table_problems(sub, f"{where} {f.name} #{i + 1}")
            continue
        meta = f.metadata.get(_META)
        rule = meta.rule if meta is not None else None
        if rule is not None and value is not None and not rule.holds(value):
            problems.append(f"{where} {f.name}={value!r} must be {rule}")
    return problems


def batch_problem(cfg: Config, n_devices: int) -> str | None:
    """Why n_envs cannot be split into `n_devices` x n_minibatches equal parts, or None when
    it can (or is unset): one item of `validate`'s message, which suggests valid values."""
    p = cfg.ppo
    if n_devices < 1:
        return f"n_devices={n_devices!r} must be >= 1"
    if p.n_envs is None or p.n_envs < 1 or p.n_minibatches < 1:
        return None
    m = n_devices * p.n_minibatches
    if not p.n_envs % m:
        return None
    unit_name = f"n_minibatches={p.n_minibatches}"
    if n_devices > 1:
        unit_name += f" x {n_devices} devices = {m}"
    tries = " or ".join(map(str, _multiples_around(p.n_envs, m)))
    return f"n_envs={p.n_envs} must be a multiple of {unit_name} (try {tries})"


def validate(cfg: Config, n_devices: int = 1) -> Config:
    """Checks settings that can never run; returns `cfg` unchanged.

    An unset n_envs (before `resolve`) skips the checks that need it.

    Raises:
        ConfigError: one line listing every problem, e.g.
            "invalid config: n_envs=100 must be a multiple of n_minibatches=8 (try 96 or 104)".
    """
    d = cfg.data
    # Configs built in code skip from_dict's type checks; the range checks need them.
    for section, field_types in _FIELD_TYPES.items():
        for key, tp in field_types.items():
            value = getattr(section_of(cfg, section), key)
            where = f"invalid config: [{section}] {key}"
            coerced = _coerce(value, tp, where)
            if type(coerced) is not type(value) and not isinstance(coerced, float):
                raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if cfg.run.schedule is not None:  # a file that cannot be followed: its own one line
        from jaxtrade.schedule import ScheduleError, load

        try:
            followed = load(cfg.run.schedule)
            if cfg.ppo.n_envs is not None:  # its ends in this run's timesteps increase
                followed.ends(cfg.run.schedule_scale, total_iterations(cfg) * cfg.ppo.n_envs
                              * cfg.ppo.n_steps)
        except ScheduleError as e:
            raise ConfigError(f"invalid config: schedule {e}") from None
    problems: list[str] = []
    # Each field's own rule (`setting(rule=...)`), in declaration order.
    for section, field_types in _FIELD_TYPES.items():
        for key, tp in field_types.items():
            value = getattr(section_of(cfg, section), key)
            if (rule := broken_rule(key, value)) is not None:
                problems.append(f"{key}={value!r} must be {rule}")
            if _array_item(tp) is not None and value:
                for i, item in enumerate(value):
                    problems += table_problems(item, f"{key} #{i + 1}")

    def check(ok: bool, key: str, value: Any, rule: str) -> None:
        if not ok:
            problems.append(f"{key}={value!r} must be {rule}")

    # Rules across fields, and of the items of a list.
    check(d.val_fraction + d.test_fraction < 1, "val_fraction + test_fraction",
          d.val_fraction + d.test_fraction, "< 1 (the rest is the training range)")
    if d.symbols is not None:
        check(len(d.symbols) > 0, "symbols", d.symbols, "non-empty (or none for all)")
        dupes = sorted({s for s in d.symbols if d.symbols.count(s) > 1})
        check(not dupes, "symbols", d.symbols, f"unique (repeated: {', '.join(dupes)})")
    if d.market == "worlds":
        check(d.path is None, "market", d.market, "fixed with --data (worlds are generated)")
        check(cfg.env.name == "portfolio", "market", d.market,
              f"fixed for the {cfg.env.name} env (worlds are portfolio markets)")
        check(cfg.env.portfolio.bootstrap_block == 0, "bootstrap_block",
              cfg.env.portfolio.bootstrap_block,
              "0 with --market worlds (fresh worlds need no resampling)")
        check(cfg.env.portfolio.augment == "none", "augment", cfg.env.portfolio.augment,
              "none with --market worlds (their assets are exchangeable draws already)")
        w = d.worlds
        usable = w.world_bars - WORLD_WARMUP - 2  # steps of a world's longest episode
        if cfg.env.episode_length is not None:  # unset: the env's own, after `resolve`
            check(cfg.env.episode_length <= usable, "episode_length", cfg.env.episode_length,
                  f"<= {usable} with world_bars={w.world_bars} (a world holds its episodes)")
    problems += cfg.network.problems()
    if (batch := batch_problem(cfg, n_devices)) is not None:
        problems.append(batch)

    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return cfg

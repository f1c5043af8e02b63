"""Run configuration: frozen dataclasses, TOML presets and "key=value" overrides.

A `Config` is built once (defaults <- TOML file <- overrides <- CLI flags) and never
changed afterwards; every step returns a new instance. Sizes that depend on the
machine (`n_envs`) or the clock (`run_dir`) stay None in the file and are filled
by `resolve` / `resolve_run_dir`, also returning new instances. Derived sizes
(`total_iterations`, `steps_per_iteration`) are pure functions of a config.

TOML layout: one table per section, keys are the field names::

    [ppo]
    n_envs = 8192
    n_steps = 256

    [network]
    precision = "bf16"

Every bare field name is unique across sections, so overrides may name a field
as `n_envs=8192` or `ppo.n_envs=8192`.

Host-only: nothing here runs under `jit`. JAX is imported only by `compute_dtype` and
`validate` (which asks the env registry and the network kinds), and the data package
only by `DataConfig.synthetic`, so loading a config is cheap.
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
DEFAULT_TIMESTEPS = 2_000_000  # run length when none of timesteps/episodes/iterations is given
RUN_ROOT = "ckpt"  # parent of the default run directories


class ConfigError(ValueError):
    """A config file, override or setting that cannot be used; the message is one line."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the bars come from and how they are split (see `jaxtrade.data.load_market`)."""

    path: str | None = None  # CSV/Parquet file or directory; None = embedded synthetic market
    symbols: tuple[str, ...] | None = None  # assets to keep, in this order; None = all
    start: str | None = None  # first date to keep (inclusive); None = from the first bar
    end: str | None = None  # last date to keep (inclusive); None = to the last bar
    max_fill: int = 5  # longest gap (bars) forward-filled per asset before it is an error
    val_fraction: float = 0.2  # share of bars in the validation range (chooses checkpoints)
    test_fraction: float = 0.2  # share of bars in the test range, last (only evaluate reads it)
    split_dates: tuple[str, ...] | None = None  # (first validation, first test) date; overrides
    # the two fractions
    n_assets: int = 12  # synthetic market: stocks (cash is added by the env)
    n_bars: int = 2520  # synthetic market: bars to generate (about 10 years of days)
    synthetic_seed: int = 0  # synthetic market: same seed, same market
    signal_strength: float = 1.0  # synthetic market: scale of the tradable signal; 0 = none

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
class EnvConfig:
    """Which env, and its episode and friction settings (see `PortfolioEnv.make_params`)."""

    name: str = "portfolio"  # registered env (`jaxtrade.envs.registered()`), --env
    episode_length: int = 256  # steps per training episode
    slippage: float = 0.0005  # proportional cost per unit traded, in [0, 0.1)
    spread: float = 0.0002  # half the bid-ask spread paid per unit traded, in [0, 0.1)
    impact: float = 0.01  # square-root market-impact coefficient, in [0, 1)
    turnover_penalty: float = 0.0  # reward penalty per unit of turnover, >= 0
    drawdown_penalty: float = 0.0  # reward penalty per unit of drawdown, >= 0
    ruin_fraction: float = 0.5  # episode ends when equity falls below this share of the start

    def params_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the env's `make_params` (all but `name`, `split`, `start`)."""
        kwargs = dataclasses.asdict(self)
        del kwargs["name"]
        return kwargs


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Actor-critic kind, shape and compute precision (see `jaxtrade.networks`)."""

    kind: str = "gru"  # network (`jaxtrade.networks.KINDS`): gru or mlp, --network
    hidden_dim: int = 256  # encoder and GRU width; the heads use hidden_dim // 2
    n_gru_layers: int = 2  # stacked GRU layers (gru only)
    dropout: float = 0.0  # dropout after the encoder and between GRU layers, in [0, 1)
    precision: str = "auto"  # matmul dtype: auto (bf16 on accelerators, fp32 on CPU), fp32, bf16

    def compute_dtype(self, platform: str) -> jnp.dtype:
        """The matmul dtype on `platform`; see the module function `compute_dtype`."""
        return compute_dtype(self.precision, platform)


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Rollout sizes and PPO hyperparameters (initial values; schedules may change them)."""

    n_envs: int | None = None  # parallel envs over all devices; None = default_n_envs(platform)
    n_steps: int = 128  # rollout length per env per iteration
    n_minibatches: int = 4  # minibatches per epoch; each takes n_envs / n_minibatches whole envs
    ppo_epochs: int = 4  # actor-critic epochs over each rollout
    critic_epochs: int = 4  # extra critic-only epochs on cached trunk features; 0 = none
    actor_lr: float = 3e-4  # Adam learning rate of encoder + GRU + policy head
    critic_lr: float = 9e-4  # Adam learning rate of the value head
    gamma: float = 0.99  # discount factor, in [0, 1]
    gae_lambda: float = 0.95  # GAE bias-variance trade-off, in [0, 1]
    clip: float = 0.2  # PPO ratio clip range, > 0
    ent_coef: float = 0.01  # entropy bonus weight, >= 0
    vf_coef: float = 0.5  # value loss weight in the actor-critic loss, >= 0
    max_grad_norm: float = 0.5  # global-norm gradient clip of each optimizer chain, > 0
    clip_value: bool = False  # clip the value update to +-clip around the rollout's values


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Duration, seed, output and logging of a run."""

    timesteps: int | None = None  # env steps to train for (first of the three durations given)
    episodes: int | None = None  # or: episodes of episode_length steps
    iterations: int | None = None  # or: PPO iterations; none given = DEFAULT_TIMESTEPS steps
    seed: int = 0  # same config + seed + device count = same result
    run_dir: str | None = None  # output directory; None = ckpt/<UTC time>-<name> (resolve_run_dir)
    iterations_per_call: int = 1  # iterations fused into one compiled host call
    log_every: int = 1  # iterations between log lines
    verbosity: int = 1  # 0 quiet, 1 default, 2 verbose
    save_every: int = 10  # iterations between checkpoints (at a call boundary); 0 = final only
    keep_checkpoints: int = 3  # most recent checkpoints kept, besides the best and the final one
    eval_every: int = 10  # iterations between validation walks (at a call boundary); 0 = off
    early_stop: int = 0  # stop after this many validation walks without a new best; 0 = off


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

_SECTIONS: dict[str, type] = typing.get_type_hints(Config)  # section -> dataclass
_FIELD_TYPES: dict[str, dict[str, Any]] = {
    name: typing.get_type_hints(cls) for name, cls in _SECTIONS.items()
}


def _field_sections() -> dict[str, str]:
    """Bare field name -> section; bare names must be unique for overrides to work."""
    owner: dict[str, str] = {}
    for section, types_ in _FIELD_TYPES.items():
        for name in types_:
            if name in owner:
                raise RuntimeError(f"field {name!r} is in both [{owner[name]}] and [{section}]")
            owner[name] = section
    return owner


_FIELD_SECTION = _field_sections()


def field_names() -> list[str]:
    """All valid bare keys, section by section in declaration order."""
    return list(_FIELD_SECTION)


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
    never taken for numbers, nor numbers for bools.

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


def from_dict(
    d: Mapping[str, Any],
    base: Config = Config(),
    *,
    source: str | os.PathLike | None = None,
) -> Config:
    """`base` with the values of `d` (sections data, env, network, ppo, run) applied.

    Missing sections and keys keep `base`'s values. Accepts `load_toml`'s and
    `to_dict`'s output, so `from_dict(to_dict(cfg)) == cfg`.

    Args:
        d: {section: {key: value}}.
        base: the config the values are applied to.
        source: the file `d` came from, named in error messages.

    Raises:
        ConfigError: an unknown section or key, or a value of the wrong type.
    """
    pre = _prefix(source)
    updates: dict[str, Any] = {}
    for section, table in d.items():
        if section not in _SECTIONS:
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
        field_types = _FIELD_TYPES[section]
        values = {}
        for key, value in table.items():
            if key not in field_types:
                raise _unknown_key(key, section, source)
            values[key] = _coerce(value, field_types[key], f"{pre}[{section}] {key}")
        updates[section] = dataclasses.replace(getattr(base, section), **values)
    return dataclasses.replace(base, **updates)


def load(path: str | os.PathLike, base: Config = Config()) -> Config:
    """`from_dict(load_toml(path), base)`, with `path` named in error messages."""
    return from_dict(load_toml(path), base, source=path)


def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """{section: {key: value}} with only JSON types (tuples become lists); for `config.json`."""
    return {
        section: {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(getattr(cfg, section)).items()
        }
        for section in _SECTIONS
    }


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
    return from_dict({_FIELD_SECTION[key]: {key: value}}, cfg, source=source)


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


def compute_dtype(precision: str, platform: str) -> jnp.dtype:
    """The matmul dtype for `precision` on `platform` ('auto': bf16 on accelerators, else fp32)."""
    import jax.numpy as jnp

    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {'|'.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        precision = "bf16" if _platform(platform) in ACCELERATOR_PLATFORMS else "fp32"
    return jnp.dtype(jnp.bfloat16 if precision == "bf16" else jnp.float32)


def resolve(cfg: Config, platform: str) -> Config:
    """`cfg` with n_envs filled for `platform` when unset (precision stays as given)."""
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
        steps = run.episodes * cfg.env.episode_length
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


def validate(cfg: Config, n_devices: int = 1) -> Config:
    """Checks settings that can never run; returns `cfg` unchanged.

    An unset n_envs (before `resolve`) skips the checks that need it.

    Raises:
        ConfigError: one line listing every problem, e.g.
            "invalid config: n_envs=100 must be a multiple of n_minibatches=8 (try 96 or 104)".
    """
    d, e, n, p, r = cfg.data, cfg.env, cfg.network, cfg.ppo, cfg.run
    # Configs built in code skip from_dict's type checks; the range checks need them.
    for section, field_types in _FIELD_TYPES.items():
        for key, tp in field_types.items():
            value = getattr(getattr(cfg, section), key)
            where = f"invalid config: [{section}] {key}"
            coerced = _coerce(value, tp, where)
            if type(coerced) is not type(value) and not isinstance(coerced, float):
                raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    problems: list[str] = []

    def check(ok: bool, key: str, value: Any, rule: str) -> None:
        if not ok:
            problems.append(f"{key}={value!r} must be {rule}")

    def at_least(key: str, value: int | float | None, low: int, optional: bool = False) -> None:
        if not (optional and value is None):
            check(value is not None and value >= low, key, value, f">= {low}")

    def unit(key: str, value: float, closed: bool, top: float = 1.0) -> None:
        ok = 0.0 <= value <= top if closed else 0.0 <= value < top
        check(ok, key, value, f"in [0, {top:g}{']' if closed else ')'}")

    at_least("max_fill", d.max_fill, 0)
    unit("val_fraction", d.val_fraction, closed=False)
    unit("test_fraction", d.test_fraction, closed=False)
    check(d.val_fraction + d.test_fraction < 1, "val_fraction + test_fraction",
          d.val_fraction + d.test_fraction, "< 1 (the rest is the training range)")
    if d.split_dates is not None:
        check(len(d.split_dates) == 2, "split_dates", d.split_dates,
              "two dates: the first validation and the first test date")
    at_least("n_assets", d.n_assets, 1)
    at_least("n_bars", d.n_bars, 2)
    at_least("synthetic_seed", d.synthetic_seed, 0)
    at_least("signal_strength", d.signal_strength, 0)
    if d.symbols is not None:
        check(len(d.symbols) > 0, "symbols", d.symbols, "non-empty (or none for all)")
        dupes = sorted({s for s in d.symbols if d.symbols.count(s) > 1})
        check(not dupes, "symbols", d.symbols, f"unique (repeated: {', '.join(dupes)})")

    from jaxtrade.envs import registered
    from jaxtrade.networks import KINDS

    check(e.name in registered(), "name", e.name, f"a registered env: {'|'.join(registered())}")
    at_least("episode_length", e.episode_length, 1)
    unit("slippage", e.slippage, closed=False, top=0.1)
    unit("spread", e.spread, closed=False, top=0.1)
    unit("impact", e.impact, closed=False)
    at_least("turnover_penalty", e.turnover_penalty, 0)
    at_least("drawdown_penalty", e.drawdown_penalty, 0)
    unit("ruin_fraction", e.ruin_fraction, closed=False)

    check(n.kind in KINDS, "kind", n.kind, f"one of {'|'.join(KINDS)}")
    at_least("hidden_dim", n.hidden_dim, 2)  # the heads are hidden_dim // 2 wide
    at_least("n_gru_layers", n.n_gru_layers, 1)
    unit("dropout", n.dropout, closed=False)
    check(n.precision in PRECISIONS, "precision", n.precision, f"one of {'|'.join(PRECISIONS)}")

    at_least("n_steps", p.n_steps, 1)
    at_least("n_minibatches", p.n_minibatches, 1)
    at_least("ppo_epochs", p.ppo_epochs, 1)
    at_least("critic_epochs", p.critic_epochs, 0)
    check(p.actor_lr > 0, "actor_lr", p.actor_lr, "> 0")
    check(p.critic_lr > 0, "critic_lr", p.critic_lr, "> 0")
    unit("gamma", p.gamma, closed=True)
    unit("gae_lambda", p.gae_lambda, closed=True)
    check(p.clip > 0, "clip", p.clip, "> 0")
    at_least("ent_coef", p.ent_coef, 0)
    at_least("vf_coef", p.vf_coef, 0)
    check(p.max_grad_norm > 0, "max_grad_norm", p.max_grad_norm, "> 0")
    if n_devices < 1:
        problems.append(f"n_devices={n_devices!r} must be >= 1")
    elif p.n_envs is not None:
        at_least("n_envs", p.n_envs, 1)
        m = n_devices * p.n_minibatches
        if p.n_envs >= 1 and p.n_minibatches >= 1 and p.n_envs % m:
            unit_name = f"n_minibatches={p.n_minibatches}"
            if n_devices > 1:
                unit_name += f" x {n_devices} devices = {m}"
            tries = " or ".join(map(str, _multiples_around(p.n_envs, m)))
            problems.append(f"n_envs={p.n_envs} must be a multiple of {unit_name} (try {tries})")

    at_least("timesteps", r.timesteps, 1, optional=True)
    at_least("episodes", r.episodes, 1, optional=True)
    at_least("iterations", r.iterations, 1, optional=True)
    at_least("seed", r.seed, 0)
    at_least("iterations_per_call", r.iterations_per_call, 1)
    at_least("log_every", r.log_every, 1)
    check(r.verbosity in (0, 1, 2), "verbosity", r.verbosity, "0, 1 or 2")
    at_least("save_every", r.save_every, 0)
    at_least("keep_checkpoints", r.keep_checkpoints, 1)
    at_least("eval_every", r.eval_every, 0)
    at_least("early_stop", r.early_stop, 0)
    check(r.run_dir != "", "run_dir", r.run_dir, "a path or none")

    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return cfg

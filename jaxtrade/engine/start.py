"""Before anything is placed on a device: where a run starts (new, resumed, another run's
checkpoint), its market and env, the n_envs that fits memory, and the evaluation cadence.
Host-only; every refusal is a one-line `UsageError` or `ConfigError`."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxtrade import config as cfgmod
from jaxtrade import parallel
from jaxtrade.errors import UsageError


@dataclasses.dataclass(frozen=True)
class StartRequest:
    """What the user asked for, before any checkpoint is read (the CLI builds it)."""

    resume: bool  # continue `run_dir` in place
    run_dir: str | None
    checkpoint: str | None  # start a new run from another run's checkpoint
    weights_only: bool  # ... taking its weights only
    name: str | None  # preset or config-file name, for the default run directory
    new_config: Callable[[], cfgmod.Config]  # the config of a new run
    from_saved: Callable[[cfgmod.Config, bool], cfgmod.Config]  # (saved config,
    # keep_run_dir) -> the config of a run started from a checkpoint
    flag_of: dict[str, str] = dataclasses.field(default_factory=dict)  # field -> its flag


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a run starts: from scratch, resumed in place, or from another run's checkpoint."""

    cfg: cfgmod.Config  # resolved and validated
    mode: str  # new | resume | checkpoint (whole state) | weights (params only)
    source: Any = None  # the checkpoint.Source started from; None for a new run
    changes: tuple = ()  # checkpoint.Change: settings changed from the checkpoint's
    n_envs_given: bool = False  # n_envs was asked for (flag, file, preset), not defaulted


def plan_start(request: StartRequest, platform: str, n_devices: int = 1) -> Start:
    """The config and starting point `request` asks for on `n_devices` devices; refuses what
    cannot work."""
    from jaxtrade import checkpoint as ckpt

    if request.resume:
        source = ckpt.latest(request.run_dir)
        saved = source.config
        # config.json holds the settings of the last (re)start, which a later resume keeps
        # even when no checkpoint was saved after it.
        base = read_config_json(Path(request.run_dir) / "config.json") or saved
        cfg = request.from_saved(base, True)
        mode = "resume"
    elif request.checkpoint:
        source = ckpt.locate(request.checkpoint)
        saved = source.config
        cfg = request.from_saved(saved, False)
        mode = "weights" if request.weights_only else "checkpoint"
    else:
        cfg = request.new_config()
        return Start(finish_config(cfg, platform, request.name, n_devices), "new",
                     n_envs_given=cfg.ppo.n_envs is not None)
    cfg = finish_config(cfg, platform, n_devices=n_devices)
    changes = ()
    if mode != "weights":
        what = "--resume" if mode == "resume" else "--checkpoint without --weights-only"
        changes = tuple(ckpt.resume_changes(saved, cfg, request.flag_of, what=what))
        total = cfgmod.total_iterations(cfg)
        if source.step >= total:
            raise UsageError(
                f"{source.path} is at iteration {source.step} and this run asks for {total}; "
                f"train longer with a larger duration, e.g. --iterations {source.step + total}"
            )
    if mode != "resume" and Path(cfg.run.run_dir).resolve() == source.run_dir.resolve():
        raise UsageError(f"--checkpoint starts a new run: choose a --run-dir other than "
                         f"{source.run_dir} (or continue that run with --resume)")
    return Start(cfg, mode, source, changes, n_envs_given=True)


def read_config_json(path: Path) -> cfgmod.Config | None:
    """The config a run directory's config.json holds, or None when there is none."""
    if not path.exists():
        return None
    try:
        return cfgmod.from_saved(json.loads(path.read_text()), source=path)
    except json.JSONDecodeError as e:
        raise cfgmod.ConfigError(f"{path}: invalid JSON: {e}") from None


def finish_config(
    cfg: cfgmod.Config, platform: str, name: str | None = None, n_devices: int = 1
) -> cfgmod.Config:
    """Fills machine- and clock-dependent settings; the run dir is named after the preset."""
    cfg = cfgmod.resolve_run_dir(cfgmod.resolve(cfg, platform), name=name)
    return cfgmod.validate(cfg, n_devices=n_devices)


def load_run_market(cfg: cfgmod.Config, test: bool = False):
    """The run's market without its test range: the test bars are `python -m
    jaxtrade.evaluate`'s alone, never on a training device (`test`: evaluate's, with them)."""
    from jaxtrade.data import load_market
    from jaxtrade.envs import env_class

    d = cfg.data
    if (own := getattr(env_class(cfg.env.name), "load_market", None)) is not None:
        return own(cfg, test=test)  # an env with data of its own (e.g. funding)
    if d.market == "worlds":
        import dataclasses as dc

        worlds = run_worlds(cfg)
        market, _ = worlds.pool("train")
        validation, _ = worlds.pool("validation", stats=market.stats)
        return dc.replace(market, worlds=worlds, validation_pool=validation)
    market = load_market(
        d.path, symbols=d.symbols, start=d.start, end=d.end, max_fill=d.max_fill,
        synthetic=d.synthetic(), episode_length=cfg.env.episode_length,
        val_fraction=d.val_fraction, test_fraction=d.test_fraction, split_dates=d.split_dates,
    )
    return market if test else market.without_test()


def run_worlds(cfg: cfgmod.Config):
    """The `jaxtrade.worlds.RunWorlds` of a `--market worlds` run (n_worlds resolved)."""
    from jaxtrade.worlds import RunWorlds

    w = cfg.data.worlds
    if w.n_worlds is None:
        raise cfgmod.ConfigError("n_worlds is not set; call resolve_worlds first")
    return RunWorlds(seed=w.world_seed, n_worlds=w.n_worlds, n_bars=w.world_bars,
                     val_worlds=w.val_worlds, test_worlds=w.test_worlds,
                     refresh_every=w.refresh_every)


def resolve_worlds(cfg: cfgmod.Config, platform: str, max_vram_gb: float | None):
    """`cfg` with n_worlds sized (`config.default_n_worlds`) when a worlds run leaves it
    unset."""
    from jaxtrade import memory

    w = cfg.data.worlds
    if cfg.data.market != "worlds" or w.n_worlds is not None:
        return cfg
    budget = 0
    if platform not in cfgmod.CPU_PLATFORMS:
        budget, _ = memory.device_budget(max_vram_gb)
    one = run_worlds(cfgmod.with_values(cfg, n_worlds=1)).world_bytes()
    return cfgmod.with_values(cfg, n_worlds=cfgmod.default_n_worlds(platform, budget, one))


def check_new_run_dir(run_dir: Path) -> None:
    """Refuses a directory that already holds a run (the run creates it later)."""
    from jaxtrade.checkpoint import CHECKPOINT_DIR

    held = [n for n in ("metrics.jsonl", CHECKPOINT_DIR) if (run_dir / n).exists()]
    if held:
        raise UsageError(
            f"{run_dir} already holds a run ({', '.join(held)}); choose another --run-dir, "
            f"or continue it with --resume"
        )


def eval_interval(cfg: cfgmod.Config, env, given: bool) -> int:
    """Iterations between validation walks: `run.eval_every`, or 0 when the env has nothing
    to validate on in this run (`Environment.validation_unavailable`, e.g. a market without a
    validation range) and eval_every is the default (an eval_every set by the user, or early
    stopping, is then an error)."""
    every = cfg.run.eval_every
    asked = given or every != cfgmod.RunConfig.eval_every  # not the default: refuse, not skip
    if every and (reason := env.validation_unavailable()) is not None:
        if asked:
            raise UsageError(
                f"--eval-every {every} walks the validation range, but {reason} "
                f"(val_fraction={cfg.data.val_fraction:g}, split_dates={cfg.data.split_dates}); "
                f"give it one with --val-fraction or --split-dates, or pass --eval-every 0")
        every = 0
    if cfg.run.early_stop and not every:
        raise UsageError(f"--early-stop {cfg.run.early_stop} counts validation walks, but this "
                         f"run makes none; set --eval-every and keep a validation range")
    return every


@dataclasses.dataclass(frozen=True)
class Sizing:
    """How n_envs was fitted to the device-memory budget (host-only)."""

    cfg: cfgmod.Config  # with the n_envs the run uses
    estimate: Any  # memory.MemoryEstimate of that n_envs
    budget: int  # bytes per device
    budget_source: str  # how the budget was chosen, e.g. "90% of 79.2 GiB device memory"
    warning: str | None = None  # n_envs was capped, or cannot be and does not fit
    note: str | None = None  # the default n_envs was lowered to fit


def size_n_envs(
    cfg: cfgmod.Config, env, n_devices: int, max_vram_gb: float | None, *, given: bool,
    fixed: bool, share: int = 1,
) -> Sizing:
    """The largest n_envs up to `cfg`'s that fits the memory budget, per `jaxtrade.memory`.

    `given`: the user asked for this n_envs (it is capped with a warning, not silently);
    `fixed`: it cannot change (a resumed state holds that many envs), so a run that does
    not fit only gets a warning. `share`: runs sharing each device (a population's
    members per device), each sized to 1/share of the budget.

    Raises:
        UsageError: not even the smallest valid n_envs fits.
    """
    from jaxtrade import memory

    budget, source = memory.device_budget(max_vram_gb)
    budget = parallel.min_over_processes(budget)  # hosts may differ; all must agree
    if share > 1:
        budget //= share
        source = f"{source}, a 1/{share} share: {share} members per device"
    est = memory.estimate(cfg, env, n_devices)
    fmt = memory.format_bytes
    n = cfg.ppo.n_envs
    if est.per_device_bytes <= budget:
        return Sizing(cfg, est, budget, source)
    over = (f"n_envs={n:,} needs an estimated {fmt(est.per_device_bytes)} per device, over "
            f"the {fmt(budget)} budget ({source})")
    if fixed:
        return Sizing(cfg, est, budget, source,
                      warning=f"{over}; the checkpoint fixes n_envs, so the run goes on and "
                              f"may run out of memory")
    fit = memory.max_n_envs(cfg, env, budget, n_devices)
    if fit == 0:
        smallest = n_devices * cfg.ppo.n_minibatches
        need = memory.estimate(cfgmod.with_values(cfg, n_envs=smallest), env, n_devices)
        raise UsageError(
            f"not even n_envs={smallest} fits: it needs an estimated "
            f"{fmt(need.per_device_bytes)} per device, over the {fmt(budget)} budget "
            f"({source}); raise --max-vram, or lower --n-steps or --hidden-dim"
        )
    capped = cfgmod.with_values(cfg, n_envs=fit)
    est_fit = memory.estimate(capped, env, n_devices)
    fitted = f"{fit:,} envs (estimated {fmt(est_fit.per_device_bytes)} per device)"
    if given:
        return Sizing(capped, est_fit, budget, source,
                      warning=f"{over}; capped to {fitted}. More --n-minibatches or a larger "
                              f"--max-vram keep more envs")
    return Sizing(capped, est_fit, budget, source,
                  note=f"default n_envs={n:,} lowered to {fitted} to fit the budget")

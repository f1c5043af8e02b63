"""`python -m jaxtrade.train`: parse flags, build the trainer, run it, log (host-only).

No training logic lives here: see `jaxtrade.trainer` for the program and
`jaxtrade.config` for every setting.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxtrade import __version__, parallel
from jaxtrade import config as cfgmod
from jaxtrade.data import DataError, load_market
from jaxtrade.data.market import MARKET_FILE, market_record
from jaxtrade.data.panel import format_date
from jaxtrade.watchdog import Watchdog, enable_stack_dumps, format_seconds

# Per-iteration metrics that must stay finite; the first that is not stops the run.
FINITE_KEYS = (
    "policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "explained_variance",
    "actor_grad_norm", "critic_grad_norm", "episode_return_mean",
)
# CLI flag -> config field, for flags whose value goes straight into the config.
FLAG_FIELDS = (
    "path", "symbols", "start", "end", "max_fill", "val_fraction", "test_fraction", "split_dates",
    "signal_strength", "name", "episode_length", "n_envs", "n_steps", "n_minibatches",
    "timesteps", "episodes", "iterations", "kind", "hidden_dim", "n_gru_layers", "dropout",
    "precision", "actor_lr",
    "critic_lr", "ppo_epochs", "critic_epochs", "gamma", "gae_lambda", "clip", "ent_coef",
    "vf_coef", "max_grad_norm", "seed", "run_dir", "iterations_per_call", "log_every",
    "save_every", "keep_checkpoints", "eval_every", "early_stop",
)
# Config key -> the flag that sets it, to name it in messages.
FLAG_OF = {**{k: "--" + k.replace("_", "-") for k in FLAG_FIELDS}, "path": "--data",
           "name": "--env", "kind": "--network"}
DURATION_FIELDS = ("timesteps", "episodes", "iterations")


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxtrade.train",
        description="Train a PPO trading agent end to end on the accelerator.",
        argument_default=None,
        allow_abbrev=False,  # `--n-env 8` must not silently mean --n-envs 8
    )
    add = p.add_argument
    add("--config", metavar="FILE.toml", help="TOML config (see configs/); flags override it")
    g = p.add_argument_group("data")
    g.add_argument("--data", dest="path", metavar="PATH",
                   help="CSV/Parquet file or directory of per-symbol CSVs "
                        "(default: the embedded synthetic market)")
    g.add_argument("--symbols", help="comma-separated subset of symbols")
    g.add_argument("--start", help="first date to load (inclusive)")
    g.add_argument("--end", help="last date to load (inclusive)")
    g.add_argument("--val-fraction", type=float,
                   help="share of bars in the validation range, which chooses checkpoints "
                        "and stops early [0.2]")
    g.add_argument("--test-fraction", type=float,
                   help="share of bars in the test range, last; training never reads it, only "
                        "python -m jaxtrade.evaluate does [0.2]")
    g.add_argument("--split-dates", metavar="VAL_DATE,TEST_DATE",
                   help="first validation date and first test date (override the fractions)")
    for old in ("--eval-fraction", "--split-date"):  # older flags: refused, naming the new ones
        g.add_argument(old, dest=old[2:].replace("-", "_"), help=argparse.SUPPRESS)
    g.add_argument("--max-fill", type=int, help="max consecutive missing bars to forward-fill [5]")
    g.add_argument("--signal-strength", type=float,
                   help="synthetic market: strength of the tradable signal [1.0]")
    g.add_argument("--env", dest="name", metavar="NAME",
                   help="registered environment (jaxtrade.envs.registered()) [portfolio]")
    g.add_argument("--episode-length", type=int, help="steps per training episode [256]")
    g = p.add_argument_group("rollout and duration (--timesteps > --episodes > --iterations)")
    g.add_argument("--n-envs", type=int,
                   help="parallel envs over all devices [64 on CPU, 65536 on GPU; fewer when "
                        "the memory estimate exceeds --max-vram]")
    g.add_argument("--n-steps", type=int, help="rollout steps per iteration [128]")
    g.add_argument("--n-minibatches", type=int, help="minibatches per epoch (split envs) [4]")
    g.add_argument("--timesteps", type=int, help="train for this many env steps")
    g.add_argument("--episodes", type=int, help="train for this many x episode length steps")
    g.add_argument("--iterations", type=int, help="train for this many x n_envs x n_steps steps")
    g = p.add_argument_group("network")
    g.add_argument("--network", dest="kind", metavar="KIND",
                   help="network: gru (recurrent) or mlp (feed-forward) [gru]")
    g.add_argument("--hidden-dim", type=int, help="encoder/GRU width [256]")
    g.add_argument("--n-gru-layers", type=int, help="stacked GRU layers [2]")
    g.add_argument("--dropout", type=float, help="dropout rate [0.0]")
    g.add_argument("--precision", choices=cfgmod.PRECISIONS,
                   help="matmul precision: auto = bf16 on GPU, fp32 on CPU [auto]")
    g = p.add_argument_group("PPO")
    g.add_argument("--actor-lr", type=float, help="actor chain learning rate [3e-4]")
    g.add_argument("--critic-lr", type=float, help="critic chain learning rate [9e-4]")
    g.add_argument("--ppo-epochs", type=int, help="joint actor-critic epochs [4]")
    g.add_argument("--critic-epochs", type=int, help="extra critic-only epochs [4]")
    g.add_argument("--gamma", type=float, help="discount [0.99]")
    g.add_argument("--gae-lambda", type=float, help="GAE lambda [0.95]")
    g.add_argument("--clip", type=float, help="PPO clip range [0.2]")
    g.add_argument("--ent-coef", type=float, help="entropy bonus coefficient [0.01]")
    g.add_argument("--vf-coef", type=float, help="value loss coefficient [0.5]")
    g.add_argument("--max-grad-norm", type=float, help="per-chain global-norm clip [0.5]")
    g.add_argument("--hyperparams", metavar="K=V,K=V",
                   help="any config keys, e.g. 'ent_coef=0.02,n_steps=256' (applied last)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, help="random seed [0]")
    g.add_argument("--run-dir", help="run directory [ckpt/<UTC time>-<preset name or config hash>]")
    g.add_argument("--iterations-per-call", type=int,
                   help="iterations fused into one compiled call between host checks [1]")
    g.add_argument("--log-every", type=int, help="iterations between log lines [1]")
    v = g.add_mutually_exclusive_group()
    v.add_argument("-v", "--verbose", action="store_true",
                   help="also advantage stats, gradient norms, action histogram")
    v.add_argument("-q", "--quiet", action="store_true", help="final summary only")
    g = p.add_argument_group(
        "devices and hosts (envs are split over devices; n_envs is the total)")
    g.add_argument("--devices", type=int, metavar="N",
                   help="use N devices (taken evenly from every process) [all]")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="multi-process run: address of process 0's coordinator "
                        "[$JAX_COORDINATOR_ADDRESS]")
    g.add_argument("--num-processes", type=int, metavar="N",
                   help="multi-process run: number of processes [$JAX_NUM_PROCESSES]")
    g.add_argument("--process-id", type=int, metavar="I",
                   help="multi-process run: this process, 0..N-1; 0 writes logs "
                        "[$JAX_PROCESS_ID]")
    g = p.add_argument_group("memory (n_envs is sized to fit; the banner shows the estimate)")
    g.add_argument("--max-vram", type=float, metavar="GB",
                   help="device memory a run may plan for, per device [90%% of the GPU's "
                        "memory; on CPU half the RAM, shared by the CPU devices]")
    v = g.add_mutually_exclusive_group()
    v.add_argument("--high-vram", dest="preset", action="store_const", const="high-vram",
                   help="GPUs with 50 GB+: 65,536 envs x 512 steps, 32 minibatches, bf16 "
                        "(as configs/high-vram.toml)")
    v.add_argument("--low-vram", dest="preset", action="store_const", const="low-vram",
                   help="GPUs with about 8 GB: 8,192 envs x 256 steps, 16 minibatches, "
                        "--max-vram 8 (as configs/low-vram.toml)")
    g = p.add_argument_group("checkpoints (RUN_DIR/checkpoints/)")
    g.add_argument("--save-every", type=int,
                   help="iterations between checkpoints; 0 = only the final one [10]")
    g.add_argument("--keep-checkpoints", type=int,
                   help="most recent checkpoints kept, besides the best and the final one [3]")
    g.add_argument("--eval-every", type=int,
                   help="iterations between greedy walks of the validation range, logged as "
                        "val_* in metrics.jsonl and ranking checkpoints by val_score; 0 = off "
                        "[10]")
    g.add_argument("--early-stop", type=int, metavar="N",
                   help="stop when N validation walks in a row found no new best val_score; "
                        "0 = off [0]")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its latest complete checkpoint; "
                        "flags change its hyperparameters or duration, never its shapes")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="start a new run from a checkpoint (a run dir, its checkpoints/ or "
                        "checkpoints/N): its whole state, or its weights with --weights-only")
    g.add_argument("--weights-only", action="store_true",
                   help="with --checkpoint: take the network weights only; fresh optimizers, "
                        "envs and counters (shapes other than the network's may change)")
    g.add_argument("--lr-multiplier", type=float,
                   help="with --checkpoint or --resume: scale both learning rates, e.g. 0.5 "
                        "or 0.3 to continue training gently [1.0]")
    g.add_argument("--on-mismatch", choices=("error", "fresh"),
                   help="with --checkpoint: when the saved network's shapes differ from this "
                        "run's, stop (error) or start from fresh weights (fresh) [error]")
    return p


def config_from_args(
    args: argparse.Namespace, base: cfgmod.Config | None = None
) -> cfgmod.Config:
    """base (the defaults, or a checkpoint's config) < --config file < --high-vram/--low-vram
    < flags < --hyperparams.

    A --config file changes only the keys it names, so a checkpoint's settings survive it.
    """
    base = base if base is not None else cfgmod.Config()
    cfg = cfgmod.load(args.config, base) if args.config else base
    if args.preset:
        cfg = cfgmod.preset(cfg, args.preset)
    for old, new in (("eval_fraction", "--val-fraction and --test-fraction"),
                     ("split_date", "--split-dates VAL_DATE,TEST_DATE")):
        if getattr(args, old, None) is not None:
            raise UsageError(f"--{old.replace('_', '-')} was replaced by {new}: data is split "
                             f"into train, validation and test ranges")
    values = {k: getattr(args, k) for k in FLAG_FIELDS}
    for key in ("symbols", "split_dates"):
        if values[key] is not None:
            values[key] = tuple(s.strip() for s in values[key].split(",") if s.strip())
    if args.verbose or args.quiet:
        values["verbosity"] = 2 if args.verbose else 0
    cfg = cfgmod.with_values(cfg, **values)
    if args.hyperparams:
        cfg = cfgmod.apply_overrides(cfg, args.hyperparams)
    return cfg


def checkpoint_config(
    args: argparse.Namespace, saved: cfgmod.Config, keep_run_dir: bool
) -> cfgmod.Config:
    """The config of a run that starts from a checkpoint whose config is `saved`.

    `saved` is the base for `config_from_args`; a duration given here replaces the saved
    one (so `--iterations 20` extends a run saved with `timesteps`), and the learning
    rates are scaled by --lr-multiplier. A new run (`keep_run_dir` False) does not inherit
    the saved run directory, and no run inherits the saved verbosity.
    """
    # Verbosity is this invocation's (-v/-q), not the saved run's.
    run = dataclasses.replace(saved.run, verbosity=cfgmod.RunConfig.verbosity)
    if not keep_run_dir:
        run = dataclasses.replace(run, run_dir=None)
    cfg = config_from_args(args, dataclasses.replace(saved, run=run))
    given = [k for k in DURATION_FIELDS if getattr(cfg.run, k) != getattr(saved.run, k)]
    if given:
        cleared = {k: None for k in DURATION_FIELDS if k not in given}
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **cleared))
    if args.lr_multiplier is not None:
        m = args.lr_multiplier
        ppo = dataclasses.replace(cfg.ppo, actor_lr=cfg.ppo.actor_lr * m,
                                  critic_lr=cfg.ppo.critic_lr * m)
        cfg = dataclasses.replace(cfg, ppo=ppo)
    return cfg


def check_start_flags(args: argparse.Namespace) -> None:
    """Refuses combinations of --resume, --checkpoint and their options that mean nothing."""
    if args.resume and args.checkpoint:
        raise UsageError("--resume continues --run-dir in place and --checkpoint starts a new "
                         "run from a checkpoint; give one of them")
    if args.resume and not args.run_dir:
        raise UsageError("--resume needs --run-dir DIR (the run to continue)")
    if args.weights_only and not args.checkpoint:
        raise UsageError("--weights-only needs --checkpoint PATH")
    if args.on_mismatch and not args.checkpoint:
        raise UsageError("--on-mismatch needs --checkpoint PATH")
    if args.lr_multiplier is not None:
        if not (args.resume or args.checkpoint):
            raise UsageError("--lr-multiplier needs --checkpoint or --resume (for a new run "
                             "set --actor-lr and --critic-lr)")
        if not args.lr_multiplier > 0:
            raise UsageError(f"--lr-multiplier must be > 0, got {args.lr_multiplier}")


class Progress:
    """A one-line live bar on stderr when it is a terminal (host-only)."""

    def __init__(self, total_steps: int, enabled: bool):
        self.total = total_steps
        self.enabled = enabled and sys.stderr.isatty()
        self.shown = False

    def update(self, steps: int, sps: float, ret: float):
        if not self.enabled:
            return
        frac = steps / self.total
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        eta = (self.total - steps) / sps if sps > 0 else float("inf")
        sys.stderr.write(
            f"\r[{bar}] {100 * frac:5.1f}% {steps:,}/{self.total:,} steps | {sps:,.0f} sps"
            f" | ETA {format_seconds(eta)} | ret {ret:+.4f}\x1b[K"
        )
        sys.stderr.flush()
        self.shown = True

    def clear(self):
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def log_line(row: dict, total_iters: int) -> str:
    return (
        f"it {row['iteration']:>5}/{total_iters} | steps {row['timesteps']:>11,} | "
        f"sps {row['sps']:>9,.0f} | ret {row['episode_return_mean']:+.4f} | "
        f"pi {row['policy_loss']:+.4f} | v {row['value_loss']:.4f} | H {row['entropy']:.3f} | "
        f"kl {row['approx_kl']:.4f} | clip {row['clip_frac']:.3f} | "
        f"ev {row['explained_variance']:+.3f}"
    )


def verbose_lines(row: dict, action_names) -> list[str]:
    hist = " ".join(f"{n}={f:.2f}" for n, f in zip(action_names, row["action_freq"],
                                                    strict=True))
    cost = f" | cost/step {row['cost_mean']:.5f}" if "cost_mean" in row else ""
    return [
        f"    adv mean {row['advantage_mean']:+.4f} std {row['advantage_std']:.4f} | "
        f"grad norm actor {row['actor_grad_norm']:.3f} critic {row['critic_grad_norm']:.3f} | "
        f"critic loss {row.get('critic_loss_before', float('nan')):.5f} -> "
        f"{row.get('critic_loss_after', float('nan')):.5f}{cost}",
        f"    actions: {hist}",
    ]


def eval_line(row: dict, new_best: bool) -> str:
    return (
        f"val  {row['iteration']:>5} | validation return {100 * row['val_total_return']:+.2f}% | "
        f"Sharpe {row['val_sharpe']:+.2f} | max DD {100 * row['val_max_drawdown']:.2f}% | "
        f"score {row['val_score']:+.2f}" + (" (best)" if new_best else "")
    )


def eval_interval(cfg: cfgmod.Config, market, given: bool) -> int:
    """Iterations between validation walks: `run.eval_every`, or 0 when the market has no
    validation range, or the env is not the portfolio (the walk reports trading results),
    and eval_every is the default (an eval_every set by the user, or early stopping, is
    then an error)."""
    every = cfg.run.eval_every
    from jaxtrade.envs import PortfolioEnv

    if every and cfg.env.name != PortfolioEnv.name:
        if given or every != cfgmod.RunConfig.eval_every:
            raise UsageError(
                f"--eval-every {every}: validation walks report trading results of the "
                f"{PortfolioEnv.name} env; --env {cfg.env.name} trains without them "
                f"(pass --eval-every 0)"
            )
        every = 0
    lo, hi = market.bounds("validation")
    if every and hi - lo == 0:
        if given or every != cfgmod.RunConfig.eval_every:
            raise UsageError(
                f"--eval-every {every} walks the validation range, but this run has none "
                f"(val_fraction={cfg.data.val_fraction:g}, split_dates={cfg.data.split_dates}); "
                f"give it one with --val-fraction or --split-dates, or pass --eval-every 0"
            )
        every = 0
    if cfg.run.early_stop and not every:
        raise UsageError(f"--early-stop {cfg.run.early_stop} counts validation walks, but this "
                         f"run makes none; set --eval-every and keep a validation range")
    return every


def eval_row(evaluator, params, row: dict) -> dict:
    """The validation metrics of `params` as metrics.jsonl columns: val_<metric>, val_score."""
    out = jax.device_get(evaluator(params, row))
    return {f"val_{k}": (np.asarray(v).tolist()) for k, v in out.items()}


def first_non_finite(row: dict) -> str | None:
    """Name of the first quantity that is not finite, or None."""
    if not row["params_finite"]:
        return "the network parameters"
    for k in FINITE_KEYS:
        if k in row and not math.isfinite(row[k]):
            return f"{k} ({row[k]})"
    return None


def _to_row(metrics: dict, i: int) -> dict:
    row = {}
    for k, v in metrics.items():
        x = np.asarray(v[i])
        row[k] = x.tolist() if x.ndim else x.item()
    return row


def measured_peak(compiled) -> dict[str, Any]:
    """Peak device memory per device: JAX's device statistics where the backend keeps them
    (GPU: peak bytes in use, the process's lifetime peak), else XLA's buffer plan of the
    compiled call (CPU)."""
    from jaxtrade import memory

    peak, from_device = memory.measured_peak(compiled)
    return {"bytes": peak,
            "source": "device memory statistics" if from_device else "XLA buffer plan"}


def check_new_run_dir(run_dir: Path) -> None:
    """Refuses a directory that already holds a run (the run creates it later)."""
    from jaxtrade.checkpoint import CHECKPOINT_DIR

    held = [n for n in ("metrics.jsonl", CHECKPOINT_DIR) if (run_dir / n).exists()]
    if held:
        raise UsageError(
            f"{run_dir} already holds a run ({', '.join(held)}); choose another --run-dir, "
            f"or continue it with --resume"
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
        return _train(args)
    except (cfgmod.ConfigError, DataError, UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a run starts: from scratch, resumed in place, or from another run's checkpoint."""

    cfg: cfgmod.Config  # resolved and validated
    mode: str  # new | resume | checkpoint (whole state) | weights (params only)
    source: Any = None  # the checkpoint.Source started from; None for a new run
    changes: tuple = ()  # checkpoint.Change: settings changed from the checkpoint's
    n_envs_given: bool = False  # n_envs was asked for (flag, file, preset), not defaulted


def plan_start(args: argparse.Namespace, platform: str, n_devices: int = 1) -> Start:
    """The config and starting point the flags ask for on `n_devices` devices; refuses what
    cannot work."""
    from jaxtrade import checkpoint as ckpt

    check_start_flags(args)
    if args.resume:
        source = ckpt.latest(args.run_dir)
        saved = source.config
        # config.json holds the settings of the last (re)start, which a later resume keeps
        # even when no checkpoint was saved after it.
        base = _read_config_json(Path(args.run_dir) / "config.json") or saved
        cfg = checkpoint_config(args, base, keep_run_dir=True)
        mode = "resume"
    elif args.checkpoint:
        source = ckpt.locate(args.checkpoint)
        saved = source.config
        cfg = checkpoint_config(args, saved, keep_run_dir=False)
        mode = "weights" if args.weights_only else "checkpoint"
    else:
        name = Path(args.config).stem if args.config else (args.preset or None)
        cfg = config_from_args(args)
        return Start(_finish_config(cfg, platform, name, n_devices), "new",
                     n_envs_given=cfg.ppo.n_envs is not None)
    cfg = _finish_config(cfg, platform, n_devices=n_devices)
    changes = ()
    if mode != "weights":
        what = "--resume" if mode == "resume" else "--checkpoint without --weights-only"
        changes = tuple(ckpt.resume_changes(saved, cfg, FLAG_OF, what=what))
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


def _read_config_json(path: Path) -> cfgmod.Config | None:
    """The config a run directory's config.json holds, or None when there is none."""
    if not path.exists():
        return None
    try:
        return cfgmod.from_dict(json.loads(path.read_text()), source=path)
    except json.JSONDecodeError as e:
        raise cfgmod.ConfigError(f"{path}: invalid JSON: {e}") from None


def _finish_config(
    cfg: cfgmod.Config, platform: str, name: str | None = None, n_devices: int = 1
) -> cfgmod.Config:
    """Fills machine- and clock-dependent settings; the run dir is named after the preset."""
    cfg = cfgmod.resolve_run_dir(cfgmod.resolve(cfg, platform), name=name)
    return cfgmod.validate(cfg, n_devices=n_devices)


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
    fixed: bool,
) -> Sizing:
    """The largest n_envs up to `cfg`'s that fits the memory budget, per `jaxtrade.memory`.

    `given`: the user asked for this n_envs (it is capped with a warning, not silently);
    `fixed`: it cannot change (a resumed state holds that many envs), so a run that does
    not fit only gets a warning.

    Raises:
        UsageError: not even the smallest valid n_envs fits.
    """
    from jaxtrade import memory

    budget, source = memory.device_budget(max_vram_gb)
    budget = parallel.min_over_processes(budget)  # hosts may differ; all must agree
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


def _train(args: argparse.Namespace) -> int:
    from jaxtrade import checkpoint as ckpt
    from jaxtrade.evaluation import make_evaluator
    from jaxtrade.tensorboard import TensorBoardLog
    from jaxtrade.trainer import build_network, count_network_params, make_train, set_hparams

    platform = jax.default_backend()
    mesh = parallel.make_mesh(args.devices)
    n_devices = mesh.size
    primary = parallel.is_primary()
    start = plan_start(args, platform, n_devices)
    cfg, source = start.cfg, start.source
    verbosity = cfg.run.verbosity if primary else 0
    partial_line = False  # the last say() left its line open for a "done in ..."

    def say(*parts, end: str = "\n", **kw) -> None:
        nonlocal partial_line
        if verbosity > 0:
            print(*parts, end=end, **kw)
            partial_line = not end.endswith("\n")

    warn = ((lambda text: print(f"warning: {text}", file=sys.stderr)) if primary
            else (lambda text: None))

    market = load_market(
        cfg.data.path,
        symbols=cfg.data.symbols,
        start=cfg.data.start,
        end=cfg.data.end,
        max_fill=cfg.data.max_fill,
        synthetic=cfg.data.synthetic(),
        episode_length=cfg.env.episode_length,
        val_fraction=cfg.data.val_fraction,
        test_fraction=cfg.data.test_fraction,
        split_dates=cfg.data.split_dates,
    ).without_test()  # the test range is python -m jaxtrade.evaluate's alone
    eval_every = eval_interval(cfg, market, given=args.eval_every is not None)
    from jaxtrade import memory
    from jaxtrade.envs import make_env

    max_vram = args.max_vram
    if max_vram is None and args.preset:
        max_vram = cfgmod.PRESET_MAX_VRAM_GB.get(args.preset)
    try:
        env = make_env(cfg.env.name, market)
    except ValueError as e:
        raise UsageError(f"--env: {e}") from None
    network = build_network(cfg, env)
    sizing = size_n_envs(cfg, env, n_devices, max_vram,
                         given=start.n_envs_given, fixed=start.mode in ("resume", "checkpoint"))
    cfg = cfgmod.validate(sizing.cfg, n_devices=n_devices)
    run_dir = Path(cfg.run.run_dir)
    if start.mode != "resume":
        check_new_run_dir(run_dir)
    total_iters = cfgmod.total_iterations(cfg)
    pc = cfg.ppo
    steps_per_iter = pc.n_envs * pc.n_steps
    total_steps = total_iters * steps_per_iter
    first, stop = market.bounds("validation")
    last = stop - 1  # a walk of the validation range marks its last step at its last bar

    # The banner, printed before anything is placed on a device or compiled.
    say(f"jaxtrade {__version__} | jax {jax.__version__} | {parallel.describe(mesh)}, "
        f"{platform} | precision {np.dtype(network.dtype).name}")
    say(f"market: {market.describe()}")
    for line in market.report:
        say(f"  {line}")
    say(f"env: {env.name}")
    for line in env.notes():
        say(f"  {line}")
    say(f"model: {network.describe()}, "
        f"{count_network_params(cfg, env):,} parameters (obs {env.obs_dim}, "
        f"{env.num_actions} actions)")
    say(f"ppo: {pc.n_envs:,} envs x {pc.n_steps} steps = {steps_per_iter:,} steps/iteration, "
        f"{pc.n_minibatches} minibatches, {pc.ppo_epochs} joint + {pc.critic_epochs} critic "
        f"epochs")
    say(f"memory: estimated {memory.format_bytes(sizing.estimate.per_device_bytes)} per device "
        f"({pc.n_envs // n_devices:,} envs each) of a {memory.format_bytes(sizing.budget)} "
        f"budget ({sizing.budget_source})")
    if sizing.note:
        say(f"  {sizing.note}")
    if sizing.warning:
        warn(sizing.warning)
    say(f"run: {total_iters:,} iterations = {total_steps:,} timesteps -> {run_dir}")
    if eval_every:
        say(f"eval: greedy walk of the validation bars {format_date(market.dates[first])} .. "
            f"{format_date(market.dates[last])} ({last - first} steps) every {eval_every} "
            f"iterations and at the end; checkpoints ranked by val_score"
            + (f"; stop after {cfg.run.early_stop} walks without a new best"
               if cfg.run.early_stop else ""))
    else:
        say("eval: off" + ("" if stop > first else " (no validation range)"))
    test = market.span("test")
    say("test: " + (f"{test['bars']} bars ({test['start']} .. {test['end']}) withheld: "
                    f"training never reads them; python -m jaxtrade.evaluate reports on them"
                    if test else "none (every bar trains or validates)"))
    sys.stdout.flush()

    # Every blocking step from here on says what it waits for when it takes over a minute.
    where = "" if jax.process_count() == 1 else f"process {jax.process_index()}: "

    progress = Progress(total_steps, enabled=verbosity > 0)

    def notice(text: str) -> None:
        nonlocal partial_line
        progress.clear()
        print(("\n" if partial_line else "") + f"waiting: {where}{text}", file=sys.stderr,
              flush=True)
        partial_line = False

    watchdog = Watchdog(notice)
    devices = f"{n_devices} device{'s' if n_devices > 1 else ''}"
    with watchdog.waiting(f"placing the market on {devices}"):
        trainer = make_train(cfg, market, mesh)

    # The starting state: restored (resume, whole-state checkpoint) or fresh, with weights
    # from a checkpoint for a warm start. Errors here leave the run directory untouched.
    t_start = time.perf_counter()
    mode = start.mode
    state = None
    building = (f"restoring {source.path} on {devices}" if mode in ("resume", "checkpoint")
                else f"building the initial state on {devices}")
    with watchdog.waiting(building):
        if mode in ("resume", "checkpoint"):
            on_mismatch = "refuse" if mode == "resume" else (args.on_mismatch or "error")
            state = ckpt.restore_state(source, trainer, on_mismatch)
            if state is None:
                mode = "fresh"
            elif hparams := ckpt.hparam_values(list(start.changes)):
                state = set_hparams(state, **hparams)
        if state is None:
            state = trainer.initial_state(jax.random.key(cfg.run.seed))
            if mode == "weights":
                params = ckpt.restore_params(source, trainer, args.on_mismatch or "error")
                if params is None:
                    mode = "fresh"
                else:
                    state = ckpt.warm_start(state, params)
        state = jax.block_until_ready(trainer.place(state))
    init_s = time.perf_counter() - t_start

    if mode == "resume":
        lineage, resumed = source.lineage, source.meta
    elif source is not None:
        lineage = ckpt.Lineage.child(source.lineage, str(source.run_dir.absolute()), source.step,
                                     source.meta["timesteps"], mode)
        resumed = ({k: source.meta[k] for k in ("history", "metrics")}
                   if mode == "checkpoint" else None)
    else:
        lineage, resumed = ckpt.Lineage(), None
    start_iters = source.step if mode in ("resume", "checkpoint") else 0
    prior = (resumed or {}).get("metrics") or {}
    # Every process has checked the run directory before the first one writes there.
    parallel.barrier("jaxtrade-run-dir-checked")
    if mode == "resume" and primary:
        kept, dropped = ckpt.truncate_metrics(run_dir / "metrics.jsonl", start_iters)
    else:
        kept, dropped = start_iters, 0
    if primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfgmod.to_dict(cfg), indent=2) + "\n")
        (run_dir / MARKET_FILE).write_text(json.dumps(market_record(market), indent=2) + "\n")

    if source is not None:
        how = {
            "resume": f"resumed from {source.path}"
                      + (" (saved on interrupt)" if source.meta.get("interrupted") else ""),
            "checkpoint": f"whole state of {source.path}",
            "weights": f"weights of {source.path}; fresh optimizers, envs and counters",
            "fresh": f"fresh weights (architecture differs from {source.path})",
        }[mode]
        say(f"start: {how}; iteration {start_iters}, generation {lineage.generation}, "
            f"{lineage.total_timesteps(start_iters * steps_per_iter):,} timesteps behind "
            f"the weights")
        if start.changes:
            say("changed: " + ", ".join(map(str, start.changes)))
        if args.lr_multiplier is not None:
            say(f"learning rates x{args.lr_multiplier:g}: actor {pc.actor_lr:.3g}, "
                f"critic {pc.critic_lr:.3g}")
        if mode == "resume" and dropped:
            say(f"metrics.jsonl: dropped {dropped} row(s) after iteration {start_iters} "
                f"(re-run now)")
        if mode == "resume" and kept < start_iters:
            warn(f"metrics.jsonl has {kept} rows for {start_iters} checkpointed iterations")
        saved_devices = source.meta.get("n_devices")
        if mode in ("resume", "checkpoint") and saved_devices != n_devices:
            warn(f"saved on {saved_devices} device(s), running on {n_devices}: the run "
                 f"continues, but not bit-identically")

    checkpoints = ckpt.RunCheckpoints(run_dir, cfg, lineage=lineage, resumed=resumed,
                                      evaluating=bool(eval_every), n_devices=n_devices)
    train_s = 0.0
    compile_s = 0.0
    done_iters = start_iters
    episodes = int(prior.get("episodes", 0))
    wall_offset = float(prior.get("wall_s", 0.0))
    last_row: dict = dict(prior)
    status = "completed"
    message = None
    save_every = cfg.run.save_every
    next_save = (done_iters // save_every + 1) * save_every if save_every else None
    next_eval = (done_iters // eval_every + 1) * eval_every if eval_every else None
    evaluator = None
    k_call = min(cfg.run.iterations_per_call, total_iters)
    compiled = {}
    peak: dict[str, Any] = {}

    def get_compiled(k: int):
        nonlocal compile_s
        if k not in compiled:
            say(f"compiling {k} iteration(s) per call...", end=" ", flush=True)
            t0 = time.perf_counter()
            with watchdog.waiting(f"compiling the training program ({k} iteration(s) per call)"):
                compiled[k] = trainer.compile(state, k)
            dt_s = time.perf_counter() - t0
            compile_s += dt_s
            say(f"done in {dt_s:.1f}s")
        return compiled[k]

    def save(**kw) -> None:
        if checkpoints.save(state, done_iters, **kw):
            progress.clear()
            say(f"saving checkpoint at iteration {done_iters} -> "
                f"{checkpoints.directory / str(done_iters)}", flush=True)

    # Signals: the first stops the loop after the current call, the second exits at once.
    # Closing the checkpoints waits for the save in flight (a second signal still exits).
    # With several processes, all stop together once a signal reached any of them.
    with ckpt.Interrupts() as interrupts, contextlib.closing(checkpoints):

        def stop_requested() -> bool:
            return parallel.any_process(interrupts.requested)

        k_first = min(k_call, total_iters - done_iters)
        if not stop_requested():
            get_compiled(k_first)
            if eval_every:
                say("compiling evaluation...", end=" ", flush=True)
                t0 = time.perf_counter()
                with watchdog.waiting("compiling the evaluation"):
                    evaluator = make_evaluator(trainer.network, trainer.env, cfg.env, first,
                                               last, market.bars_per_year, cfg.run.seed,
                                               state.params)
                compile_s += time.perf_counter() - t0
                say(f"done in {time.perf_counter() - t0:.1f}s")
        log_path = run_dir / "metrics.jsonl" if primary else os.devnull
        # TensorBoard events of the same rows; a resumed run drops those after its checkpoint.
        # (tensorboardX purges events at steps >= purge_step: the checkpoint's row stays.)
        tb = (TensorBoardLog(run_dir, purge_step=start_iters * steps_per_iter + 1
                             if start_iters else None) if primary else None)
        with (open(log_path, "a") as log,
              contextlib.closing(tb) if tb is not None else contextlib.nullcontext()):
            while done_iters < total_iters and not stop_requested():
                k = min(k_call, total_iters - done_iters)
                fn = get_compiled(k)
                t0 = time.perf_counter()
                span = f" {done_iters + 1}" if k == 1 else f"s {done_iters + 1}-{done_iters + k}"
                with watchdog.waiting(f"running iteration{span}"):
                    state, metrics = fn(state, trainer.env_params)
                    metrics = jax.device_get(metrics)
                dt_s = time.perf_counter() - t0
                if not peak:
                    peak = measured_peak(fn)
                    progress.clear()
                    say(f"memory: peak {memory.format_bytes(peak['bytes'])} per device after "
                        f"the first call ({peak['source']}; estimated "
                        f"{memory.format_bytes(sizing.estimate.per_device_bytes)})", flush=True)
                train_s += dt_s
                sps = k * steps_per_iter / dt_s
                rows = []
                for i in range(k):
                    row = _to_row(metrics, i)
                    bad = first_non_finite(row)
                    if bad is not None:
                        status = "diverged"
                        message = (
                            f"iteration {done_iters + 1}: {bad} became non-finite; stopped "
                            f"before saving anything from it (try lower learning rates or "
                            f"--max-grad-norm)"
                        )
                        break
                    done_iters += 1
                    episodes += int(row["episodes"])
                    row = {
                        "iteration": done_iters,
                        "timesteps": done_iters * steps_per_iter,
                        "episodes": episodes,
                        "sps": sps,
                        "wall_s": wall_offset + time.perf_counter() - t_start,
                        **{k_: v for k_, v in row.items()
                           if k_ not in ("episodes", "params_finite")},
                        "episodes_this_iteration": int(row["episodes"]),
                    }
                    rows.append(row)
                # Validation walk of the parameters this call ended with, into its last row.
                if (status == "completed" and evaluator is not None
                        and (done_iters >= next_eval or done_iters == total_iters)):
                    next_eval = (done_iters // eval_every + 1) * eval_every
                    with watchdog.waiting(f"evaluating iteration {done_iters} on the "
                                          f"validation range"):
                        rows[-1].update(eval_row(evaluator, state.params, rows[-1]))
                new_best = False
                for row in rows:
                    log.write(json.dumps(row) + "\n")
                    if tb is not None:
                        tb.write(row)
                    new_best = checkpoints.record(row) or new_best
                    last_row = row
                    it = row["iteration"]
                    if verbosity > 0 and (it % cfg.run.log_every == 0 or it == total_iters):
                        progress.clear()
                        print(log_line(row, total_iters), flush=True)
                        if verbosity > 1:
                            for line in verbose_lines(row, env.action_names):
                                print(line)
                    if verbosity > 0 and ckpt.VAL_SCORE_KEY in row:
                        progress.clear()
                        print(eval_line(row, new_best), flush=True)
                log.flush()
                if status != "completed":
                    break
                sel = checkpoints.selection
                if (cfg.run.early_stop and ckpt.VAL_SCORE_KEY in rows[-1]
                        and sel["since_best"] >= cfg.run.early_stop):
                    status = "stopped_early"
                    message = (f"no new best val_score in {sel['since_best']} validation walks; "
                               f"the best is iteration {sel['best_iteration']} (score "
                               f"{sel['best_score']:+.2f})")
                    break
                # Between calls, after the rows above were checked finite and written; a new
                # best validation score is saved too, so that the best checkpoint is kept.
                save_due = next_save is not None and done_iters >= next_save
                if save_due:
                    next_save = (done_iters // save_every + 1) * save_every
                if (save_due or new_best) and done_iters < total_iters:
                    save()
                trained = (done_iters - start_iters) * steps_per_iter
                progress.update(done_iters * steps_per_iter, train_s and trained / train_s,
                                last_row.get("episode_return_mean", 0.0))
        progress.clear()
        if status == "completed" and done_iters < total_iters:
            status = "interrupted"
        if status != "diverged":
            save(interrupted=status == "interrupted",
                 final=status in ("completed", "stopped_early"))
        with watchdog.waiting("writing the last checkpoint"):
            checkpoints.wait()

    trained_steps = (done_iters - start_iters) * steps_per_iter
    summary = {
        "status": status,
        "message": message,
        "iterations": done_iters,
        "timesteps": done_iters * steps_per_iter,
        "episodes": episodes,
        "wall_s": time.perf_counter() - t_start,
        "compile_s": compile_s,
        "init_s": init_s,
        "train_s": train_s,
        "sps": trained_steps / train_s if train_s else 0.0,
        "n_params": trainer.n_params,
        "n_envs": pc.n_envs,
        "device": parallel.describe(mesh),
        "n_devices": n_devices,
        "n_processes": jax.process_count(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "checkpoint": (str(checkpoints.directory / str(checkpoints.last_step))
                       if checkpoints.last_step is not None else None),
        "lineage": lineage.to_dict(done_iters * steps_per_iter),
        "best": checkpoints.best,
        # What chose the best checkpoint: validation walks (candidates compared) and the best.
        "selection": {k: v for k, v in checkpoints.selection.items() if k != "sharpes"},
        "memory": {
            "estimated_bytes": sizing.estimate.per_device_bytes,
            "budget_bytes": sizing.budget,
            "budget": sizing.budget_source,
            "peak_bytes": peak.get("bytes"),
            "peak_source": peak.get("source"),
        },
        "final_metrics": last_row,
    }
    if status == "interrupted":
        summary["resume_command"] = ckpt.resume_command(run_dir)
    if not primary:
        return 1 if status == "diverged" else 0
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if status == "diverged":
        print(f"error: {message}", file=sys.stderr)
        return 1
    if status == "interrupted":
        by = interrupts.signal_name or "a signal to another process"
        print(f"interrupted by {by} after {done_iters:,} of {total_iters:,} iterations; "
              f"checkpoint {summary['checkpoint']}")
        print(f"resume with: {summary['resume_command']}", flush=True)
        return 0
    if status == "stopped_early":
        print(f"stopped early after {done_iters:,} of {total_iters:,} iterations: {message}")
    ret = last_row.get("episode_return_mean", float("nan"))
    ev = last_row.get("explained_variance", float("nan"))
    sel = checkpoints.selection
    if sel["validations"]:
        n = sel["validations"]
        print(f"best: iteration {sel['best_iteration']} by val_score {sel['best_score']:+.2f}, "
              f"chosen on validation among {n} candidate{'s' if n > 1 else ''}; report it on "
              f"the test range with: python -m jaxtrade.evaluate --run-dir {run_dir}")
    print(
        f"done: {summary['iterations']:,} iterations, {summary['timesteps']:,} timesteps in "
        f"{format_seconds(summary['wall_s'])} (compile {summary['compile_s']:.1f}s, "
        f"{summary['sps']:,.0f} steps/s); episode return {ret:+.4f}, explained variance "
        f"{ev:+.3f}; run dir {run_dir}"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    enable_stack_dumps()  # `kill -USR1 PID`: every thread's Python stack on stderr
    sys.exit(main())

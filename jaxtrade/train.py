"""`python -m jaxtrade.train`: parse flags, build the trainer, run it, log (host-only).

No training logic lives here: see `jaxtrade.trainer` for the program and
`jaxtrade.config` for every setting.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from jaxtrade import __version__
from jaxtrade import config as cfgmod
from jaxtrade.data import DataError, load_market
from jaxtrade.envs import NAMES

# Per-iteration metrics that must stay finite; the first that is not stops the run.
FINITE_KEYS = (
    "policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "explained_variance",
    "actor_grad_norm", "critic_grad_norm", "episode_return_mean",
)
# CLI flag -> config field, for flags whose value goes straight into the config.
FLAG_FIELDS = (
    "path", "symbols", "start", "end", "max_fill", "eval_fraction", "split_date",
    "signal_strength", "episode_length", "n_envs", "n_steps", "n_minibatches", "timesteps",
    "episodes", "iterations", "hidden_dim", "n_gru_layers", "dropout", "precision", "actor_lr",
    "critic_lr", "ppo_epochs", "critic_epochs", "gamma", "gae_lambda", "clip", "ent_coef",
    "vf_coef", "max_grad_norm", "seed", "run_dir", "iterations_per_call", "log_every",
)


class UsageError(Exception):
    """A problem with what the user asked for; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxtrade.train",
        description="Train a PPO trading agent end to end on the accelerator.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=None,
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
    g.add_argument("--eval-fraction", type=float, help="share of bars held out at the end [0.2]")
    g.add_argument("--split-date", help="first held-out date (overrides --eval-fraction)")
    g.add_argument("--max-fill", type=int, help="max consecutive missing bars to forward-fill [5]")
    g.add_argument("--signal-strength", type=float,
                   help="synthetic market: strength of the tradable signal [1.0]")
    g.add_argument("--episode-length", type=int, help="steps per training episode [256]")
    g = p.add_argument_group("rollout and duration (--timesteps > --episodes > --iterations)")
    g.add_argument("--n-envs", type=int, help="parallel envs [64 on CPU, 65536 on GPU]")
    g.add_argument("--n-steps", type=int, help="rollout steps per iteration [128]")
    g.add_argument("--n-minibatches", type=int, help="minibatches per epoch (split envs) [4]")
    g.add_argument("--timesteps", type=int, help="train for this many env steps")
    g.add_argument("--episodes", type=int, help="train for this many x episode length steps")
    g.add_argument("--iterations", type=int, help="train for this many x n_envs x n_steps steps")
    g = p.add_argument_group("network")
    g.add_argument("--hidden-dim", type=int, help="encoder/GRU width [256]")
    g.add_argument("--n-gru-layers", type=int, help="stacked GRU layers [2]")
    g.add_argument("--dropout", type=float, help="dropout rate [0.1]")
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
    g.add_argument("--run-dir", help="run directory [ckpt/<UTC time>-<config hash>]")
    g.add_argument("--iterations-per-call", type=int,
                   help="iterations fused into one compiled call between host checks [1]")
    g.add_argument("--log-every", type=int, help="iterations between log lines [1]")
    v = g.add_mutually_exclusive_group()
    v.add_argument("-v", "--verbose", action="store_true",
                   help="also advantage stats, gradient norms, action histogram")
    v.add_argument("-q", "--quiet", action="store_true", help="final summary only")
    return p


def config_from_args(args: argparse.Namespace) -> cfgmod.Config:
    """defaults < --config file < flags < --hyperparams."""
    cfg = cfgmod.load(args.config) if args.config else cfgmod.Config()
    values = {k: getattr(args, k) for k in FLAG_FIELDS}
    if values["symbols"] is not None:
        values["symbols"] = tuple(s.strip() for s in values["symbols"].split(",") if s.strip())
    if args.verbose or args.quiet:
        values["verbosity"] = 2 if args.verbose else 0
    cfg = cfgmod.with_values(cfg, **values)
    if args.hyperparams:
        cfg = cfgmod.apply_overrides(cfg, args.hyperparams)
    return cfg


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


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
            f" | ETA {_fmt_duration(eta)} | ret {ret:+.4f}\x1b[K"
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


def verbose_lines(row: dict) -> list[str]:
    hist = " ".join(f"{n}={f:.2f}" for n, f in zip(NAMES, row["action_freq"], strict=True))
    return [
        f"    adv mean {row['advantage_mean']:+.4f} std {row['advantage_std']:.4f} | "
        f"grad norm actor {row['actor_grad_norm']:.3f} critic {row['critic_grad_norm']:.3f} | "
        f"critic loss {row.get('critic_loss_before', float('nan')):.5f} -> "
        f"{row.get('critic_loss_after', float('nan')):.5f} | cost/step {row['cost_mean']:.5f}",
        f"    actions: {hist}",
    ]


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


def prepare_run_dir(run_dir: Path) -> None:
    if (run_dir / "metrics.jsonl").exists():
        raise UsageError(
            f"{run_dir} already holds a run (metrics.jsonl); choose another --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _train(args)
    except (cfgmod.ConfigError, DataError, UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from jaxtrade.trainer import make_train

    platform = jax.default_backend()
    cfg = cfgmod.resolve_run_dir(cfgmod.resolve(config_from_args(args), platform))
    cfgmod.validate(cfg)
    verbosity = cfg.run.verbosity
    say = print if verbosity > 0 else (lambda *a, **k: None)

    market = load_market(
        cfg.data.path,
        symbols=cfg.data.symbols,
        start=cfg.data.start,
        end=cfg.data.end,
        max_fill=cfg.data.max_fill,
        synthetic=cfg.data.synthetic(),
        episode_length=cfg.env.episode_length,
        eval_fraction=cfg.data.eval_fraction,
        split_date=cfg.data.split_date,
    )
    run_dir = Path(cfg.run.run_dir)
    prepare_run_dir(run_dir)
    trainer = make_train(cfg, market)
    total_iters = cfgmod.total_iterations(cfg)
    steps_per_iter = trainer.steps_per_iteration
    total_steps = total_iters * steps_per_iter
    pc, nc = cfg.ppo, cfg.network
    devices = jax.devices()

    (run_dir / "config.json").write_text(json.dumps(cfgmod.to_dict(cfg), indent=2) + "\n")
    say(f"jaxtrade {__version__} | jax {jax.__version__} | {len(devices)} x "
        f"{devices[0].device_kind} ({platform}) | precision "
        f"{np.dtype(trainer.network.dtype).name}")
    say(f"market: {market.describe()}")
    for line in market.report:
        say(f"  {line}")
    say(f"model: GRU actor-critic, hidden {nc.hidden_dim} x {nc.n_gru_layers} layers, "
        f"{trainer.n_params:,} parameters (obs {trainer.env.obs_dim}, "
        f"{trainer.env.num_actions} actions)")
    say(f"ppo: {pc.n_envs:,} envs x {pc.n_steps} steps = {steps_per_iter:,} steps/iteration, "
        f"{pc.n_minibatches} minibatches, {pc.ppo_epochs} joint + {pc.critic_epochs} critic "
        f"epochs")
    say(f"run: {total_iters:,} iterations = {total_steps:,} timesteps -> {run_dir}")

    t_start = time.perf_counter()
    state = jax.block_until_ready(jax.jit(trainer.init)(jax.random.key(cfg.run.seed)))
    init_s = time.perf_counter() - t_start
    k_call = min(cfg.run.iterations_per_call, total_iters)
    compiled = {}
    compile_s = 0.0

    def get_compiled(k: int):
        nonlocal compile_s
        if k not in compiled:
            say(f"compiling {k} iteration(s) per call...", end=" ", flush=True)
            t0 = time.perf_counter()
            compiled[k] = trainer.run.lower(state, k).compile()
            dt_s = time.perf_counter() - t0
            compile_s += dt_s
            say(f"done in {dt_s:.1f}s")
        return compiled[k]

    get_compiled(k_call)

    progress = Progress(total_steps, enabled=verbosity > 0)
    train_s = 0.0
    done_iters = 0
    episodes = 0
    last_row: dict = {}
    status = "completed"
    message = None
    with open(run_dir / "metrics.jsonl", "a") as log:
        while done_iters < total_iters:
            k = min(k_call, total_iters - done_iters)
            fn = get_compiled(k)
            t0 = time.perf_counter()
            state, metrics = fn(state)
            metrics = jax.device_get(metrics)
            dt_s = time.perf_counter() - t0
            train_s += dt_s
            sps = k * steps_per_iter / dt_s
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
                    "wall_s": time.perf_counter() - t_start,
                    **{k_: v for k_, v in row.items() if k_ not in ("episodes", "params_finite")},
                    "episodes_this_iteration": int(row["episodes"]),
                }
                log.write(json.dumps(row) + "\n")
                last_row = row
                if verbosity > 0 and (
                    done_iters % cfg.run.log_every == 0 or done_iters == total_iters
                ):
                    progress.clear()
                    print(log_line(row, total_iters), flush=True)
                    if verbosity > 1:
                        for line in verbose_lines(row):
                            print(line)
            log.flush()
            if status != "completed":
                break
            progress.update(done_iters * steps_per_iter, train_s and done_iters * steps_per_iter
                            / train_s, last_row.get("episode_return_mean", 0.0))
    progress.clear()

    summary = {
        "status": status,
        "message": message,
        "iterations": done_iters,
        "timesteps": last_row.get("timesteps", 0),
        "episodes": episodes,
        "wall_s": time.perf_counter() - t_start,
        "compile_s": compile_s,
        "init_s": init_s,
        "train_s": train_s,
        "sps": last_row.get("timesteps", 0) / train_s if train_s else 0.0,
        "n_params": trainer.n_params,
        "n_envs": pc.n_envs,
        "device": f"{len(devices)} x {devices[0].device_kind}",
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "final_metrics": last_row,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if status != "completed":
        print(f"error: {message}", file=sys.stderr)
        return 1
    ret = last_row.get("episode_return_mean", float("nan"))
    ev = last_row.get("explained_variance", float("nan"))
    print(
        f"done: {summary['iterations']:,} iterations, {summary['timesteps']:,} timesteps in "
        f"{_fmt_duration(summary['wall_s'])} (compile {summary['compile_s']:.1f}s, "
        f"{summary['sps']:,.0f} steps/s); episode return {ret:+.4f}, explained variance "
        f"{ev:+.3f}; run dir {run_dir}"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.exit(main())

"""`python -m jaxtrade.train`: parse flags, call the engine, print how the run ended.

No training logic lives here: `jaxtrade.engine` runs the host loop, `jaxtrade.trainer`
builds the compiled program, and `jaxtrade.config` holds every setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from jaxtrade import config as cfgmod
from jaxtrade import engine, parallel
from jaxtrade.data import DataError
from jaxtrade.errors import UsageError
from jaxtrade.watchdog import enable_stack_dumps, format_seconds

# Config key -> the flag that sets it (the config's `setting(flag=...)`), to name it in
# messages; its keys are the fields whose flag's value goes straight into the config.
FLAG_OF = cfgmod.FLAG_OF
FLAG_FIELDS = tuple(FLAG_OF)
DURATION_FIELDS = ("timesteps", "episodes", "iterations")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxtrade.train",
        description="Train a PPO trading agent end to end on the accelerator.",
        argument_default=None,
        allow_abbrev=False,  # `--n-env 8` must not silently mean --n-envs 8
    )
    add = p.add_argument
    add("--config", metavar="FILE.toml", help="TOML config (see configs/); flags override it")
    # Flags of config fields: type, help, default and metavar come from the config's
    # `setting`s; the order of the names here is the order of --help.
    g = p.add_argument_group("data")
    cfgmod.add_flags(g, ("path", "symbols", "start", "end", "val_fraction", "test_fraction",
                         "split_dates"))
    for old in ("--eval-fraction", "--split-date"):  # older flags: refused, naming the new ones
        g.add_argument(old, dest=old[2:].replace("-", "_"), help=argparse.SUPPRESS)
    cfgmod.add_flags(g, ("max_fill", "signal_strength", "name", "episode_length",
                         "bootstrap_block", "decide_every", "augment", "reward_benchmark"))
    g = p.add_argument_group("procedural worlds (--market worlds)")
    cfgmod.add_flags(g, ("market", "n_worlds", "world_bars", "val_worlds", "test_worlds",
                         "world_seed", "refresh_every"))
    g = p.add_argument_group("rollout and duration (--timesteps > --episodes > --iterations)")
    cfgmod.add_flags(g, ("n_envs", "n_steps", "n_minibatches", "timesteps", "episodes",
                         "iterations"))
    g = p.add_argument_group("network")
    cfgmod.add_flags(g, ("kind", "encoder", "hidden_dim", "n_gru_layers", "n_layers", "n_heads",
                         "head_dim", "context", "dropout", "precision"))
    g.add_argument("--remat", dest="recompute", action="store_true",
                   help="recompute the GRU's gates in the backward pass instead of keeping "
                        "them: less memory per env and step (more envs fit), more compute")
    g = p.add_argument_group("PPO")
    cfgmod.add_flags(g, ("actor_lr", "critic_lr", "ppo_epochs", "critic_epochs", "gamma",
                         "gae_lambda", "clip", "ent_coef", "vf_coef", "max_grad_norm"))
    cfgmod.add_flags(g, ("schedule", "schedule_scale", "phase_transitions", "adjust"))
    g.add_argument("--reset-optimizer-on-plateau", dest="reset_on_plateau", action="store_true",
                   help="fresh Adam moments for the next phase when a phase ended on its "
                        "transition rule (a plateau or its targets)")
    g.add_argument("--hyperparams", metavar="K=V,K=V",
                   help="any config keys, e.g. 'ent_coef=0.02,n_steps=256' (applied last)")
    g = p.add_argument_group("run")
    cfgmod.add_flags(g, ("seed", "run_dir", "iterations_per_call", "log_every"))
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
    cfgmod.add_flags(g, ("save_every", "keep_checkpoints", "eval_every", "early_stop"))
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
    g.add_argument("--use-recommendations", action="store_true",
                   help="with --checkpoint: train the next phase of the run's schedule (the "
                        "reference's when it followed none): the phase the checkpoint reached "
                        "is detected, the next one's hyperparameters and shapes apply, the run "
                        "lasts to its end and writes recommendations.json for the one after")
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
    values = cfgmod.flag_values(args, FLAG_FIELDS)  # comma-separated lists split
    if args.verbose or args.quiet:
        values["verbosity"] = 2 if args.verbose else 0
    if getattr(args, "reset_on_plateau", False):
        values["reset_optimizer_on_plateau"] = True
    if getattr(args, "recompute", False):
        values["remat"] = True
    if values.get("path") is not None and values.get("market") is None:
        values["market"] = "fixed"  # --data is a fixed market (e.g. fine-tuning a worlds run)
    cfg = cfgmod.with_values(cfg, **values)
    if args.hyperparams:
        cfg = cfgmod.apply_overrides(cfg, args.hyperparams)
    # Runtime hyperparameters the user set here win over the schedule's (`schedule_fixed`;
    # recorded only for a run that follows a schedule).
    given = [k for k, v in values.items() if v is not None]
    given += cfgmod.override_keys(args.hyperparams) if args.hyperparams else []
    fixed = sorted(set(cfg.run.schedule_fixed or ()) | {k for k in given
                                                         if k in cfgmod.RUNTIME_FIELDS})
    if cfg.run.schedule is not None and fixed != sorted(cfg.run.schedule_fixed or ()):
        cfg = cfgmod.with_values(cfg, schedule_fixed=tuple(fixed))
    return cfg


def checkpoint_config(
    args: argparse.Namespace, saved: cfgmod.Config, keep_run_dir: bool
) -> cfgmod.Config:
    """The config of a run that starts from a checkpoint whose config is `saved`.

    `saved` is the base for `config_from_args`; a duration given here replaces the saved
    one (so `--iterations 20` extends a run saved with `timesteps`), a run of another env
    (`--env`) takes that env's default episode length unless one is given, and the learning
    rates are scaled by --lr-multiplier. A new run (`keep_run_dir` False) does not inherit
    the saved run directory, and no run inherits the saved verbosity.
    """
    # Verbosity is this invocation's (-v/-q), not the saved run's.
    run = dataclasses.replace(saved.run, verbosity=cfgmod.RunConfig.verbosity)
    if not keep_run_dir:
        run = dataclasses.replace(run, run_dir=None)
    cfg = config_from_args(args, dataclasses.replace(saved, run=run))
    if cfg.env.name != saved.env.name:  # the saved episode length was the other env's
        env = dataclasses.replace(saved.env, episode_length=None)
        cfg = config_from_args(args, dataclasses.replace(saved, env=env, run=run))
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
    if args.use_recommendations:
        if not args.checkpoint:
            raise UsageError("--use-recommendations needs --checkpoint RUN_DIR (the run whose "
                             "next phase to train)")
        given = [f"--{k}" for k in DURATION_FIELDS if getattr(args, k, None) is not None]
        if given:
            raise UsageError(f"--use-recommendations trains to the end of the next phase: "
                             f"drop {', '.join(given)}")
    if args.on_mismatch and not args.checkpoint:
        raise UsageError("--on-mismatch needs --checkpoint PATH")
    if args.lr_multiplier is not None:
        if not (args.resume or args.checkpoint):
            raise UsageError("--lr-multiplier needs --checkpoint or --resume (for a new run "
                             "set --actor-lr and --critic-lr)")
        if not args.lr_multiplier > 0:
            raise UsageError(f"--lr-multiplier must be > 0, got {args.lr_multiplier}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parallel.initialize(args.coordinator, args.num_processes, args.process_id)
        return _train(args)
    except (cfgmod.ConfigError, DataError, UsageError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def recommended(args: argparse.Namespace) -> tuple[dict, Callable]:
    """--use-recommendations: (the recommendation for the checkpoint's next phase, a
    function that turns a config started from the checkpoint into one that follows the
    schedule to that phase's end). The schedule is the checkpoint's own, else --schedule,
    else the reference; its phase ends are the checkpoint's (phases that ended early stay
    so)."""
    from jaxtrade import checkpoint as ckpt
    from jaxtrade import schedule as sched

    source = ckpt.locate(args.checkpoint)
    saved = source.config
    path = args.schedule or saved.run.schedule or sched.reference_path()
    scale = (args.schedule_scale if args.schedule_scale is not None
             else saved.run.schedule_scale if saved.run.schedule else 1.0)
    try:
        followed = sched.load(path)
    except sched.ScheduleError as e:
        raise UsageError(f"--use-recommendations: schedule {e}") from None
    record = source.meta.get("schedule") or {}
    total = cfgmod.total_iterations(saved) * cfgmod.steps_per_iteration(saved)
    ends = (record["ends"] if saved.run.schedule == path and len(record.get("ends", ())) ==
            len(followed.phases) else followed.ends(scale, total))
    timesteps = int(source.meta["timesteps"])
    rec = sched.recommendation(followed, ends, timesteps, scale, str(source.run_dir))
    if rec["next"] is None:
        raise UsageError(f"{source.path} is at {timesteps:,} timesteps, past the end of "
                         f"{path}'s last phase ({ends[-1]:,.0f}): nothing to recommend")
    # As if given as flags: the config follows this schedule, and runtime hyperparameters
    # set with flags or --hyperparams win over it (`config_from_args`), for this phase.
    args.schedule, args.schedule_scale = path, scale
    durations = {k: None for k in DURATION_FIELDS} | {"timesteps": math.ceil(rec["next"]["end"])}

    def apply(cfg: cfgmod.Config) -> cfgmod.Config:
        return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **durations))

    return rec, apply


def start_request(args: argparse.Namespace) -> engine.StartRequest:
    """The flags as the engine's request (refusing flag combinations that cannot work)."""
    check_start_flags(args)
    from_saved = lambda base, keep: checkpoint_config(args, base, keep_run_dir=keep)
    if args.use_recommendations:
        rec, apply = recommended(args)
        nxt, reached = rec["next"], rec["reached"]
        print(f"recommendations: {args.checkpoint} reached phase {reached['name']!r} "
              f"({'complete' if reached['complete'] else 'part way'}, {rec['timesteps']:,} "
              f"timesteps); training phase {nxt['name']!r} to {nxt['end']:,.0f} timesteps "
              f"with {rec['schedule']}" + (f" x{rec['schedule_scale']:g}"
                                           if rec["schedule_scale"] != 1 else ""))
        from_saved = lambda base, keep: apply(checkpoint_config(args, base, keep_run_dir=keep))
    return engine.StartRequest(
        resume=args.resume,
        run_dir=args.run_dir,
        checkpoint=args.checkpoint,
        weights_only=args.weights_only,
        name=Path(args.config).stem if args.config else (args.preset or None),
        new_config=lambda: config_from_args(args),
        from_saved=from_saved,
        flag_of=FLAG_OF,
    )


def run_options(args: argparse.Namespace) -> engine.RunOptions:
    return engine.RunOptions(
        devices=args.devices, max_vram_gb=args.max_vram, preset=args.preset,
        eval_every_given=args.eval_every is not None, on_mismatch=args.on_mismatch,
        lr_multiplier=args.lr_multiplier,
    )


def _train(args: argparse.Namespace) -> int:
    result = engine.train(start_request(args), run_options(args))
    if not parallel.is_primary():
        return 1 if result.status == "diverged" else 0
    return report(result)


def report(result: engine.Result) -> int:
    """How the run ended, in the last lines; the exit code."""
    summary, status, run_dir = result.summary, result.status, result.run_dir
    done, total = summary["iterations"], result.total_iters
    if status == "diverged":
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    if status == "interrupted":
        by = result.signal_name or "a signal to another process"
        print(f"interrupted by {by} after {done:,} of {total:,} iterations; "
              f"checkpoint {summary['checkpoint']}")
        print(f"resume with: {summary['resume_command']}", flush=True)
        return 0
    if status == "stopped_early":
        print(f"stopped early after {done:,} of {total:,} iterations: {result.message}")
    last_row = summary["final_metrics"]
    ret = last_row.get("episode_return_mean", float("nan"))
    ev = last_row.get("explained_variance", float("nan"))
    sel = result.selection
    if sel["validations"]:
        n = sel["validations"]
        print(f"best: iteration {sel['best_iteration']} by val_score {sel['best_score']:+.2f}, "
              f"chosen on validation among {n} candidate{'s' if n > 1 else ''}; report it on "
              f"the test {'worlds' if summary.get('market') == 'worlds' else 'range'} with: "
              f"python -m jaxtrade.evaluate --run-dir {run_dir}")
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

"""`python -m jaxtrade.population`: a population-based training run from the command line.

Host-only. The flags are `python -m jaxtrade.train`'s (the same parser and config
building) plus `--population N`, `--pbt-interval T`, `--pbt-fraction F` and
`--member-groups G`. The run is planned as a single run is (`jaxtrade.engine.prepare`:
market, env, network, n_envs per member, sized to the member's share of a device) on
`--devices` D (default all) laid out as G member groups x D/G env shards
(`jaxtrade.parallel.population_mesh`, G = gcd(N, D) by default), and the banner is the
single run's with the population's lines after it. Then `jaxtrade.population`'s
programs do the work, one interval at a time:

    train every member for the interval's iterations (one compiled call, all members)
    score every member on the validation data (the single run's walk, all members in
        one call where the env offers it; a worlds run: the median over the validation
        worlds) and keep each slot's best-scored state (`population.BestStates`)
    exploit/explore (jitted once) -> population.jsonl, a checkpoint, a progress line

A run directory holds, besides config.json, market.json and env.json:

    population.json              the PBT settings (members, interval, fraction)
    population.jsonl             per interval, one record per member: id, parent,
                                 generation, hyperparameters, validation score and
                                 metrics, timesteps, and the copy that replaced it
    population_checkpoints/<I>/  the whole population after interval I (Orbax): every
                                 member's TrainState, the PBT key and bookkeeping, and
                                 each slot's best-scored state (`best`, what --archive
                                 takes)
    summary.json                 how the run ended and its best member

`--resume` continues from the latest checkpoint bit for bit (population.jsonl is cut back
to it), with the flags changing its duration only.

`--walk-forward K` (`jaxtrade.walk_forward`): K members, member k trained and validated on
the bars before the k-th of K blocks of the test range (per-member start bounds, vmapped),
the config's hyperparameters for all, no exploit/explore; walk_forward.json records the
folds, and `python -m jaxtrade.evaluate` reports the concatenated out-of-sample folds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrade import config as cfgmod
from jaxtrade import parallel, train
from jaxtrade.data import DataError
from jaxtrade.errors import UsageError
from jaxtrade.population_plot import POPULATION_FILE, read_records

SETTINGS_FILE = "population.json"  # the run's PBT settings
CHECKPOINT_DIR = "population_checkpoints"  # under the run directory
FORMAT = 1  # layout of a population checkpoint
DEFAULT_MEMBERS = 8
DEFAULT_INTERVAL = 500_000  # timesteps per member between exploit/explore steps (reference)
# Metrics of a member's last training iteration kept in its population.jsonl record.
TRAIN_KEYS = ("episode_return_mean", "explained_variance", "entropy", "approx_kl")


@dataclasses.dataclass(frozen=True)
class PbtSettings:
    """The population's settings beyond the config (`population.json`)."""

    members: int  # N, trained in one program
    interval: int  # iterations per member between exploit/explore steps
    fraction: float  # bottom (and top) quantile of exploit/explore
    walk_forward: int = 0  # K folds, one member each (`jaxtrade.walk_forward`); 0: off
    # The folds of a walk-forward run and their record (`walk_forward.record`), planned from
    # the market; not part of population.json.
    folds: tuple = dataclasses.field(default=(), compare=False)
    fold_record: dict | None = dataclasses.field(default=None, compare=False)

    def record(self) -> dict:
        """population.json's settings (walk_forward only when on)."""
        out = {"members": self.members, "interval": self.interval, "fraction": self.fraction}
        return {**out, "walk_forward": self.walk_forward} if self.walk_forward else out


def add_pbt_flags(group, members: str) -> None:
    """--pbt-interval and --pbt-fraction, on an argparse group (the population's and the
    league's, whose `members` are "a category's members")."""
    from jaxtrade.population import FRACTION

    group.add_argument("--pbt-interval", type=int, metavar="T",
                       help=f"timesteps per member between exploit/explore steps, rounded to "
                            f"whole iterations [{DEFAULT_INTERVAL:,}]")
    group.add_argument("--pbt-fraction", type=float, metavar="F",
                       help=f"the bottom F of {members} take copies of the top F, in (0, 0.5] "
                            f"[{FRACTION}]")


def build_parser() -> argparse.ArgumentParser:
    """`jaxtrade.train`'s parser with the population's flags."""
    p = train.build_parser()
    p.prog = "python -m jaxtrade.population"
    p.description = ("Train a population of PPO trading agents in one compiled program with "
                     "population-based training: every interval, members are scored on the "
                     "validation data, the worst take perturbed copies of the best.")
    g = p.add_argument_group("population-based training")
    g.add_argument("--population", type=int, metavar="N",
                   help=f"members, each with its own weights, envs and hyperparameters "
                        f"[{DEFAULT_MEMBERS}]")
    add_pbt_flags(g, "members")
    g.add_argument("--walk-forward", type=int, metavar="K",
                   help="K time folds as K members: member k trains and validates on the bars "
                        "before fold k (the k-th of K blocks of the test range) and never "
                        "reads a later bar; no exploit/explore. python -m jaxtrade.evaluate "
                        "reports the concatenated out-of-sample folds [off]")
    g.add_argument("--member-groups", type=int, metavar="G",
                   help="on several devices: split the members into G groups, each on D/G of "
                        "the D devices, which split its members' envs (a 2-D mesh, members x "
                        "envs); G divides the members and the devices [the largest such G: "
                        "gcd(members, devices)]")
    g.add_argument("--archive", nargs="?", const="ckpt/archive", metavar="DIR",
                   help="when the run completes, add each slot's best-scored model to the "
                        "model archive DIR (`python -m jaxtrade.archive`; its prune command "
                        "keeps the best) "
                        "[off; ckpt/archive when given without DIR]")
    return p


# Flags of the single run that a population run does not take, and why.
_REFUSED = {
    "checkpoint": "--checkpoint (starting from a single run's checkpoint)",
    "weights_only": "--weights-only",
    "use_recommendations": "--use-recommendations",
    "on_mismatch": "--on-mismatch",
    "lr_multiplier": "--lr-multiplier",
    "reset_on_plateau": "--reset-optimizer-on-plateau",
    "coordinator": "--coordinator (several processes)",
    "num_processes": "--num-processes",
    "process_id": "--process-id",
}


def check_flags(args: argparse.Namespace) -> None:
    """Refuses flags a population run cannot honour, each in one line."""
    for name, flag in _REFUSED.items():
        if getattr(args, name, None):
            raise UsageError(f"{flag} is not supported by python -m jaxtrade.population")
    for name, why in (("eval_every", "members are validated at every --pbt-interval"),
                      ("save_every", "the population is saved at every --pbt-interval"),
                      ("iterations_per_call", "an interval is one call"),
                      ("early_stop", "not supported by a population run")):
        if getattr(args, name, None) is not None:
            raise UsageError(f"--{name.replace('_', '-')}: {why}")
    groups = getattr(args, "member_groups", None)
    if groups is not None and groups < 1:
        raise UsageError(f"--member-groups must be at least 1, got {groups}")
    if args.population is not None and args.population < 1:
        raise UsageError(f"--population must be at least 1, got {args.population}")
    if args.pbt_interval is not None and args.pbt_interval < 1:
        raise UsageError(f"--pbt-interval must be at least 1 timestep, got {args.pbt_interval}")
    if args.pbt_fraction is not None and not 0 < args.pbt_fraction <= 0.5:
        raise UsageError(f"--pbt-fraction must be in (0, 0.5], got {args.pbt_fraction}")
    if args.resume and not args.run_dir:
        raise UsageError("--resume needs --run-dir DIR (the population run to continue)")
    k = getattr(args, "walk_forward", None)
    if k is not None:
        if k < 2:
            raise UsageError(f"--walk-forward K needs K >= 2 folds, got {k}")
        if args.population is not None and args.population != k:
            raise UsageError(f"--walk-forward {k} trains {k} members, one per fold; drop "
                             f"--population {args.population}")
        for name, flag in (("pbt_fraction", "--pbt-fraction"), ("archive", "--archive")):
            if getattr(args, name, None) is not None:
                raise UsageError(f"{flag} does not combine with --walk-forward (its members "
                                 f"train on different data: none is copied or archived)")


def check_config(cfg: cfgmod.Config, n_devices: int = 1) -> None:
    """Refuses settings that would fight PBT or that a population does not run yet: an
    adjustment rule, early stop, pool refreshes, and a schedule phase that changes shapes
    (the population is one program; a schedule of runtime hyperparameters is taken, each
    member's values of them factors on it)."""
    run = cfg.run
    if run.schedule is not None:
        from jaxtrade import schedule

        sched = schedule.load(run.schedule)
        for i, phase in enumerate(sched.phases):
            shown, applied, _ = schedule.phase_config(sched, cfg, i, n_devices)
            if shown != cfg:
                changed = ", ".join(f"{k} {v:g}" for k, v in applied.items())
                raise UsageError(
                    f"--schedule: phase {phase.name!r} changes shapes ({changed}), which a "
                    f"population's one program cannot; a population takes a schedule of "
                    f"runtime hyperparameters only (drop the [phase.shapes], or give the "
                    f"config its values)")
    if run.adjust != "off":
        raise UsageError("--adjust rules change hyperparameters that PBT owns in a population "
                         "run; drop --adjust")
    if run.early_stop:
        raise UsageError("--early-stop is not supported by a population run")
    if cfg.data.worlds.refresh_every:
        raise UsageError("--refresh-every is not supported by a population run yet")


def read_settings(run_dir: Path) -> PbtSettings | None:
    path = run_dir / SETTINGS_FILE
    if not path.exists():
        return None
    try:
        return PbtSettings(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise UsageError(f"{path}: not a population settings file ({e})") from None


def pbt_settings(args: argparse.Namespace, steps_per_iter: int,
                 saved: PbtSettings | None) -> PbtSettings:
    """The settings from the flags, else the saved ones (a resume), else the defaults; a
    resume may not change the member count."""
    from jaxtrade.population import FRACTION

    if saved is not None and args.population is not None and args.population != saved.members:
        raise UsageError(f"--population {args.population}: the run was saved with "
                         f"{saved.members} members; a resume keeps them")
    k = getattr(args, "walk_forward", None)
    if saved is not None and k is not None and k != saved.walk_forward:
        raise UsageError(f"--walk-forward {k}: the run was saved with "
                         + (f"{saved.walk_forward} folds" if saved.walk_forward else
                            "no walk-forward folds") + "; a resume keeps them")
    walk_forward = walk_forward_folds(args, saved)
    members = member_count(args, saved)
    if args.pbt_interval is not None:
        interval = max(1, round(args.pbt_interval / steps_per_iter))
    elif saved is not None:
        interval = saved.interval
    else:
        interval = max(1, round(DEFAULT_INTERVAL / steps_per_iter))
    fraction = (args.pbt_fraction if args.pbt_fraction is not None
                else saved.fraction if saved else FRACTION)
    return PbtSettings(members, interval, fraction, walk_forward)


def walk_forward_folds(args: argparse.Namespace, saved: PbtSettings | None) -> int:
    """K: --walk-forward's folds, else the saved run's (a resume), else 0 (off)."""
    k = getattr(args, "walk_forward", None)
    return k if k is not None else saved.walk_forward if saved else 0


def member_count(args: argparse.Namespace, saved: PbtSettings | None) -> int:
    """N: --walk-forward's folds, else --population, else the saved run's, else the
    default."""
    return walk_forward_folds(args, saved) or (
        args.population if args.population is not None
        else saved.members if saved else DEFAULT_MEMBERS)


def layout(args: argparse.Namespace, members: int) -> tuple[list, int]:
    """(the run's devices, G member groups): --devices (default all) and --member-groups
    (default gcd(members, devices)), refused in one line where G divides not both."""
    devices = parallel.select_devices(args.devices)
    n = len(devices)
    groups = getattr(args, "member_groups", None)
    if groups is None:
        return devices, math.gcd(members, n)
    if n % groups or members % groups:
        raise UsageError(f"--member-groups {groups} must divide both the {members} members "
                         f"and the {n} device(s)")
    return devices, groups


def plan(args: argparse.Namespace):
    """(engine Plan, PBT settings, resumed: the latest population checkpoint's step or None),
    before anything is placed on a device."""
    from jaxtrade import checkpoint as ckpt
    from jaxtrade import engine
    from jaxtrade.engine.start import read_config_json

    check_flags(args)
    saved_cfg, saved_pbt = None, None
    if args.resume:
        run_dir = Path(args.run_dir)
        saved_pbt = read_settings(run_dir)
        saved_cfg = read_config_json(run_dir / "config.json")
        if saved_pbt is None or saved_cfg is None:
            raise UsageError(f"--resume: {run_dir} holds no population run ({SETTINGS_FILE} "
                             f"and config.json)")
        with contextlib.closing(PopulationCheckpoints(run_dir, 1)) as saved:
            latest = saved.latest_step()
        if latest is None:
            raise UsageError(f"--resume: {run_dir / CHECKPOINT_DIR} holds no complete "
                             f"checkpoint")
        new_config = lambda: train.checkpoint_config(args, saved_cfg, keep_run_dir=True)
    else:
        new_config = lambda: train.config_from_args(args)
    if walk_forward_folds(args, saved_pbt) and new_config().data.market == "worlds":
        # refused before worlds are generated
        raise UsageError(WORLDS_REFUSED)
    request = engine.StartRequest(
        resume=False, run_dir=args.run_dir, checkpoint=None, weights_only=False,
        name=Path(args.config).stem if args.config else (args.preset or None),
        new_config=new_config, from_saved=lambda base, keep: base, flag_of=train.FLAG_OF)
    # The members' groups: each group's devices split its members' envs, so n_envs is
    # planned and sized as one run's on D/G devices, whose memory N/G members share (a
    # league: its largest category's, `members_per_device`). A resume keeps its n_envs.
    members = member_count(args, saved_pbt)
    devices, groups = layout(args, members)
    options = engine.RunOptions(devices=len(devices) // groups, max_vram_gb=args.max_vram,
                                preset=args.preset, fixed_n_envs=bool(args.resume),
                                members_per_device=getattr(args, "members_per_device", None)
                                or members // groups)
    p = engine.prepare(request, options)
    p = dataclasses.replace(p, mesh=parallel.population_mesh(groups, devices=devices))
    check_config(p.cfg, parallel.data_size(p.mesh))
    if (reason := p.env.validation_unavailable()) is not None:
        raise UsageError(f"PBT scores members on the validation data, but {reason}; give it "
                         f"one with --val-fraction or --split-dates")
    if saved_cfg is not None:
        changes = ckpt.resume_changes(saved_cfg, p.cfg, train.FLAG_OF, what="--resume")
        from jaxtrade.trainer import HPARAM_NAMES

        if owned := [c for c in changes if c.key in HPARAM_NAMES]:
            raise UsageError(f"--resume: {owned[0].key} is each member's own under PBT; a "
                             f"resume keeps the members' hyperparameters")
    else:
        # an empty population.jsonl is a run stopped before its first interval: no run
        held = [n for n in (POPULATION_FILE, CHECKPOINT_DIR) if (p.run_dir / n).exists()
                and (n != POPULATION_FILE or (p.run_dir / n).stat().st_size)]
        if held:
            raise UsageError(f"{p.run_dir} already holds a run ({', '.join(held)}); choose "
                             f"another --run-dir, or continue it with --resume")
    pbt = pbt_settings(args, p.steps_per_iter, saved_pbt)
    if pbt.walk_forward:
        p, pbt = plan_walk_forward(p, pbt)
    from jaxtrade.population import quantile_size

    quantile_size(pbt.members, pbt.fraction)  # refuses a bad fraction in one line
    return p, pbt, args.resume


WORLDS_REFUSED = ("--walk-forward needs a time axis: procedural worlds have none (each is "
                  "drawn apart); train on --market fixed or your --data")


def plan_walk_forward(p, pbt: PbtSettings):
    """(plan holding the bars before the last fold, settings with the folds) of a
    `--walk-forward` run (`jaxtrade.walk_forward`)."""
    from jaxtrade import walk_forward as wf
    from jaxtrade.data.market import Market
    from jaxtrade.engine.start import load_run_market
    from jaxtrade.envs import make_env

    cfg = p.cfg
    if cfg.data.market == "worlds":
        raise UsageError(WORLDS_REFUSED)
    full = load_run_market(cfg, test=True)
    if not isinstance(full, Market) or cfg.env.name != "portfolio":
        raise UsageError(f"--walk-forward trains the portfolio env on a market's bars; this "
                         f"run's env is {cfg.env.name}")
    folds = wf.folds_of_market(full, pbt.walk_forward, cfg.env.episode_length)
    held = wf.held_market(full, folds)
    p = dataclasses.replace(p, market=held, env=make_env(cfg.env.name, held))
    return p, dataclasses.replace(pbt, folds=folds, fold_record=wf.record(folds, full))


# ------------------------------------------------------------------------- checkpoints
def _saveable(pop):
    """`pop` with its typed PRNG keys as raw uint32 key data (Orbax stores plain arrays)."""
    return pop.replace(key=jax.random.key_data(pop.key),
                       members=pop.members.replace(rng=jax.random.key_data(pop.members.rng)))


def abstract_population(trainer, n: int):
    """Shapes, dtypes and placement (`population.shardings` on the trainer's mesh) of an
    n-member population in saved form: the restore target."""
    from jaxtrade.population import Population, shardings

    def build(key):
        members = jax.vmap(trainer.init, in_axes=(0, None))(jax.random.split(key, n),
                                                            trainer.env_params)
        z = jnp.zeros((n,), jnp.int32)
        return _saveable(Population(
            members=members, key=key, ids=z, parents=z, generation=z, copies=z,
            replaced=jnp.zeros((n,), bool), source=z, nonfinite=jnp.zeros((n,), bool),
            next_id=jnp.int32(0), interval=jnp.int32(0)))

    shapes = jax.eval_shape(build, jax.random.key(0))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, shardings(trainer))


class PopulationCheckpoints:
    """`RUN_DIR/population_checkpoints/<interval>/`: the whole population (Orbax `state`)
    and JSON `meta` (interval, iteration, config, key implementation). Saves are
    asynchronous and atomic, as a single run's (`jaxtrade.checkpoint`). Host-only."""

    def __init__(self, run_dir: Path, keep: int):
        import orbax.checkpoint as ocp

        self.directory = Path(run_dir) / CHECKPOINT_DIR
        self._ocp = ocp
        self._options = ocp.CheckpointManagerOptions(create=False, max_to_keep=keep,
                                                     cleanup_tmp_directories=True)
        self._manager = None

    def _open(self):
        if self._manager is None:
            ocp = self._ocp
            self.directory.mkdir(parents=True, exist_ok=True)
            self._manager = ocp.CheckpointManager(
                self.directory.absolute(), options=self._options,
                item_handlers={"state": ocp.StandardCheckpointHandler(),
                               "meta": ocp.JsonCheckpointHandler(),
                               "best": ocp.StandardCheckpointHandler()})
        return self._manager

    def latest_step(self) -> int | None:
        if not self.directory.exists():
            return None
        return self._open().latest_step()

    def save(self, pop, interval: int, meta: dict, best=None) -> None:
        """`pop`, and each slot's best-scored state `best` (`population.BestStates`)."""
        ocp = self._ocp
        # A copy: the next call donates the population's buffers while Orbax reads these.
        snapshot = parallel.copy(_saveable(pop))
        items = {"state": ocp.args.StandardSave(snapshot), "meta": ocp.args.JsonSave(meta)}
        if best is not None:
            items["best"] = ocp.args.StandardSave(parallel.copy(best))
        self._open().save(interval, args=ocp.args.Composite(**items), force=True)

    def restore(self, trainer, n: int, step: int):
        """(population placed on the trainer's mesh, meta, best states or None: a checkpoint
        written before they were saved) of checkpoint `step`."""
        from jaxtrade.population import best_shardings, init_best

        ocp = self._ocp
        target = abstract_population(trainer, n)
        items = {"state": ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}
        if (self.directory / str(step) / "best").exists():
            shapes = jax.eval_shape(init_best, target)
            items["best"] = ocp.args.StandardRestore(jax.tree.map(
                lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                best_shardings(trainer)))
        out = self._open().restore(step, args=ocp.args.Composite(**items))
        meta, pop = out.meta, out.state
        best = out.best if "best" in items else None
        impl = meta.get("rng_impl", "threefry2x32")
        pop = pop.replace(key=jax.random.wrap_key_data(pop.key, impl=impl),
                          members=pop.members.replace(
                              rng=jax.random.wrap_key_data(pop.members.rng, impl=impl)))
        from jaxtrade.population import shardings

        return jax.device_put(pop, shardings(trainer)), meta, best

    def close(self) -> None:
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()


def truncate_records(path: Path, interval: int) -> int:
    """Keeps the records of `path` up to `interval` (a resume re-runs the later ones);
    returns how many were dropped. The file is replaced atomically."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            ok = json.loads(line)["interval"] <= interval
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)
    return dropped


# ---------------------------------------------------------------------------- the run
def _number(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class PopulationRun:
    """One population run's state between compiled calls (host-only).

    Besides `python -m jaxtrade.population`'s run, a caller (the league, `jaxtrade.league`)
    may give `founders(trainer) -> Population` (e.g. `population.continue_population` of
    archived models) instead of N fresh founders, `segments(trainer, k) -> [(k_i,
    env_params_i)]` to train an interval's k iterations as consecutive calls on other
    training data (sum of k_i = k; default one call on the trainer's), and
    `exploit_last=False` to keep every member of the last interval (no exploit/explore
    after it, so each final member can be archived), and set `evaluator` before `run`
    to one compiled by another run on the same market and shapes.
    """

    def __init__(self, p, pbt: PbtSettings, resume: bool, console, *, founders=None,
                 segments=None, exploit_last: bool = True):
        self.plan, self.pbt, self.resume, self.console = p, pbt, resume, console
        self.founders, self.segments, self.exploit_last = founders, segments, exploit_last
        self.cfg = p.cfg
        self.total = p.total_iters  # per member
        self.steps = p.steps_per_iter  # per member
        self.compiled: dict[int, Any] = {}
        self.evaluator = None  # compiled by `run` unless given (same market and shapes)
        # All members' walks in one call where the env offers it (not walk-forward folds,
        # whose members walk different slices); else one member at a time.
        self.batch_evaluation = True
        self.members_evaluator = None
        self.compile_s = self.train_s = self.eval_s = 0.0
        self.status = "completed"  # | interrupted | diverged
        self.message: str | None = None  # why it diverged
        self.best: dict | None = None
        self.kept = None  # each slot's best-scored state (`population.BestStates`)
        self.fold_scores: list[float | None] = []  # walk-forward: each fold's latest score

    # ------------------------------------------------------------------ start
    def build(self) -> None:
        """Trainer, evaluator and the population: restored, or N founders."""
        from jaxtrade.population import (
            best_shardings,
            init_best,
            init_population,
            keep_best,
            make_exploit_explore,
            shardings,
        )
        from jaxtrade.trainer import make_train

        p, say = self.plan, self.console.say
        self.t_start = time.perf_counter()
        self.trainer = make_train(self.cfg, p.market, p.mesh)
        # The members' training env params: shared, or a walk-forward run's per member.
        self.env_params, self.env_axes = self.trainer.env_params, None
        if self.pbt.folds:
            from jaxtrade import walk_forward as wf

            params = wf.member_params(self.trainer.env, self.cfg.env, self.pbt.folds)
            self.env_params = parallel.put_replicated(params, p.mesh)
            self.env_axes = wf.member_axes(params)
        self.checkpoints = PopulationCheckpoints(p.run_dir, self.cfg.run.keep_checkpoints)
        if self.resume:
            step = self.checkpoints.latest_step()
            self.pop, meta, self.kept = self.checkpoints.restore(self.trainer,
                                                                 self.pbt.members, step)
            if self.trainer.schedule is not None and meta.get("schedule_ends"):
                # the phases end where they were planned, whatever the new duration
                self.trainer = dataclasses.replace(self.trainer, schedule=(
                    self.trainer.schedule.with_ends(meta["schedule_ends"])))
                say("  the schedule's phases end where the run planned them: "
                    + ", ".join(f"{x:,.0f}" for x in meta["schedule_ends"])
                    + " timesteps per member")
            self.done = int(meta["iteration"])
            if self.done >= self.total:
                raise UsageError(f"{self.checkpoints.directory / str(step)} is at iteration "
                                 f"{self.done} and this run asks for {self.total}; train "
                                 f"longer, e.g. --iterations {self.done + self.total}")
            dropped = truncate_records(p.run_dir / POPULATION_FILE, step)
            log = p.run_dir / POPULATION_FILE
            for records in read_records(log) if log.exists() else ():
                self.note_best(records)
            say(f"start: resumed from {self.checkpoints.directory / str(step)}; interval "
                f"{step}, iteration {self.done} per member"
                + (f"; {POPULATION_FILE}: dropped {dropped} record(s) after it" if dropped
                   else ""))
        elif self.founders is not None:
            self.pop = self.founders(self.trainer)
            self.done = 0
        else:  # walk-forward members: every one at the config's hyperparameters
            self.pop = init_population(self.trainer, jax.random.key(self.cfg.run.seed),
                                       self.pbt.members,
                                       hparams={} if self.pbt.folds else None,
                                       env_params=self.env_params, env_axes=self.env_axes)
            self.done = 0
        self.placement = shardings(self.trainer)
        kept_at = best_shardings(self.trainer)
        self.keep_best = jax.jit(keep_best, out_shardings=kept_at, donate_argnums=0)
        if self.kept is None:  # new, or a checkpoint from before they were kept
            self.kept = jax.jit(init_best, out_shardings=kept_at)(self.pop)
        self.exploit_explore = make_exploit_explore(self.pbt.fraction,
                                                    placement=self.placement)
        whole = parallel.replicated(p.mesh)
        self.take = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree),
                            out_shardings=whole)
        self.init_s = time.perf_counter() - self.t_start

    def record_start(self) -> None:
        """config.json, market.json, env.json and population.json written."""
        from jaxtrade.data.market import MARKET_FILE, market_record
        from jaxtrade.rows import ENV_FILE

        run_dir, env = self.plan.run_dir, self.plan.env
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfgmod.to_dict(self.cfg), indent=2)
                                             + "\n")
        # A walk-forward run's: the whole market's (its split is fold 1's, its test range
        # every fold's), though its devices hold the bars before the last fold only.
        market = (self.pbt.fold_record["market"] if self.pbt.fold_record is not None
                  else market_record(self.plan.market))
        (run_dir / MARKET_FILE).write_text(json.dumps(market, indent=2) + "\n")
        layout = env.obs_layout
        (run_dir / ENV_FILE).write_text(json.dumps({
            "name": env.name, "action_names": list(env.action_names),
            "num_actions": env.num_actions, "obs_dim": env.obs_dim,
            "obs_layout": None if layout is None else dataclasses.asdict(layout),
        }, indent=2) + "\n")
        (run_dir / SETTINGS_FILE).write_text(json.dumps(self.pbt.record(), indent=2) + "\n")
        if self.pbt.fold_record is not None:
            from jaxtrade.walk_forward import WALK_FORWARD_FILE

            folds = {k: v for k, v in self.pbt.fold_record.items() if k != "market"}
            (run_dir / WALK_FORWARD_FILE).write_text(json.dumps(folds, indent=2) + "\n")

    def program(self, k: int):
        """The population program of k iterations, compiled on first use."""
        from jaxtrade.population import train_population

        if k not in self.compiled:
            with self.console.timed(f"compiling {k} iteration(s) x {self.pbt.members} members "
                                    f"per call") as timed:
                fn = train_population(self.trainer, k, self.env_axes)
                self.compiled[k] = fn.lower(self.pop, self.env_params).compile()
            self.compile_s += timed.seconds
        return self.compiled[k]

    def compile_evaluation(self) -> None:
        with self.console.timed("compiling evaluation") as timed:
            if self.batch_evaluation and not self.pbt.folds:
                self.members_evaluator = self.trainer.env.make_members_evaluator(
                    self.trainer.network, self.cfg.env, self.cfg.run.seed,
                    self.pop.members.params, self.pbt.members)
            like = self.take(self.pop.members.params, jnp.int32(0))
            if self.members_evaluator is not None:
                self.evaluator = self.members_evaluator
            elif self.pbt.folds:  # each member's on its fold's validation slice
                from jaxtrade.walk_forward import make_fold_evaluators

                self.evaluator = make_fold_evaluators(
                    self.trainer.network, self.trainer.env, self.cfg.env, self.pbt.folds,
                    self.plan.market.bars_per_year, self.cfg.run.seed, like)
            else:
                self.evaluator = self.trainer.env.make_evaluator(
                    self.trainer.network, self.cfg.env, self.cfg.run.seed, like)
        self.compile_s += timed.seconds

    # ------------------------------------------------------------------ one interval
    def evaluate(self, metrics) -> tuple[np.ndarray, list[dict], list[dict]]:
        """Every member's validation walk of its parameters (the single run's walk: all
        members in one call where the env offers it, else one member at a time) ->
        (scores float32 [N], val metrics per member, the last training row per member)."""
        from jaxtrade.engine.run import metrics_row

        n, k = self.pbt.members, jax.tree.leaves(metrics)[0].shape[0]
        scores, vals = np.full((n,), np.nan, np.float32), []
        rows = [metrics_row(jax.tree.map(lambda v, i=i: v[:, i], metrics), k - 1)
                for i in range(n)]
        if self.members_evaluator is not None:
            both = jax.device_get(self.members_evaluator(self.pop.members.params, rows))
            outs = [{key: v if isinstance(v, str) else np.asarray(v)[i]
                     for key, v in both.items()} for i in range(n)]
        else:
            outs = [jax.device_get((self.evaluator[i] if self.pbt.folds else self.evaluator)(
                self.take(self.pop.members.params, jnp.int32(i)), rows[i])) for i in range(n)]
        for i, out in enumerate(outs):
            val = {key: np.asarray(v).tolist() for key, v in out.items()}
            scores[i] = float(val["score"]) if np.ndim(val["score"]) == 0 else np.nan
            vals.append(val)
        return scores, vals, rows

    def interval(self, log) -> list[dict]:
        """Train, score, exploit/explore, log and save one interval; its records."""
        from jaxtrade.population import close_interval, finite_members, lineage_records

        k = min(self.pbt.interval, self.total - self.done)
        parts = (self.segments(self.trainer, k) if self.segments is not None
                 else [(k, self.env_params)])
        for k_i, _ in parts:
            if k_i:
                self.program(k_i)  # compiled before the clock starts
        t0 = time.perf_counter()
        metrics = []
        for k_i, env_params in parts:
            if k_i:
                self.pop, m = self.program(k_i)(self.pop, env_params)
                metrics.append(jax.device_get(m))
        metrics = jax.tree.map(lambda *xs: np.concatenate(xs), *metrics)
        dt_s = time.perf_counter() - t0
        self.train_s += dt_s
        self.done += k
        t1 = time.perf_counter()
        scores, vals, rows = self.evaluate(metrics)
        self.eval_s += time.perf_counter() - t1
        healthy = finite_members(metrics)
        before = self.pop
        # each slot's best-scored state (a broken member's score is not finite: never kept)
        self.kept = self.keep_best(self.kept, before, jnp.asarray(
            np.where(np.asarray(healthy), scores, np.nan), jnp.float32))
        # Walk-forward members never exploit one another (their data differ).
        if not self.pbt.folds and (self.exploit_last or self.done < self.total):
            self.pop = self.exploit_explore(before, jnp.asarray(scores), healthy)
        else:
            self.pop = jax.device_put(close_interval(before, jnp.asarray(scores), healthy),
                                      self.placement)
        records = lineage_records(before, self.pop, scores, self.steps)
        for rec, val, row in zip(records, vals, rows, strict=True):
            rec["val"] = {key: (_number(v) if isinstance(v, float) else v)
                          for key, v in val.items()}
            rec["train"] = {key: _number(row[key]) for key in TRAIN_KEYS if key in row}
        for rec in records:
            log.write(json.dumps(rec) + "\n")
        log.flush()
        self.report(records, k * self.pbt.members * self.steps / dt_s)
        if all(r["nonfinite"] for r in records):  # no member left to copy from
            self.status = "diverged"
            self.message = (f"interval {records[0]['interval']}: every member's score, "
                            f"metrics or parameters became non-finite; stopped before saving "
                            f"it (try lower learning rates or --max-grad-norm)")
            return records
        self.checkpoints.save(self.pop, int(records[0]["interval"]), {
            "format": FORMAT, "interval": int(records[0]["interval"]),
            "iteration": self.done, "members": self.pbt.members,
            "rng_impl": str(jax.random.key_impl(self.pop.key)),
            "config": cfgmod.to_dict(self.cfg), "pbt": self.pbt.record(),
            **({"schedule_ends": [float(x) for x in jax.device_get(self.trainer.schedule.ends)]}
               if self.trainer.schedule is not None else {})}, best=self.kept)
        return records

    def note_best(self, records: list[dict]) -> dict | None:
        """The interval's best-scored record (None: none scored); the run's best updated
        (not for walk-forward folds, whose scores are on different slices: each fold's
        latest score is kept instead)."""
        if self.pbt.folds:
            self.fold_scores = [r["score"] for r in sorted(records, key=lambda r: r["slot"])]
        scored = [r for r in records if r["score"] is not None]
        best = max(scored, key=lambda r: r["score"]) if scored else None
        if best is not None and not self.pbt.folds and (
                self.best is None or best["score"] > self.best["score"]):
            self.best = {"id": best["id"], "slot": best["slot"], "score": best["score"],
                         "interval": best["interval"], "timesteps": best["timesteps"],
                         "hparams": best["hparams"]}
        return best

    def report(self, records: list[dict], sps: float) -> None:
        """The interval's progress line, and one line per copy."""
        line = self.console.line
        interval = records[0]["interval"]
        n_intervals = math.ceil(self.total / self.pbt.interval)
        scored = [r for r in records if r["score"] is not None]
        best = self.note_best(records)
        med = float(np.median([r["score"] for r in scored])) if scored else float("nan")
        rets = [r["train"].get("episode_return_mean") for r in records]
        rets = [x for x in rets if x is not None]
        if self.pbt.folds:  # each fold on its own slice: no best across them
            val = "val " + " ".join("n/a" if s is None else f"{s:+.2f}"
                                    for s in self.fold_scores) + " (folds 1..K)"
        else:
            val = ("val best " + (f"{best['score']:+.2f} (id {best['id']})" if best else "n/a")
                   + f" median {med:+.2f}")
        line(f"interval {interval:>3}/{n_intervals} | it {self.done:>5}/{self.total} | steps "
             f"{self.done * self.steps:>11,}/member | sps {sps:>9,.0f} | {val} | ret best "
             f"{max(rets, default=float('nan')):+.4f}")
        for r in records:
            if (copy := r["replaced_by"]) is not None:
                why = " (non-finite)" if r["nonfinite"] else ""
                changed = ", ".join(
                    f"{k} {records[copy['source_slot']]['hparams'][k]:.3g}->{v:.3g}"
                    for k, v in copy["hparams"].items()
                    if v != records[copy["source_slot"]]["hparams"][k])
                score = "n/a" if r["score"] is None else f"{r['score']:+.2f}"
                line(f"  pbt: slot {r['slot']} id {r['id']} (score {score}){why} <- id "
                     f"{copy['id']}, a copy of id {copy['parent']}" + (f": {changed}"
                                                                       if changed else ""))

    # ------------------------------------------------------------------ the loop
    def run(self, interrupts=None) -> dict:
        """The intervals to the end (or a signal); summary.json. `interrupts`: an entered
        `Interrupts` of the caller's (default: one of this run's own)."""
        from jaxtrade.engine.signals import Interrupts

        interrupted = None
        own = Interrupts("stopping after the current interval; press Ctrl+C again to exit "
                         "now") if interrupts is None else contextlib.nullcontext(interrupts)
        with own as interrupts, contextlib.closing(self.checkpoints):
            if self.segments is None:  # (segments compile their own lengths when met)
                self.program(min(self.pbt.interval, self.total - self.done))
            if self.evaluator is None:
                self.compile_evaluation()
            with open(self.plan.run_dir / POPULATION_FILE, "a") as log:
                while (self.done < self.total and not interrupts.requested
                       and self.status == "completed"):
                    self.interval(log)
            if self.status == "completed" and self.done < self.total:
                self.status, interrupted = "interrupted", interrupts.signal_name
        summary = self.summary()
        summary["signal"] = interrupted
        (self.plan.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def summary(self) -> dict:
        trained = self.train_s and self.done * self.steps
        return {
            "status": self.status,
            "message": self.message,
            "members": self.pbt.members,
            "interval_iterations": self.pbt.interval,
            "fraction": self.pbt.fraction,
            "iterations": self.done,
            "timesteps_per_member": self.done * self.steps,
            "timesteps": self.done * self.steps * self.pbt.members,
            "intervals": int(jax.device_get(self.pop.interval)),
            "best": self.best,  # the best validation score of any member at any interval
            **({"fold_scores": self.fold_scores} if self.pbt.folds else {}),
            "compile_s": self.compile_s,
            "init_s": self.init_s,
            "train_s": self.train_s,
            "eval_s": self.eval_s,
            "wall_s": time.perf_counter() - self.t_start,
            "sps": trained * self.pbt.members / self.train_s if self.train_s else 0.0,
            "device": parallel.describe(self.plan.mesh),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "checkpoint": self.last_checkpoint(),
        }

    def last_checkpoint(self) -> str | None:
        """The population checkpoint of the last interval, if it was saved (a run stopped
        before its first interval, or one whose last interval diverged, saved none)."""
        path = self.checkpoints.directory / str(int(jax.device_get(self.pop.interval)))
        return str(path) if path.exists() else None


class _BannerConsole:
    """The single run's banner as a population run says it: its members, not checkpoints,
    are ranked by the validation score, and a schedule's phases end as planned (host-only;
    wraps a `Console`)."""

    def __init__(self, console, fold_record: dict | None = None):
        self.console, self.fold_record = console, fold_record

    def say(self, *parts, **kw) -> None:
        parts = tuple(str(x).replace("; checkpoints ranked by val_score",
                                     "; members ranked by val_score for exploit/explore")
                      for x in parts)
        if parts and parts[0].startswith("  a phase ends early"):
            return  # the population's lines say how its phases end
        if self.fold_record is not None and parts:  # the folds' lines say these instead
            if parts[0].startswith(("eval: ", "test: ")):
                return
            if parts[0].startswith("market: "):
                parts = (f"market: {self.fold_record['market_line']}", *parts[1:])
        self.console.say(*parts, **kw)

    def __getattr__(self, name):
        return getattr(self.console, name)


def print_population_banner(p, pbt: PbtSettings, console) -> None:
    """The population's lines after the single run's banner."""
    from jaxtrade import memory
    from jaxtrade.population import BOUNDS, quantile_size

    say, pc = console.say, p.cfg.ppo
    q = quantile_size(pbt.members, pbt.fraction)
    n_intervals = math.ceil(p.total_iters / pbt.interval)
    shared = pbt.members // parallel.member_groups(p.mesh)  # members per device
    say(f"population: {pbt.members} member{'s' if pbt.members > 1 else ''} x {pc.n_envs:,} envs = "
        f"{pbt.members * pc.n_envs:,} envs in one program on {parallel.describe(p.mesh)}; "
        f"memory about {memory.format_bytes(shared * p.sizing.estimate.per_device_bytes)}"
        f" per device ({shared} member{'s' if shared > 1 else ''} x the estimate above)")
    if pbt.fold_record is not None:
        from jaxtrade.walk_forward import banner_lines

        say(f"validation: every {pbt.interval} iterations ({pbt.interval * p.steps_per_iter:,} "
            f"timesteps per member), {n_intervals} intervals; each member on its fold's "
            f"validation slice")
        for line in banner_lines(pbt.fold_record):
            say(line)
    else:
        say(f"pbt: every {pbt.interval} iterations ({pbt.interval * p.steps_per_iter:,} "
            f"timesteps per member), {n_intervals} intervals; members scored on the validation "
            f"data, the bottom {q} take perturbed copies of the top {q}"
            + ("" if q else " (one member: nothing to exploit)"))
        say(f"  perturbed: {', '.join(BOUNDS)} (x0.8 or x1.2 within bounds)")
        if p.cfg.run.schedule is not None:
            say("  scheduled hyperparameters: a member's value / the config's is its factor "
                "on the schedule; phases end as planned (no --phase-transitions in a "
                "population)")
    say(f"in all: {p.total_iters:,} iterations x {pbt.members} members = "
        f"{p.total_iters * p.steps_per_iter * pbt.members:,} timesteps -> "
        f"{p.run_dir}")
    sys.stdout.flush()


def archive_members(directory: str, run_dir: Path) -> None:
    """--archive, once the run has completed (its last checkpoint written): each slot's
    best-scored model (the checkpoint's `best`: the state validation chose, as a single
    run's best checkpoint; a member's last state may score far below an earlier one) into
    the archive, as `python -m jaxtrade.archive add` would (`jaxtrade.archive.
    add_population`); a line each; a failure is a warning (the run itself completed)."""
    from jaxtrade import archive

    try:
        entries = archive.add_population(archive.Archive(directory), run_dir)
    except archive.ArchiveError as e:
        print(f"warning: nothing archived: {e}", file=sys.stderr)
        return
    for e in entries:
        print(f"archived {e['id']} in {directory}: member {e['source']['member']} at "
              f"interval {e['source']['interval']}, val score {e['val_score']:+.2f}")
    print(f"evaluate one on the test data: python -m jaxtrade.evaluate --run-dir "
          f"{directory}/models/<id> (its deflated Sharpe counts every member's every "
          f"validation as a trial)")


def main(argv: list[str] | None = None) -> int:
    from jaxtrade import checkpoint as ckpt
    from jaxtrade.engine.console import Console
    from jaxtrade.engine.run import print_banner

    args = build_parser().parse_args(argv)
    try:
        p, pbt, resume = plan(args)
        # The validation walk happens at every interval: the banner's eval line says so.
        p = dataclasses.replace(p, eval_every=pbt.interval)
        console = Console(p.cfg.run.verbosity, True)
        print_banner(p, _BannerConsole(console, pbt.fold_record))
        print_population_banner(p, pbt, console)
        run = PopulationRun(p, pbt, resume, console)
        run.build()
        run.record_start()
        summary = run.run()
    except (cfgmod.ConfigError, DataError, UsageError, ckpt.CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    best = summary["best"]
    if summary["status"] == "diverged":
        print(f"error: {summary['message']}", file=sys.stderr)
        return 1
    if summary["status"] == "interrupted":
        if summary["checkpoint"] is None:
            print(f"interrupted before the first interval ended: nothing was saved; start "
                  f"again with the same flags (--run-dir {p.run_dir} is free)")
            return 0
        print(f"interrupted after {summary['iterations']:,} of {p.total_iters:,} iterations; "
              f"checkpoint {summary['checkpoint']}")
        print(f"resume with: python -m jaxtrade.population --run-dir {p.run_dir} --resume")
        return 0
    if best is not None:
        print(f"best: id {best['id']} (slot {best['slot']}) by val_score {best['score']:+.2f} "
              f"at interval {best['interval']}")
    if pbt.walk_forward:  # scores on different slices: no best across folds
        scores = ", ".join(f"fold {k} " + ("n/a" if v is None else f"{v:+.2f}")
                           for k, v in enumerate(summary.get("fold_scores", []), 1))
        print(f"last val_score per fold, each on its own validation slice (they do not "
              f"compare across folds): {scores}; the out-of-sample folds: python -m "
              f"jaxtrade.evaluate --run-dir {p.run_dir}")
    if args.archive:
        archive_members(args.archive, p.run_dir)
    print(f"done: {summary['iterations']:,} iterations x {pbt.members} members, "
          f"{summary['timesteps']:,} timesteps in {summary['wall_s']:.1f}s (compile "
          f"{summary['compile_s']:.1f}s, {summary['sps']:,.0f} steps/s); run dir {p.run_dir}")
    return 0

"""The host loop of a training run, in named steps.

`train(request, options)` plans the run (`prepare`), prints the banner before anything is
placed or compiled, builds or restores the state, then calls the compiled program k
iterations at a time; between calls it logs, walks the validation range on its cadence,
tracks the best checkpoint, saves, and checks for signals, and at the end it writes
`summary.json`. Any env of the registry and any network kind run through it unchanged.
"""

from __future__ import annotations

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
from jaxtrade.data.market import MARKET_FILE, market_record
from jaxtrade.engine.console import Console, eval_line, log_line, verbose_lines
from jaxtrade.engine.signals import Interrupts
from jaxtrade.engine.start import (
    Sizing,
    Start,
    StartRequest,
    check_new_run_dir,
    eval_interval,
    load_run_market,
    plan_start,
    resolve_worlds,
    size_n_envs,
)
from jaxtrade.rows import ENV_FILE
from jaxtrade.watchdog import Watchdog

# Per-iteration metrics that must stay finite; the first that is not stops the run.
# The market regimes whose validation returns are logged when a schedule's phase ends.
REGIMES = ("bull", "bear", "high_vol", "low_vol")
PHASES_FILE = "phases.jsonl"  # one record per phase change of a run that follows a schedule

FINITE_KEYS = (
    "policy_loss", "value_loss", "entropy", "approx_kl", "clip_frac", "explained_variance",
    "actor_grad_norm", "critic_grad_norm", "episode_return_mean",
)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How to run, beyond the config: the CLI's device, memory and restart flags."""

    devices: int | None = None  # --devices: the first N devices (None: all)
    max_vram_gb: float | None = None  # --max-vram
    preset: str | None = None  # --high-vram / --low-vram (their memory budgets)
    eval_every_given: bool = False  # --eval-every was given (a bad one is an error)
    on_mismatch: str | None = None  # --on-mismatch for checkpoints of another architecture
    lr_multiplier: float | None = None  # --lr-multiplier (already in the config; for the log)
    members_per_device: int = 1  # a population's members sharing each device's memory
    fixed_n_envs: bool = False  # a state to be restored fixes n_envs (a population resume)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything decided before anything is placed on a device."""

    cfg: cfgmod.Config
    start: Start
    mesh: Any
    market: Any  # without its test range
    env: Any
    network: Any
    sizing: Sizing
    eval_every: int
    run_dir: Path

    @property
    def steps_per_iter(self) -> int:
        return self.cfg.ppo.n_envs * self.cfg.ppo.n_steps

    @property
    def total_iters(self) -> int:
        return cfgmod.total_iterations(self.cfg)


@dataclasses.dataclass(frozen=True)
class Result:
    """How the run ended, for the CLI's last lines."""

    status: str  # completed | stopped_early | interrupted | diverged
    message: str | None
    summary: dict
    selection: dict
    signal_name: str | None
    total_iters: int
    run_dir: Path


def prepare(request: StartRequest, options: RunOptions) -> Plan:
    """Plans the run: start point, config, market, env, network, n_envs for memory."""
    from jaxtrade.envs import make_env
    from jaxtrade.trainer import build_network

    mesh = parallel.make_mesh(options.devices)
    n_devices = mesh.size
    start = plan_start(request, jax.default_backend(), n_devices)
    max_vram = options.max_vram_gb
    if max_vram is None and options.preset:
        max_vram = cfgmod.PRESET_MAX_VRAM_GB.get(options.preset)
    cfg = resolve_worlds(start.cfg, jax.default_backend(), max_vram)
    market = load_run_market(cfg)
    if start.source is not None and reads_asset_flags(start.source.run_dir):
        market = market.with_all_assets()  # a model trained on worlds, on one market
    env = make_env(cfg.env.name, market)  # the name was checked by the config's rule
    eval_every = eval_interval(cfg, env, given=options.eval_every_given)
    sizing = size_n_envs(cfg, env, n_devices, max_vram, given=start.n_envs_given,
                         fixed=start.mode in ("resume", "checkpoint") or options.fixed_n_envs,
                         share=options.members_per_device)
    cfg = sizing.cfg  # validated when planned; sizing keeps n_envs a valid multiple
    run_dir = Path(cfg.run.run_dir)
    if start.mode != "resume":
        check_new_run_dir(run_dir)
    return Plan(cfg, start, mesh, market, env, build_network(cfg, env), sizing, eval_every,
                run_dir)


def reads_asset_flags(run_dir: Path) -> bool:
    """Whether the run in `run_dir` trained with a flag per asset saying it exists (a pool
    of worlds: env.json's obs_layout has a mask_token); a run started from its weights
    observes its market the same way."""
    from jaxtrade.policy import read_env_record

    record = read_env_record(run_dir)
    return record is not None and record[2] is not None and record[2].mask_token is not None


def first_phase(plan: Plan):
    """(config, network, note) of the program the run starts with: the run's own, or with a
    schedule its first phase's shape settings (epochs, minibatches, transformer size; a
    resumed run's, the phase it goes on in), which the banner's model and ppo lines show,
    the note naming the phase."""
    cfg = plan.cfg
    if cfg.run.schedule is None:
        return cfg, plan.network, ""
    from jaxtrade import schedule
    from jaxtrade.trainer import build_network

    sched = schedule.load(cfg.run.schedule)
    first = sched.phase_of_iteration(0, plan.steps_per_iter, cfg.run.schedule_scale,
                                     plan.total_iters * plan.steps_per_iter)
    source = plan.start.source
    record = (source.meta.get("schedule") or {}) if source is not None else {}
    if plan.start.mode == "resume" and record.get("ends"):  # where the resumed run goes on
        first = schedule.phase_index(record["ends"], source.step * plan.steps_per_iter)
    shown, applied, _ = schedule.phase_config(sched, cfg, first, parallel.data_size(plan.mesh))
    if not applied:
        return cfg, plan.network, ""
    return shown, build_network(shown, plan.env), f" (phase {sched.phases[first].name!r})"


def print_banner(plan: Plan, console: Console) -> None:
    """Devices, market, env, model, batch, memory, run, evaluation and test range: printed
    and flushed before anything is placed on a device or compiled."""
    from jaxtrade import memory
    from jaxtrade.trainer import count_network_params

    cfg, env, market, sizing, say = plan.cfg, plan.env, plan.market, plan.sizing, console.say
    pc, n_devices = cfg.ppo, parallel.data_size(plan.mesh)  # one run's (member's) devices
    say(f"jaxtrade {__version__} | jax {jax.__version__} | {parallel.describe(plan.mesh)}, "
        f"{jax.default_backend()} | precision {np.dtype(plan.network.dtype).name}")
    if (worlds := market.worlds) is not None:
        prior, val = worlds.prior, market.validation_pool
        say(f"market: procedural worlds (seed {worlds.seed}): {worlds.n_worlds:,} training "
            f"worlds of {market.world_bars} bars, {prior.n_assets[0]}-{prior.n_assets[1]} "
            f"assets (padded to {market.n_assets}), "
            f"{memory.format_bytes(memory.tree_bytes(market.data))} on each device; "
            f"{val.n_worlds} validation worlds, {worlds.test_worlds} test worlds")
        say("  " + (f"a fresh training pool every {worlds.refresh_every} iterations "
                    f"(generation g: train worlds g x {worlds.n_worlds:,} ..)"
                    if worlds.refresh_every else
                    "the same training pool throughout (--refresh-every K for fresh ones)"))
    else:
        say(f"market: {market.describe()}")
        for line in market.report:
            say(f"  {line}")
    say(f"env: {env.name}, episodes of {cfg.env.episode_length} steps")
    for line in env.notes():
        say(f"  {line}")
    shown, network, phase_note = first_phase(plan)
    say(f"model: {network.describe()}, {count_network_params(shown, env):,} parameters "
        f"(obs {env.obs_dim}, {env.num_actions} actions){phase_note}")
    say(f"ppo: {pc.n_envs:,} envs x {pc.n_steps} steps = {plan.steps_per_iter:,} "
        f"steps/iteration, {shown.ppo.n_minibatches} minibatches, {shown.ppo.ppo_epochs} "
        f"joint + {shown.ppo.critic_epochs} critic epochs{phase_note}")
    say(f"memory: estimated {memory.format_bytes(sizing.estimate.per_device_bytes)} per device "
        f"({pc.n_envs // n_devices:,} envs each) of a {memory.format_bytes(sizing.budget)} "
        f"budget ({sizing.budget_source})")
    if sizing.note:
        say(f"  {sizing.note}")
    if sizing.warning:
        console.warn(sizing.warning)
    say(f"run: {plan.total_iters:,} iterations = {plan.total_iters * plan.steps_per_iter:,} "
        f"timesteps -> {plan.run_dir}")
    if cfg.run.schedule is not None:
        from jaxtrade import schedule

        for line in schedule.load(cfg.run.schedule).describe(
                cfg, n_devices, cfg.run.schedule_scale, plan.total_iters):
            say(line)
    if plan.eval_every:
        say(f"eval: {env.describe_evaluation(cfg.env)} every {plan.eval_every} iterations and "
            f"at the end; checkpoints ranked by val_score"
            + (f"; stop after {cfg.run.early_stop} walks without a new best"
               if cfg.run.early_stop else ""))
    else:
        say("eval: off" + ("" if env.validation_unavailable() is None
                           else " (no validation range)"))
    test = market.span("test")
    if market.worlds is not None:
        say(f"test: {market.worlds.test_worlds} test worlds, a seed stream of their own: "
            f"training never generates them; python -m jaxtrade.evaluate reports on them")
    else:
        unit = getattr(market, "unit", "bars")  # a funding market counts hours
        say("test: " + (f"{test['bars']} {unit} ({test['start']} .. {test['end']}) withheld: "
                        f"training never reads them; python -m jaxtrade.evaluate reports on "
                        f"them" if test else "none (every bar trains or validates)"))
    sys.stdout.flush()


def first_non_finite(row: dict) -> str | None:
    """Name of the first quantity that is not finite, or None."""
    if not row["params_finite"]:
        return "the network parameters"
    for k in FINITE_KEYS:
        if k in row and not math.isfinite(row[k]):
            return f"{k} ({row[k]})"
    return None


def metrics_row(metrics: dict, i: int) -> dict:
    """Iteration `i` of a call's stacked metrics as JSON values."""
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


def train(request: StartRequest, options: RunOptions) -> Result:
    """A whole run: plan, banner, state, the loop, the summary (see the module docstring)."""
    plan = prepare(request, options)
    where = "" if jax.process_count() == 1 else f"process {jax.process_index()}: "
    console = Console(plan.cfg.run.verbosity, parallel.is_primary(), where)
    print_banner(plan, console)
    session = Session(plan, options, console)
    session.build()
    session.record_start()
    return session.run()


class Session:
    """One run's state between compiled calls; each method is one step of the host loop."""

    def __init__(self, plan: Plan, options: RunOptions, console: Console):
        self.plan, self.options, self.console = plan, options, console
        self.cfg = plan.cfg
        self.primary = parallel.is_primary()
        # Every blocking step from here on says what it waits for when it takes over a minute.
        self.watchdog = Watchdog(console.notice)
        console.start_progress(plan.total_iters * plan.steps_per_iter)
        n = plan.mesh.size
        self.devices = f"{n} device{'s' if n > 1 else ''}"
        self.mode = plan.start.mode
        self.status, self.message = "completed", None
        self.train_s = self.compile_s = self.refresh_s = 0.0
        self.compiled: dict[int, Any] = {}
        self.worlds = plan.market.worlds  # a worlds run's RunWorlds, else None
        self.generation = 0  # of the training pool the trainer's env params hold
        self.peak: dict[str, Any] = {}
        self.evaluator = None
        self.schedule = None  # the run's jaxtrade.schedule.Schedule, if it follows one
        self.phase_ends: list[float] = []  # its phases' ends in timesteps (some early)
        self.plateau = None  # the current phase's jaxtrade.transitions.PlateauState
        self.ending: str | None = None  # why the current phase ends early, once it does
        self.tagged: list[int] = []  # iterations of the checkpoints that end a phase
        self.table = None  # the schedule table the compiled calls get
        # --adjust rules: factors on scheduled hyperparameters, shape settings changed, the
        # previous validation's row (`jaxtrade.adjust`)
        self.factors: dict[str, float] = {}
        self.reshaped: dict[str, int] = {}
        self.previous_val: dict | None = None
        if self.cfg.run.schedule is not None:
            from jaxtrade import schedule

            self.schedule = schedule.load(self.cfg.run.schedule)
            self.phase_ends = self.schedule.ends(self.cfg.run.schedule_scale,
                                                 plan.total_iters * plan.steps_per_iter)

    # ---------------------------------------------------------------- schedule phases
    def phase_of(self, iteration: int) -> int | None:
        """The schedule's phase of the iteration after `iteration` done (None: no schedule)."""
        if self.schedule is None:
            return None
        from jaxtrade.schedule import phase_index

        return phase_index(self.phase_ends, iteration * self.plan.steps_per_iter)

    def phase_starts(self) -> list[int]:
        """The first iteration of each phase after the first that starts within the run."""
        from jaxtrade.schedule import phase_starts

        return [i for i, _ in phase_starts(self.phase_ends, self.plan.steps_per_iter,
                                           self.plan.total_iters)]

    def schedule_record(self) -> dict | None:
        """The schedule's state for a checkpoint's metadata: phase ends (as they came to
        be), the current phase's plateau state, why it ends if it does, the tagged
        checkpoints."""
        if self.schedule is None:
            return None
        return {"ends": list(self.phase_ends), "phase": self.phase,
                "plateau": None if self.plateau is None else self.plateau.to_dict(),
                "ending": self.ending, "tagged": list(self.tagged),
                "factors": dict(self.factors)}

    def restore_schedule(self, record: dict | None, saved: cfgmod.Config) -> None:
        """The schedule state (`schedule_record`) of the checkpoint a run starts from: a
        resumed run decides as the run it continues would have; a new run from the whole
        state of one that followed the same schedule keeps its phase ends."""
        from jaxtrade.transitions import PlateauState

        if (self.schedule is None or not record or len(record["ends"]) != len(self.phase_ends)
                or (saved.run.schedule, saved.run.schedule_scale)
                != (self.cfg.run.schedule, self.cfg.run.schedule_scale)):
            return  # another schedule: its planned ends stand
        self.phase_ends = [float(e) for e in record["ends"]]
        if self.mode != "resume":
            return
        self.factors = {k: float(v) for k, v in record.get("factors", {}).items()}
        self.ending = record.get("ending")
        self.tagged = [int(i) for i in record.get("tagged", [])]
        if record.get("plateau") is not None:
            self.plateau = PlateauState.from_dict(record["plateau"])

    def update_table(self) -> None:
        """The table for the next calls: the trainer's, with the run's phase ends and the
        adjustment rules' factors."""
        table = self.trainer.schedule
        self.table = (None if table is None
                      else table.with_ends(self.phase_ends).with_factors(self.factors))

    def phase_bounds(self, phase: int) -> tuple[float, float]:
        """(start, end) of `phase` in timesteps."""
        return (0.0 if phase == 0 else self.phase_ends[phase - 1]), self.phase_ends[phase]

    def transition(self, rows: list[dict]) -> None:
        """At a validation walk: the current phase's plateau rule observes the score; when
        it fires (and the phase is not the last), the phase ends with this iteration: its
        end moves here, and the next iteration starts the next phase (`enter_phase`)."""
        from jaxtrade.checkpoint import VAL_SCORE_KEY
        from jaxtrade.transitions import observe, start_phase

        if (self.schedule is None or self.cfg.run.phase_transitions == "off" or not rows
                or VAL_SCORE_KEY not in rows[-1] or self.ending is not None):
            return
        phase, t = self.phase, self.done_iters * self.plan.steps_per_iter
        start, end = self.phase_bounds(phase)
        if self.plateau is None:
            self.plateau = start_phase(start, end)
        rule = self.schedule.rule(phase, self.cfg.run.schedule_scale)
        row = rows[-1]
        self.plateau = observe(rule, self.plateau, t, float(row[VAL_SCORE_KEY]), row)
        if (self.plateau.fired is not None and phase < len(self.phase_ends) - 1
                and start < t < end):
            self.ending = self.plateau.fired
            self.phase_ends[phase] = float(t)
            self.update_table()

    def phase_cfg(self, phase: int | None):
        """(config of phase `phase`'s program, the shape settings it applied); the run's own
        config and none without a schedule."""
        from jaxtrade.config import with_values

        if phase is None:
            cfg, applied = self.cfg, {}
        else:
            from jaxtrade.schedule import phase_config

            cfg, applied = phase_config(self.schedule, self.cfg, phase, self.plan.mesh.size)[:2]
        return (with_values(cfg, **self.reshaped) if self.reshaped else cfg), applied

    def enter_phase(self) -> None:
        """At a phase boundary: a checkpoint tagged with the phase that ends, a line in
        phases.jsonl and on the console (why it ended; the validation by market regime);
        fresh optimizer moments when it ended on its rule and --reset-optimizer-on-plateau;
        and when the next phase's shape settings differ, its program, the state carried
        over (a grown transformer's parameters by `jaxtrade.networks.grow`, fresh optimizer
        moments and memory for them), compiled here."""
        from jaxtrade import ppo
        from jaxtrade.schedule import describe_settings
        from jaxtrade.transitions import start_phase

        phase = self.phase_of(self.done_iters)
        if phase == self.phase:
            return
        ended, reason = self.phase, self.ending or "end"
        if self.done_iters not in self.tagged:
            self.tagged.append(self.done_iters)
        self.save(phase=self.schedule.phases[ended].name)
        self.record_phase(ended, phase, reason)
        self.phase, self.ending = phase, None
        self.plateau = start_phase(*self.phase_bounds(phase))
        if reason != "end" and self.cfg.run.reset_optimizer_on_plateau:
            actor, critic = ppo.split_params(self.state.params)
            state = self.state.replace(actor_opt=self.trainer.actor_tx.init(actor),
                                       critic_opt=self.trainer.critic_tx.init(critic))
            self.state = jax.block_until_ready(self.trainer.place(state))
            self.console.line("optimizer: fresh Adam moments for the next phase "
                              "(--reset-optimizer-on-plateau)")
        new_cfg, applied = self.phase_cfg(phase)
        if new_cfg != self.train_cfg:
            self.rebuild(new_cfg, f"phase {self.schedule.phases[phase].name!r} at iteration "
                                  f"{self.done_iters + 1}: {describe_settings(applied)}")

    def rebuild(self, new_cfg: cfgmod.Config, what: str) -> None:
        """The program of `new_cfg` (other shape settings: a schedule's phase, an adjustment
        rule), the state carried over (a grown transformer's parameters by
        `jaxtrade.networks.grow`, fresh optimizer moments and memory for them), compiled
        here; the log says what and how long it took."""
        from jaxtrade import checkpoint as ckpt
        from jaxtrade import ppo
        from jaxtrade.networks import param_shapes
        from jaxtrade.trainer import make_train

        t0 = time.perf_counter()
        old, self.train_cfg = self.trainer, new_cfg
        with self.watchdog.waiting(f"building the program of {what}"):
            self.trainer = make_train(new_cfg, self.plan.market, self.plan.mesh)
            self.update_table()
            state = self.state
            if ckpt.leaf_shapes(state.params) != ckpt.leaf_shapes(
                    param_shapes(self.trainer.network)):
                from jaxtrade.networks import grow

                key = jax.random.fold_in(jax.random.key(self.cfg.run.seed), self.done_iters)
                params = grow(jax.device_get(state.params), old.network, self.trainer.network,
                              key)
                actor, critic = ppo.split_params(params)
                n_envs = self.cfg.ppo.n_envs
                state = state.replace(
                    params=params, actor_opt=self.trainer.actor_tx.init(actor),
                    critic_opt=self.trainer.critic_tx.init(critic),
                    carry=state.carry.replace(
                        hidden=self.trainer.network.initial_state(n_envs)))
            self.state = jax.block_until_ready(self.trainer.place(state))
        self.compiled.clear()
        self.console.line(f"{what}; built in {time.perf_counter() - t0:.1f}s")
        self.program(self.call_length(min(self.cfg.run.iterations_per_call,
                                           self.plan.total_iters)))
        # The greedy walk never drops out: only another network needs another evaluation.
        if self.evaluator is not None and (
                dataclasses.replace(old.config.network, dropout=0.0)
                != dataclasses.replace(new_cfg.network, dropout=0.0)):
            self.compile_evaluation()

    # ------------------------------------------------------------ adjustment rules
    def adjust_record(self) -> dict | None:
        """--adjust rules' state for a checkpoint's metadata: shape settings it changed and
        the validation row its next decision compares with (factors on scheduled values
        are the schedule's, `schedule_record`)."""
        if self.cfg.run.adjust == "off":
            return None
        return {"reshaped": dict(self.reshaped), "previous": self.previous_val}

    def applicable(self, decision):
        """`decision` with its minibatch size as the run can have it: the size of the
        n_minibatches that splits the envs over the devices nearest to the rule's (dropped
        when that is the current one), so that hparams.jsonl records what was applied."""
        from jaxtrade.schedule import minibatches_for

        pc, out = self.train_cfg.ppo, []
        for a in decision.adjustments:
            if a.key == "minibatch_size":
                m = minibatches_for(self.train_cfg, a.new, self.plan.mesh.size)
                if m == pc.n_minibatches:
                    continue
                a = dataclasses.replace(a, new=float(pc.n_envs * pc.n_steps // m))
            out.append(a)
        return dataclasses.replace(decision, adjustments=tuple(out))

    def adjust(self, rows: list[dict]) -> None:
        """--adjust rules, at a validation walk: the rule book (`jaxtrade.adjust.decide`)
        reads the row; runtime hyperparameters change for the next iteration (on a value a
        schedule drives, as a factor on the schedule's values from here on), shape settings
        through a new program; hparams.jsonl records each change and, at the next walk, its
        effect."""
        from jaxtrade import adjust
        from jaxtrade.checkpoint import VAL_SCORE_KEY
        from jaxtrade.trainer import HPARAM_NAMES, set_hparams

        if self.cfg.run.adjust == "off" or not rows or VAL_SCORE_KEY not in rows[-1]:
            return
        row, pc = rows[-1], self.train_cfg.ppo
        t = self.done_iters * self.plan.steps_per_iter
        hparams = {k: float(row[k]) for k in HPARAM_NAMES}
        batch = pc.n_envs * pc.n_steps
        shapes = {"ppo_epochs": pc.ppo_epochs, "minibatch_size": batch // pc.n_minibatches}
        decision = adjust.decide(row, hparams, shapes, t, self.cfg.run.schedule_scale,
                                 previous=self.previous_val)
        decision = self.applicable(decision)
        if self.primary:
            adjust.HparamsLog(self.plan.run_dir).record(self.done_iters, t, self.phase,
                                                        decision, row, self.previous_val)
        self.previous_val = {k: v for k, v in row.items() if isinstance(v, int | float)}
        if not decision.adjustments:
            return
        self.console.line("adjust: " + "; ".join(
            f"{a.rule}: {a.key} {a.old:.4g} -> {a.new:.4g}" for a in decision.adjustments))
        scheduled = set(self.table.keys) if self.table is not None else set()
        direct = {}
        for key, new in decision.hparams().items():
            if key in scheduled:  # the schedule drives it: scale its values from here on
                self.factors[key] = self.factors.get(key, 1.0) * new / hparams[key]
            else:
                direct[key] = new
        if direct:
            self.state = set_hparams(self.state, **direct)
        if scheduled & set(decision.hparams()):
            self.update_table()
        if reshape := decision.shapes():
            if "minibatch_size" in reshape:  # a size `applicable` made exact
                reshape["n_minibatches"] = (pc.n_envs * pc.n_steps
                                            // reshape.pop("minibatch_size"))
            self.reshaped.update(reshape)
            new_cfg, _ = self.phase_cfg(self.phase)
            if new_cfg != self.train_cfg:
                self.rebuild(new_cfg, "adjust: " + ", ".join(
                    f"{k} {v}" for k, v in reshape.items()))

    def record_phase(self, ended: int, phase: int, reason: str) -> None:
        """phases.jsonl and the console: phase `ended` ended (`reason`: "end", or why its
        rule fired) and `phase` starts after this iteration; the last validation walk's
        returns by market regime beside it, so that stability across regimes is seen."""
        names = [p.name for p in self.schedule.phases]
        row = self.last_row if "val_score" in self.last_row else {}
        regimes = {r: row[f"val_{r}_ann_mean"] for r in REGIMES
                   if f"val_{r}_ann_mean" in row}
        record = {"iteration": self.done_iters,
                  "timestep": self.done_iters * self.plan.steps_per_iter,
                  "phase": phase, "name": names[phase], "ended": names[ended],
                  "reason": reason, "val_score": row.get("val_score"),
                  "val_regimes": regimes}
        if self.primary:
            with open(self.plan.run_dir / PHASES_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        how = "as planned" if reason == "end" else f"early ({reason})"
        self.console.line(f"phase {names[ended]!r} ended {how} after iteration "
                          f"{self.done_iters}; next: {names[phase]!r}")
        if regimes:
            self.console.line("  validation by regime (annualised mean return): " + ", ".join(
                f"{r.replace('_', ' ')} {v:+.1%}" for r, v in regimes.items()))

    # ------------------------------------------------------------------------ the start
    def build(self) -> None:
        """The trainer and the starting state: restored (resume, whole-state checkpoint) or
        fresh, with weights from a checkpoint for a warm start. Errors here leave the run
        directory untouched."""
        from jaxtrade import checkpoint as ckpt
        from jaxtrade.trainer import make_train, set_hparams

        plan, source, on_mismatch = self.plan, self.plan.start.source, self.options.on_mismatch
        restoring = self.mode in ("resume", "checkpoint")
        # A schedule's phase settles the program's shapes: the phase of the first iteration,
        # or for a saved state the phase that made it (`enter_phase` switches from there).
        if restoring:
            self.restore_schedule(source.meta.get("schedule"), source.config)
            if self.mode == "resume" and (record := source.meta.get("adjust")):
                self.reshaped = {k: int(v) for k, v in record["reshaped"].items()}
                self.previous_val = record.get("previous")
        self.phase = self.phase_of(max(source.step - 1, 0) if restoring else 0)
        self.train_cfg, _ = self.phase_cfg(self.phase)
        with self.watchdog.waiting(f"placing the market on {self.devices}"):
            self.trainer = make_train(self.train_cfg, plan.market, plan.mesh)
        self.update_table()
        self.t_start = time.perf_counter()
        state = None
        building = (f"restoring {source.path} on {self.devices}" if restoring
                    else f"building the initial state on {self.devices}")
        with self.watchdog.waiting(building):
            if restoring:
                policy = "refuse" if self.mode == "resume" else (on_mismatch or "error")
                state = ckpt.restore_state(source, self.trainer, policy)
                if state is None:
                    self.mode = "fresh"
                elif hparams := ckpt.hparam_values(list(plan.start.changes)):
                    state = set_hparams(state, **hparams)
            if state is None:
                state = self.trainer.initial_state(jax.random.key(self.cfg.run.seed))
                if self.mode == "weights":
                    params = ckpt.restore_params(source, self.trainer, on_mismatch or "error")
                    if params is None:
                        self.mode = "fresh"
                    else:
                        state = ckpt.warm_start(state, params)
            self.state = jax.block_until_ready(self.trainer.place(state))
        self.init_s = time.perf_counter() - self.t_start

    def record_start(self) -> None:
        """Lineage and counters of the starting point; config.json and market.json written;
        env.json written (the env's name and action names, for plots and TensorBoard);
        metrics.jsonl cut back to a resumed checkpoint; the start lines printed."""
        from jaxtrade import checkpoint as ckpt

        source, mode, run_dir = self.plan.start.source, self.mode, self.plan.run_dir
        if mode == "resume":
            self.lineage, resumed = source.lineage, source.meta
        elif source is not None:
            self.lineage = ckpt.Lineage.child(source.lineage, str(source.run_dir.absolute()),
                                              source.step, source.meta["timesteps"], mode)
            resumed = ({k: source.meta[k] for k in ("history", "metrics")}
                       if mode == "checkpoint" else None)
        else:
            self.lineage, resumed = ckpt.Lineage(), None
        self.start_iters = source.step if mode in ("resume", "checkpoint") else 0
        self.done_iters = self.start_iters
        prior = (resumed or {}).get("metrics") or {}
        self.episodes = int(prior.get("episodes", 0))
        self.wall_offset = float(prior.get("wall_s", 0.0))
        self.last_row: dict = dict(prior)
        # Every process has checked the run directory before the first one writes there.
        parallel.barrier("jaxtrade-run-dir-checked")
        kept, dropped = self.start_iters, 0
        if mode == "resume" and self.primary:
            kept, dropped = ckpt.truncate_metrics(run_dir / "metrics.jsonl", self.start_iters)
            # A phase's record is written as the next phase starts, after the checkpoint
            # that ends it: the resumed run writes the checkpoint's own again.
            ckpt.truncate_metrics(run_dir / PHASES_FILE, self.start_iters - 1)
            if self.cfg.run.adjust != "off":
                from jaxtrade.adjust import HparamsLog

                HparamsLog(run_dir).truncate(self.start_iters)
        if self.primary:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(
                json.dumps(cfgmod.to_dict(self.cfg), indent=2) + "\n")
            (run_dir / MARKET_FILE).write_text(
                json.dumps(market_record(self.plan.market), indent=2) + "\n")
            env = self.plan.env
            layout = env.obs_layout
            (run_dir / ENV_FILE).write_text(json.dumps({
                "name": env.name, "action_names": list(env.action_names),
                "num_actions": env.num_actions, "obs_dim": env.obs_dim,
                "obs_layout": None if layout is None else dataclasses.asdict(layout),
            }, indent=2) + "\n")
        if source is not None:
            self._start_lines(kept, dropped)
        self.checkpoints = ckpt.RunCheckpoints(
            run_dir, self.cfg, lineage=self.lineage, resumed=resumed,
            evaluating=bool(self.plan.eval_every), n_devices=self.plan.mesh.size,
            keep_steps=tuple(self.tagged))
        every = (self.cfg.run.save_every, self.plan.eval_every)
        self.next_save, self.next_eval = (
            (self.done_iters // e + 1) * e if e else None for e in every)

    def _start_lines(self, kept: int, dropped: int) -> None:
        source, mode, start = self.plan.start.source, self.mode, self.plan.start
        say, pc = self.console.say, self.cfg.ppo
        how = {
            "resume": f"resumed from {source.path}"
                      + (" (saved on interrupt)" if source.meta.get("interrupted") else ""),
            "checkpoint": f"whole state of {source.path}",
            "weights": f"weights of {source.path}; fresh optimizers, envs and counters",
            "fresh": f"fresh weights (architecture differs from {source.path})",
        }[mode]
        behind = self.lineage.total_timesteps(self.start_iters * self.plan.steps_per_iter)
        say(f"start: {how}; iteration {self.start_iters}, generation "
            f"{self.lineage.generation}, {behind:,} timesteps behind the weights")
        if start.changes:
            say("changed: " + ", ".join(map(str, start.changes)))
        if self.options.lr_multiplier is not None:
            say(f"learning rates x{self.options.lr_multiplier:g}: actor {pc.actor_lr:.3g}, "
                f"critic {pc.critic_lr:.3g}")
        if mode == "resume" and dropped:
            say(f"metrics.jsonl: dropped {dropped} row(s) after iteration {self.start_iters} "
                f"(re-run now)")
        if mode == "resume" and kept < self.start_iters:
            self.console.warn(f"metrics.jsonl has {kept} rows for {self.start_iters} "
                              f"checkpointed iterations")
        saved_devices, n_devices = source.meta.get("n_devices"), self.plan.mesh.size
        if mode in ("resume", "checkpoint") and saved_devices != n_devices:
            self.console.warn(f"saved on {saved_devices} device(s), running on {n_devices}: "
                              f"the run continues, but not bit-identically")

    # ------------------------------------------------------------------- compiled calls
    def program(self, k: int):
        """The program of k iterations per call, compiled on first use."""
        if k not in self.compiled:
            with (self.console.timed(f"compiling {k} iteration(s) per call") as timed,
                  self.watchdog.waiting(f"compiling the training program ({k} iteration(s) "
                                        f"per call)")):
                self.compiled[k] = self.trainer.compile(self.state, k)
            self.compile_s += timed.seconds
        return self.compiled[k]

    def compile_evaluation(self) -> None:
        """The env's validation evaluation (`Environment.make_evaluator`), compiled once."""
        with (self.console.timed("compiling evaluation") as timed,
              self.watchdog.waiting("compiling the evaluation")):
            self.evaluator = self.trainer.env.make_evaluator(
                self.trainer.network, self.cfg.env, self.cfg.run.seed, self.state.params)
        self.compile_s += timed.seconds

    def call(self, k: int) -> list[dict]:
        """k iterations in one compiled call -> their metrics rows; a non-finite value ends
        the run ("diverged") before its row is kept."""
        from jaxtrade import memory

        fn = self.program(k)
        done = self.done_iters
        t0 = time.perf_counter()
        span = f" {done + 1}" if k == 1 else f"s {done + 1}-{done + k}"
        with self.watchdog.waiting(f"running iteration{span}"):
            self.state, metrics = fn(self.state, self.trainer.env_params, self.table)
            metrics = jax.device_get(metrics)
        dt_s = time.perf_counter() - t0
        if not self.peak:
            self.peak = measured_peak(fn)
            est = self.plan.sizing.estimate.per_device_bytes
            self.console.line(f"memory: peak {memory.format_bytes(self.peak['bytes'])} per "
                              f"device after the first call ({self.peak['source']}; "
                              f"estimated {memory.format_bytes(est)})")
        self.train_s += dt_s
        sps = k * self.plan.steps_per_iter / dt_s
        rows = []
        for i in range(k):
            row = metrics_row(metrics, i)
            bad = first_non_finite(row)
            if bad is not None:
                self.status = "diverged"
                self.message = (f"iteration {self.done_iters + 1}: {bad} became non-finite; "
                                f"stopped before saving anything from it (try lower learning "
                                f"rates or --max-grad-norm)")
                break
            self.done_iters += 1
            self.episodes += int(row["episodes"])
            rows.append({
                "iteration": self.done_iters,
                "timesteps": self.done_iters * self.plan.steps_per_iter,
                "episodes": self.episodes,
                "sps": sps,
                "wall_s": self.wall_offset + time.perf_counter() - self.t_start,
                **{k_: v for k_, v in row.items() if k_ not in ("episodes", "params_finite")},
                "episodes_this_iteration": int(row["episodes"]),
                **({"phase": self.phase} if self.schedule is not None else {}),
            })
        return rows

    def refresh_pool(self) -> None:
        """A worlds run with --refresh-every K: before iteration i, the training pool of
        generation i // K (`RunWorlds.generation`), generated and normalised with the run's
        statistics, swapped into the env params: an argument of the compiled program, same
        shapes and placement, so nothing is traced or compiled again. Episodes in progress
        go on at the same bar of the new pool's world (its bars, features and assets: a
        position in an asset the new world pads is worth its last price, price 1 thereafter,
        until the next trade sells it, as padded assets get no weight)."""
        from jaxtrade.envs import make_env

        if self.worlds is None:
            return
        generation = self.worlds.generation(self.done_iters)
        if generation == self.generation:
            return
        market = self.plan.market
        t0 = time.perf_counter()
        with self.watchdog.waiting(f"generating training pool {generation}"):
            pool, _ = self.worlds.pool("train", generation, stats=market.stats)
            env = make_env(self.cfg.env.name, pool)
            params = env.make_params("train", **self.cfg.env.params_kwargs())
            placed = jax.block_until_ready(parallel.put_replicated(params, self.plan.mesh))
            # The trainer holds the pool it trains on: the previous one is freed.
            self.trainer = dataclasses.replace(self.trainer, env_params=placed)
        self.generation = generation
        took = time.perf_counter() - t0
        self.refresh_s += took
        lo, hi = self.worlds.train_indices(generation)[[0, -1]]
        self.console.line(f"worlds: training pool {generation} (train worlds {lo}..{hi}) "
                          f"generated in {took:.1f}s")

    def call_length(self, k_call: int) -> int:
        """Iterations of the next call: at most k_call, and none past the end or past the
        next refresh of the training pool."""
        k = min(k_call, self.plan.total_iters - self.done_iters)
        if self.worlds is not None and (every := self.worlds.refresh_every):
            k = min(k, (self.done_iters // every + 1) * every - self.done_iters)
        if later := [i for i in self.phase_starts() if i > self.done_iters]:  # a new phase
            k = min(k, min(later) - self.done_iters)
        return k

    def validate(self, rows: list[dict]) -> None:
        """On its cadence and at the end: the validation walk of the parameters this call
        ended with, into its last row."""
        if (self.status != "completed" or self.evaluator is None or not rows
                or not (self.done_iters >= self.next_eval
                        or self.done_iters == self.plan.total_iters)):
            return
        every = self.plan.eval_every
        self.next_eval = (self.done_iters // every + 1) * every
        what = "worlds" if self.worlds is not None else "range"
        with self.watchdog.waiting(f"evaluating iteration {self.done_iters} on the "
                                   f"validation {what}"):
            out = jax.device_get(self.evaluator(self.state.params, rows[-1]))
        rows[-1].update({f"val_{k}": np.asarray(v).tolist() for k, v in out.items()})

    def write(self, rows: list[dict], log, tb) -> bool:
        """Rows to metrics.jsonl, TensorBoard, the best-checkpoint tracker and the console;
        True when a validation walk found a new best."""
        from jaxtrade.checkpoint import VAL_SCORE_KEY

        console, total = self.console, self.plan.total_iters
        new_best = False
        for row in rows:
            log.write(json.dumps(row) + "\n")
            if tb is not None:
                tb.write(row)
            new_best = self.checkpoints.record(row) or new_best
            self.last_row = row
            it = row["iteration"]
            if it % self.cfg.run.log_every == 0 or it == total:
                console.line(log_line(row, total))
                if console.verbosity > 1:
                    for line in verbose_lines(row, self.plan.env.action_names):
                        console.line(line)
            if VAL_SCORE_KEY in row:
                console.line(eval_line(row, new_best, self.plan.env))
        log.flush()
        return new_best

    def stops_early(self, rows: list[dict]) -> bool:
        """--early-stop: this call's walk made N walks in a row without a new best."""
        from jaxtrade.checkpoint import VAL_SCORE_KEY

        sel, patience = self.checkpoints.selection, self.cfg.run.early_stop
        if not (patience and VAL_SCORE_KEY in rows[-1] and sel["since_best"] >= patience):
            return False
        self.status = "stopped_early"
        self.message = (f"no new best val_score in {sel['since_best']} validation walks; the "
                        f"best is iteration {sel['best_iteration']} (score "
                        f"{sel['best_score']:+.2f})")
        return True

    def save(self, **kw) -> None:  # phase=NAME tags a phase's last checkpoint
        extra = {"schedule": self.schedule_record(), "adjust": self.adjust_record(),
                 # the network of the program that trained it, where a phase changed it
                 # (`checkpoint.Source.model_config`: evaluate and load_policy build it)
                 "network": (cfgmod.to_dict(self.train_cfg)["network"]
                             if self.train_cfg.network != self.cfg.network else None)}
        if self.checkpoints.save(self.state, self.done_iters,
                                 extra={k: v for k, v in extra.items() if v is not None}, **kw):
            self.console.line(f"saving checkpoint at iteration {self.done_iters} -> "
                              f"{self.checkpoints.directory / str(self.done_iters)}")

    def save_if_due(self, new_best: bool) -> None:
        """Between calls, after the rows were checked finite and written; a new best
        validation score is saved too, so that the best checkpoint is kept."""
        every = self.cfg.run.save_every
        due = self.next_save is not None and self.done_iters >= self.next_save
        if due:
            self.next_save = (self.done_iters // every + 1) * every
        if self.phase_of(self.done_iters) != self.phase:  # `enter_phase` saves it, tagged
            return
        if (due or new_best) and self.done_iters < self.plan.total_iters:
            self.save()

    # ---------------------------------------------------------------------- the loop
    def run(self) -> Result:
        """The loop under signal handling: the first signal stops it after the current call,
        a second exits at once; with several processes all stop together once a signal
        reached any of them. Closing the checkpoints waits for the save in flight."""

        with Interrupts() as interrupts, contextlib.closing(self.checkpoints):
            stop = lambda: parallel.any_process(interrupts.requested)
            total, k_call = self.plan.total_iters, min(self.cfg.run.iterations_per_call,
                                                       self.plan.total_iters)
            if not stop():
                self.program(self.call_length(k_call))
                if self.plan.eval_every:
                    self.compile_evaluation()
            with self._logs() as (log, tb):
                while self.done_iters < total and not stop():
                    self.enter_phase()
                    self.refresh_pool()
                    rows = self.call(self.call_length(k_call))
                    self.validate(rows)
                    new_best = self.write(rows, log, tb)
                    if self.status != "completed" or self.stops_early(rows):
                        break
                    self.transition(rows)
                    self.adjust(rows)
                    self.save_if_due(new_best)
                    self._progress()
            self.console.progress.clear()
            if self.status == "completed" and self.done_iters < total:
                self.status = "interrupted"
            if self.status != "diverged":
                self.save(interrupted=self.status == "interrupted",
                          final=self.status in ("completed", "stopped_early"))
            with self.watchdog.waiting("writing the last checkpoint"):
                self.checkpoints.wait()
        return self._result(interrupts.signal_name)

    @contextlib.contextmanager
    def _logs(self):
        """metrics.jsonl (appended) and TensorBoard events of the same rows; a resumed run
        drops the events after its checkpoint (tensorboardX purges steps >= purge_step: the
        checkpoint's own row stays). Off the primary process, nothing is written."""
        from jaxtrade.tensorboard import TensorBoardLog

        run_dir, start = self.plan.run_dir, self.start_iters
        log_path = run_dir / "metrics.jsonl" if self.primary else os.devnull
        tb = (TensorBoardLog(run_dir, purge_step=start * self.plan.steps_per_iter + 1
                             if start else None, action_names=self.plan.env.action_names)
              if self.primary else None)
        with (open(log_path, "a") as log,
              contextlib.closing(tb) if tb is not None else contextlib.nullcontext()):
            yield log, tb

    def _progress(self) -> None:
        trained = (self.done_iters - self.start_iters) * self.plan.steps_per_iter
        self.console.progress.update(self.done_iters * self.plan.steps_per_iter,
                                     self.train_s and trained / self.train_s,
                                     self.last_row.get("episode_return_mean", 0.0))

    def _result(self, signal_name: str | None) -> Result:
        """summary.json (primary process) and how the run ended."""
        from jaxtrade import checkpoint as ckpt

        summary = self._summary()
        if self.status == "interrupted":
            summary["resume_command"] = ckpt.resume_command(self.plan.run_dir)
        if self.primary:
            (self.plan.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            if self.schedule is not None:
                from jaxtrade.schedule import RECOMMENDATIONS_FILE, recommendation

                rec = recommendation(self.schedule, self.phase_ends,
                                     self.done_iters * self.plan.steps_per_iter,
                                     self.cfg.run.schedule_scale, str(self.plan.run_dir))
                (self.plan.run_dir / RECOMMENDATIONS_FILE).write_text(
                    json.dumps(rec, indent=2) + "\n")
        return Result(self.status, self.message, summary, dict(self.checkpoints.selection),
                      signal_name, self.plan.total_iters, self.plan.run_dir)

    def _summary(self) -> dict:
        plan, cp, steps = self.plan, self.checkpoints, self.plan.steps_per_iter
        trained_steps = (self.done_iters - self.start_iters) * steps
        return {
            "status": self.status,
            "message": self.message,
            "iterations": self.done_iters,
            "timesteps": self.done_iters * steps,
            "episodes": self.episodes,
            "wall_s": time.perf_counter() - self.t_start,
            "compile_s": self.compile_s,
            "init_s": self.init_s,
            "train_s": self.train_s,
            "refresh_s": self.refresh_s,  # generating fresh training pools (worlds runs)
            "sps": trained_steps / self.train_s if self.train_s else 0.0,
            "n_params": self.trainer.n_params,
            "n_envs": self.cfg.ppo.n_envs,
            "market": self.cfg.data.market,
            "device": parallel.describe(plan.mesh),
            "n_devices": plan.mesh.size,
            "n_processes": jax.process_count(),
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "checkpoint": (str(cp.directory / str(cp.last_step))
                           if cp.last_step is not None else None),
            "lineage": self.lineage.to_dict(self.done_iters * steps),
            "best": cp.best,
            # What chose the best checkpoint: validation walks (candidates compared), the best.
            "selection": {k: v for k, v in cp.selection.items()
                          if k not in ("sharpes", "world_sharpes")},
            "memory": {
                "estimated_bytes": plan.sizing.estimate.per_device_bytes,
                "budget_bytes": plan.sizing.budget,
                "budget": plan.sizing.budget_source,
                "peak_bytes": self.peak.get("bytes"),
                "peak_source": self.peak.get("source"),
            },
            "final_metrics": self.last_row,
        }

"""Hyperparameter schedules: phases of runtime hyperparameters that the compiled program follows
from its own timestep counter (no host round trip, no recompile).

A schedule is a TOML file (`configs/schedules/`):

    [schedule]
    description = "..."

    [[phase]]
    name = "exploration"
    end = 500_000                 # timesteps (x --schedule-scale); or end_fraction = 0.05
    actor_lr = [1.2e-4, 8e-5]     # linear from the phase's start to its end
    clip = 0.25                   # constant through the phase
    dropout = 0.088               # the rate too (the network has dropout sites if any is > 0)
    [phase.shapes]                # settings that change shapes (recorded, see below)
    ppo_epochs = 10

Each phase ends at `end` timesteps times `scale` (`--schedule-scale`; 0.1 runs a 10M
schedule in 1M), or at `end_fraction` of the run's total timesteps; ends increase. A
runtime hyperparameter (`jaxtrade.trainer.HPARAM_NAMES`) that one phase names, every phase
names: as a number (constant) or [start, end] (linear in timesteps within the phase). At
the iteration that starts at timestep t the program uses the values at t; after the last
phase's end they hold its end values. Hyperparameters the schedule does not name keep the
run's config values; those it names follow it, unless the user set them with
`--hyperparams` or their own flags (`[run] schedule_fixed` records which): the user's value
wins for the whole run.

`[phase.shapes]` holds the phase's settings that change array shapes or the program
(minibatch size, epochs, transformer heads and layers in the reference table;
`phase_config` maps them onto a run's config). A run switches them at phase boundaries:
it saves a checkpoint tagged with the phase that ends, compiles the next phase's program
and carries the state over (a transformer grows function-preservingly,
`jaxtrade.networks.grow`), and a resumed run rebuilds the program of the phase it is in
(`jaxtrade.engine.run`).

Phases may end early: `[schedule.transition]` sets the plateau rule of every phase and a
phase's `[phase.transition]` overrides it for that phase (`jaxtrade.transitions`: patience,
cooldown and minimum in timesteps, scaled by `--schedule-scale` like the ends; threshold,
threshold_mode, mode, tail, and `targets`, a table of validation metrics to reach):

    [schedule.transition]
    patience = 100_000
    threshold = 0.01
    [[phase]]
    ...
    [phase.transition]
    targets = { val_sharpe = 1.0 }

A run checks the rule at each validation walk (`--phase-transitions plateau`, the
default; `off` ends phases at their end steps only). When it fires, the phase ends at that
iteration and the next begins there: its ramp runs from its start values there to its end
values at its own end, which does not move; the last phase never ends early. The table's
phase ends are an argument of the compiled program (`ScheduleTable`), so an early end
changes them without compiling again.

Host-side parsing (`load`); the table (`ScheduleTable`) is a small pytree of arrays that
`values_at` reads inside the program.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

SHAPE_KEYS = ("minibatch_size", "n_minibatches", "ppo_epochs", "critic_epochs", "n_heads",
              "n_layers")
# The plateau rule's settings (`jaxtrade.transitions.PlateauRule`); those counted in
# timesteps are scaled like the phase ends.
TRANSITION_KEYS = ("patience", "threshold", "threshold_mode", "mode", "cooldown", "minimum",
                   "tail", "targets")
TRANSITION_TIMESTEPS = ("patience", "cooldown", "minimum")


class ScheduleError(ValueError):
    """A schedule file that cannot be followed (one line, naming the file and the phase)."""


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    end: float | None  # timesteps, before the scale (None: end_fraction gives it)
    end_fraction: float | None  # of the run's timesteps
    values: dict[str, tuple[float, float]]  # hyperparameter -> (start, end)
    shapes: dict[str, float]
    transition: dict[str, Any] = dataclasses.field(default_factory=dict)  # rule overrides


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed schedule file (see the module docstring)."""

    path: str
    description: str
    phases: tuple[Phase, ...]
    transition: dict[str, Any] = dataclasses.field(default_factory=dict)  # every phase's rule

    @property
    def keys(self) -> tuple[str, ...]:
        """The runtime hyperparameters it controls, in the trainer's order."""
        from jaxtrade.trainer import HPARAM_NAMES

        return tuple(k for k in HPARAM_NAMES if k in self.phases[0].values)

    def ends(self, scale: float, total_timesteps: int) -> list[float]:
        """Each phase's end in timesteps for a run of `total_timesteps` at `scale`."""
        out = [p.end * scale if p.end is not None else p.end_fraction * total_timesteps
               for p in self.phases]
        for a, b, phase in zip(out, out[1:], self.phases[1:], strict=False):
            if not b > a:
                raise ScheduleError(f"{self.path}: phase {phase.name!r} ends at {b:,.0f} "
                                    f"timesteps, not after the phase before it ({a:,.0f})")
        return out

    def table(self, scale: float, total_timesteps: int, fixed=()) -> ScheduleTable:
        """The in-program table; hyperparameters in `fixed` (set by the user) are left out
        (they keep the config's value)."""
        ends = self.ends(scale, total_timesteps)
        keys = tuple(k for k in self.keys if k not in set(fixed or ()))
        lo = [[p.values[k][0] for k in keys] for p in self.phases]
        hi = [[p.values[k][1] for k in keys] for p in self.phases]
        from jaxtrade.adjust import SANE

        inf = float("inf")
        return ScheduleTable(ends=jnp.asarray(ends, jnp.float32),
                             lo=jnp.asarray(lo, jnp.float32).reshape(len(ends), len(keys)),
                             hi=jnp.asarray(hi, jnp.float32).reshape(len(ends), len(keys)),
                             factors=jnp.ones(len(keys), jnp.float32),
                             floor=jnp.asarray([SANE.get(k, (-inf, inf))[0] for k in keys],
                                               jnp.float32),
                             ceiling=jnp.asarray([SANE.get(k, (-inf, inf))[1] for k in keys],
                                                 jnp.float32),
                             keys=keys)

    def phase_at(self, timestep: float, scale: float, total_timesteps: int,
                 ends: list[float] | None = None) -> int:
        """Index of the phase that timestep `timestep` is in (host-side); `ends`: the
        run's actual phase ends (some ended early), default the planned ones."""
        ends = self.ends(scale, total_timesteps) if ends is None else ends
        return phase_index(ends, timestep)

    def value_at(self, key: str, timestep: float, scale: float, total_timesteps: int,
                 ends: list[float] | None = None) -> float:
        """`key`'s value at `timestep` (host-side, float64: what the table prescribes)."""
        ends = self.ends(scale, total_timesteps) if ends is None else ends
        p = phase_index(ends, timestep)
        start = 0.0 if p == 0 else ends[p - 1]
        frac = min(max((timestep - start) / (ends[p] - start), 0.0), 1.0)
        a, b = self.phases[p].values[key]
        return a + frac * (b - a)

    def phase_of_iteration(self, iteration: int, steps_per_iteration: int, scale: float,
                           total_timesteps: int, ends: list[float] | None = None) -> int:
        """The phase of the iteration that starts after `iteration` iterations."""
        return self.phase_at(iteration * steps_per_iteration, scale, total_timesteps, ends)

    def switches(self, cfg, n_devices: int, scale: float, total_iterations: int,
                 ends: list[float] | None = None) -> list[tuple[int, int]]:
        """(iteration, phase) where the program changes: the first iteration of a phase
        whose shape settings, as `phase_config` applies them to `cfg`, differ from the
        phase before it's; iterations within the run only. `ends`: as `phase_at`."""
        spi = cfg.ppo.n_envs * cfg.ppo.n_steps
        ends = self.ends(scale, total_iterations * spi) if ends is None else ends
        out, current = [], phase_index(ends, 0)
        for i, p in phase_starts(ends, spi, total_iterations):
            if (phase_config(self, cfg, p, n_devices)[0]
                    != phase_config(self, cfg, current, n_devices)[0]):
                out.append((i, p))
            current = p
        return out

    def rule(self, index: int, scale: float):
        """Phase `index`'s plateau rule (`jaxtrade.transitions.PlateauRule`): the schedule's
        `[schedule.transition]` with the phase's `[phase.transition]` over it, timesteps
        scaled by `scale`."""
        from jaxtrade.transitions import PlateauRule

        settings = {**self.transition, **self.phases[index].transition}
        settings = {k: v * scale if k in TRANSITION_TIMESTEPS else v
                    for k, v in settings.items()}
        return PlateauRule(**settings)

    def describe(self, cfg, n_devices: int, scale: float, total_iterations: int) -> list[str]:
        """Banner lines: the phases, their ends, what follows the schedule inside the program
        and where the program changes."""
        spi = cfg.ppo.n_envs * cfg.ppo.n_steps
        ends = self.ends(scale, total_iterations * spi)
        fixed = [k for k in self.keys if k in (cfg.run.schedule_fixed or ())]
        follow = [k for k in self.keys if k not in fixed]
        lines = [f"schedule: {self.path}: {len(self.phases)} phases to {ends[-1]:,.0f} timesteps"
                 + (f" (x{scale:g})" if scale != 1 else "") + "; "
                 + (f"{', '.join(follow)} follow it inside the program" if follow else
                    "no hyperparameter follows it")
                 + (f"; {', '.join(fixed)} as you set" if fixed else "")]
        first = self.phase_of_iteration(0, spi, scale, total_iterations * spi)
        _, applied, skipped = phase_config(self, cfg, first, n_devices)
        if applied:
            lines.append(f"  phase {self.phases[first].name!r} from iteration 1: "
                         f"{describe_settings(applied)} (in place of the config's)")
        for i, p in self.switches(cfg, n_devices, scale, total_iterations):
            _, applied, _ = phase_config(self, cfg, p, n_devices)
            lines.append(f"  phase {self.phases[p].name!r} from iteration {i + 1}: "
                         f"{describe_settings(applied)} (a program of its own, compiled there)")
        if skipped:
            lines.append(f"  not applied to this run: {', '.join(skipped)}")
        if cfg.run.phase_transitions == "off":
            lines.append("  phases end at their end steps (--phase-transitions off)")
        elif cfg.run.eval_every:
            rule = self.rule(first, scale)
            lines.append(f"  a phase ends early on its rule at a validation walk: no "
                         f"improvement over {rule.threshold:g} ({rule.threshold_mode}) for "
                         f"{rule.patience:,.0f} timesteps, or none in its last "
                         f"{rule.tail:.0%}" + (", or its targets met" if any(
                             self.rule(i, scale).targets for i in range(len(self.phases)))
                                               else ""))
        else:
            lines.append("  phases end at their end steps (no validation walks: --eval-every 0)")
        return lines


REFERENCE = "configs/schedules/reference.toml"  # the predecessor's table (repository root)
RECOMMENDATIONS_FILE = "recommendations.json"


def reference_path() -> str:
    """The reference schedule's path: from the repository this package lives in when it is
    there (a run started anywhere finds it), else as written (relative to the cwd)."""
    here = Path(__file__).resolve().parent.parent / REFERENCE
    return str(here) if here.exists() else REFERENCE


def recommendation(schedule: Schedule, ends: list[float], timesteps: int, scale: float,
                   run_dir: str | None = None) -> dict[str, Any]:
    """What to train next after `timesteps`, with phase ends `ends`: the phase reached and
    the one the next timestep falls in (the rest of the same phase when it stopped inside
    one), with its span, its hyperparameters (start and end), shape settings and rule, and
    the command that trains it; `next` is None once the last phase is done."""
    names = [p.name for p in schedule.phases]
    reached = phase_index(ends, max(timesteps - 1, 0))
    out: dict[str, Any] = {
        "schedule": schedule.path, "schedule_scale": scale, "timesteps": int(timesteps),
        "reached": {"phase": reached, "name": names[reached],
                    "complete": timesteps >= ends[reached]},
        "next": None,
    }
    if timesteps >= ends[-1]:
        return out
    nxt = phase_index(ends, timesteps)
    start = 0.0 if nxt == 0 else ends[nxt - 1]
    phase = schedule.phases[nxt]
    rule = schedule.rule(nxt, scale)
    out["next"] = {
        "phase": nxt, "name": phase.name, "start": start, "end": ends[nxt],
        "from": float(timesteps), "steps": ends[nxt] - timesteps,
        "hyperparameters": {k: list(v) for k, v in phase.values.items()},
        "shapes": dict(phase.shapes),
        "transition": {**dataclasses.asdict(rule), "targets": dict(rule.targets)},
    }
    if run_dir is not None:
        out["command"] = (f"python -m jaxtrade.train --checkpoint {run_dir} "
                          f"--use-recommendations --run-dir NEW_DIR")
    return out


def phase_starts(ends: list[float], steps_per_iteration: int, total_iterations: int
                 ) -> list[tuple[int, int]]:
    """(iteration, phase): the first iteration that starts in each phase after the first,
    within the run; a phase shorter than an iteration, which no iteration starts in, is
    skipped."""
    out = []
    for p in range(1, len(ends)):
        i = math.ceil(ends[p - 1] / steps_per_iteration)
        if i >= total_iterations:
            break
        if phase_index(ends, i * steps_per_iteration) == p:
            out.append((i, p))
    return out


def phase_index(ends: list[float], timestep: float) -> int:
    """Index of the phase that `timestep` is in, for phase ends `ends` (host-side)."""
    return min(sum(timestep >= e for e in ends), len(ends) - 1)


def describe_settings(applied: dict[str, float]) -> str:
    """A phase's applied shape settings in words ("n_minibatches 2, ppo_epochs 8")."""
    return ", ".join(f"{k} {v:g}" for k, v in applied.items()) or "no shape settings"


def minibatches_for(cfg, minibatch_size: float, n_devices: int) -> int:
    """The n_minibatches that divides `cfg`'s envs over `n_devices` devices and comes
    closest to minibatches of `minibatch_size` env steps."""
    from jaxtrade.config import batch_problem, with_values

    n, t = cfg.ppo.n_envs, cfg.ppo.n_steps
    valid = [m for m in range(1, n + 1)
             if batch_problem(with_values(cfg, n_minibatches=m), n_devices) is None]
    return min(valid, key=lambda m: (abs(math.log(n * t / m / minibatch_size)), m))


def phase_config(schedule: Schedule, cfg, index: int, n_devices: int):
    """`cfg` with phase `index`'s shape settings: (config, {setting: value} applied,
    [what does not apply to this run, with why]). `minibatch_size` (env steps per
    minibatch) becomes the n_minibatches that divides the envs over the devices and comes
    closest to it; transformer heads and layers apply to a transformer only."""
    from jaxtrade.config import with_values

    shapes = schedule.phases[index].shapes
    applied: dict[str, float] = {}
    skipped: list[str] = []
    for key, value in shapes.items():
        if key == "minibatch_size":
            applied["n_minibatches"] = minibatches_for(cfg, value, n_devices)
        elif key in ("n_heads", "n_layers"):
            if cfg.network.kind == "transformer":
                applied[key] = int(value)
                if key == "n_heads" and cfg.network.head_dim is None:  # heads keep their width
                    applied["head_dim"] = cfg.network.hidden_dim // cfg.network.n_heads
            else:
                skipped.append(f"{key} (a transformer's; this run's network is "
                               f"{cfg.network.kind})")
        else:
            applied[key] = int(value)
    return with_values(cfg, **applied), applied, sorted(set(skipped))


@struct.dataclass
class ScheduleTable:
    """The schedule as arrays: phase ends [P] (timesteps: a phase that ended early ends
    there), each controlled hyperparameter's value at each phase's start and end [P, K],
    and a factor on each [K] (1 unless an adjustment rule scaled it, `jaxtrade.adjust`); a
    scaled value stays within [floor, ceiling] [K] (`jaxtrade.adjust.SANE`: a factor set
    where the schedule was low must not push gae_lambda past 0.99 where it rises). An
    argument of the compiled program: new values of the same shapes recompile nothing."""

    ends: jax.Array
    lo: jax.Array
    hi: jax.Array
    factors: jax.Array
    floor: jax.Array
    ceiling: jax.Array
    keys: tuple[str, ...] = struct.field(pytree_node=False)

    def with_ends(self, ends) -> ScheduleTable:
        """The same table with phase ends `ends` (host-side; placed like the old ones, also
        across processes, which must all pass the same values)."""
        return self.replace(ends=_placed_like(np.asarray(ends, np.float32), self.ends))

    def with_factors(self, factors: dict[str, float]) -> ScheduleTable:
        """The same table with each key's factor from `factors` (missing keys: 1)."""
        new = np.asarray([factors.get(k, 1.0) for k in self.keys], np.float32)
        return self.replace(factors=_placed_like(new, self.factors))

    def values_at(self, timestep: jax.Array) -> dict[str, jax.Array]:
        """{hyperparameter: float32 []} at `timestep` (float32 [], inside jit)."""
        t = jnp.asarray(timestep, jnp.float32)
        n = self.ends.shape[0]
        p = jnp.minimum(jnp.searchsorted(self.ends, t, side="right"), n - 1)
        starts = jnp.concatenate([jnp.zeros(1, jnp.float32), self.ends[:-1]])
        frac = jnp.clip((t - starts[p]) / (self.ends[p] - starts[p]), 0.0, 1.0)
        v = self.lo[p] + frac * (self.hi[p] - self.lo[p])
        v = jnp.where(self.factors != 1, jnp.clip(v * self.factors, self.floor, self.ceiling), v)
        return {k: v[i] for i, k in enumerate(self.keys)}


def _placed_like(x: np.ndarray, like: jax.Array) -> jax.Array:
    if x.shape != like.shape:
        raise ValueError(f"expected shape {like.shape}, got {x.shape}")
    return jax.make_array_from_callback(x.shape, like.sharding, lambda idx: x[idx])


def _number(where: str, x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ScheduleError(f"{where}: expected a number, got {x!r}")
    return float(x)


def load(path: str | Path) -> Schedule:
    """Parse and check a schedule file (see the module docstring).

    Raises:
      ScheduleError: unreadable TOML, no phases, an unknown key, a phase without an end or
        with both kinds, a value that is not a number or [start, end], a value its config
        rule refuses, hyperparameters named by some phases only.
    """
    from jaxtrade.config import broken_rule
    from jaxtrade.trainer import HPARAM_NAMES

    path = str(path)
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ScheduleError(f"{path}: no such schedule file") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScheduleError(f"{path}: not a readable TOML file ({e})") from None
    unknown = set(doc) - {"schedule", "phase"}
    if unknown:
        raise ScheduleError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; expected "
                            f"[schedule] and [[phase]]")
    raw = doc.get("phase")
    if not isinstance(raw, list) or not raw:
        raise ScheduleError(f"{path}: no [[phase]] tables")
    phases = []
    for i, entry in enumerate(raw):
        name = str(entry.get("name", i + 1))
        where = f"{path}: phase {name!r}"
        end, frac = entry.get("end"), entry.get("end_fraction")
        if (end is None) == (frac is None):
            raise ScheduleError(f"{where}: give exactly one of end (timesteps) and end_fraction")
        if end is not None and _number(f"{where} end", end) <= 0:
            raise ScheduleError(f"{where}: end must be > 0, got {end}")
        if frac is not None and not 0 < _number(f"{where} end_fraction", frac) <= 1:
            raise ScheduleError(f"{where}: end_fraction must be in (0, 1], got {frac}")
        values, shapes, transition = {}, {}, {}
        for key, value in entry.items():
            if key in ("name", "end", "end_fraction"):
                continue
            if key == "transition":
                transition = _transition(where, value)
                continue
            if key == "shapes":
                if not isinstance(value, dict):
                    raise ScheduleError(f"{where}: shapes must be a table")
                if "dropout" in value:  # where schedules put it before it was a runtime value
                    if "dropout" in entry:
                        raise ScheduleError(f"{where}: dropout is given twice (beside the "
                                            f"others and under [phase.shapes])")
                    value = dict(value)
                    rate = _number(f"{where} shapes.dropout", value.pop("dropout"))
                    if (rule := broken_rule("dropout", rate)) is not None:
                        raise ScheduleError(f"{where}: dropout must be {rule}, got {rate}")
                    values["dropout"] = (rate, rate)  # the phase's constant rate
                bad = set(value) - set(SHAPE_KEYS)
                if bad:
                    raise ScheduleError(f"{where}: unknown shape setting(s) "
                                        f"{', '.join(sorted(bad))}; expected "
                                        f"{', '.join(SHAPE_KEYS)}")
                shapes = {k: _number(f"{where} shapes.{k}", v) for k, v in value.items()}
                if {"minibatch_size", "n_minibatches"} <= set(shapes):
                    raise ScheduleError(f"{where}: give minibatch_size or n_minibatches, not "
                                        f"both")
                continue
            if key not in HPARAM_NAMES:
                raise ScheduleError(f"{where}: {key!r} is not a runtime hyperparameter; "
                                    f"expected {', '.join(HPARAM_NAMES)}")
            pair = value if isinstance(value, list) else [value, value]
            if len(pair) != 2:
                raise ScheduleError(f"{where}: {key} must be a number or [start, end], got "
                                    f"{value!r}")
            pair = tuple(_number(f"{where} {key}", x) for x in pair)
            for x in pair:
                if (rule := broken_rule(key, x)) is not None:
                    raise ScheduleError(f"{where}: {key} must be {rule}, got {x}")
            values[key] = pair
        phases.append(Phase(name, None if end is None else float(end),
                            None if frac is None else float(frac), values, shapes, transition))
    for a, b in zip(phases, phases[1:], strict=False):
        if a.end is not None and b.end is not None and not b.end > a.end:
            raise ScheduleError(f"{path}: phase {b.name!r} ends at {b.end:,.0f} timesteps, not "
                                f"after the phase before it ({a.end:,.0f})")
    first = set(phases[0].values)
    for phase in phases[1:]:
        if set(phase.values) != first:
            odd = sorted(first ^ set(phase.values))
            raise ScheduleError(f"{path}: phase {phase.name!r} names other hyperparameters "
                                f"than phase {phases[0].name!r} ({', '.join(odd)}); each "
                                f"phase names the same ones")
    if not first:
        raise ScheduleError(f"{path}: no phase names a runtime hyperparameter")
    head = doc.get("schedule") or {}
    if not isinstance(head, dict) or set(head) - {"description", "transition"}:
        raise ScheduleError(f"{path}: [schedule] holds description and [schedule.transition] "
                            f"only")
    transition = _transition(f"{path}: [schedule]", head.get("transition", {}))
    for phase in phases:  # every phase's rule must be one PlateauRule accepts
        try:
            Schedule(path, "", tuple(phases), transition).rule(phases.index(phase), 1.0)
        except (TypeError, ValueError) as e:
            raise ScheduleError(f"{path}: phase {phase.name!r} transition: {e}") from None
    return Schedule(path, str(head.get("description", "")), tuple(phases), transition)


def _transition(where: str, value: Any) -> dict[str, Any]:
    """A `transition` table's settings, checked by name and kind (`PlateauRule` checks the
    values)."""
    if not isinstance(value, dict):
        raise ScheduleError(f"{where}: transition must be a table")
    bad = set(value) - set(TRANSITION_KEYS)
    if bad:
        raise ScheduleError(f"{where}: unknown transition setting(s) {', '.join(sorted(bad))}; "
                            f"expected {', '.join(TRANSITION_KEYS)}")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key in ("mode", "threshold_mode"):
            out[key] = str(v)
        elif key == "targets":
            if not isinstance(v, dict):
                raise ScheduleError(f"{where}: transition targets must be a table of metric = "
                                    f"value")
            out[key] = {str(m): _number(f"{where} transition.targets.{m}", x)
                        for m, x in v.items()}
        else:
            out[key] = _number(f"{where} transition.{key}", v)
    return out

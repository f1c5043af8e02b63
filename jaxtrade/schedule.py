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
    [phase.shapes]                # settings that change shapes (recorded, see below)
    ppo_epochs = 10

Each phase ends at `end` timesteps times `scale` (`--schedule-scale`; 0.1 runs a 10M
schedule in 1M), or at `end_fraction` of the run's total timesteps; ends increase. A
runtime hyperparameter (`jaxtrade.trainer.HPARAM_NAMES`) that one phase names, every phase
names: as a number (constant) or [start, end] (linear in timesteps within the phase). At
the iteration that starts at timestep t the program uses the values at t; after the last
phase's end they hold its end values. Hyperparameters the schedule does not name keep the
run's config values (and `--hyperparams`'); those it names ignore them.

`[phase.shapes]` holds the phase's settings that change array shapes or the program
(minibatch size, epochs, dropout, transformer heads and layers in the reference table).
They are parsed and checked, and listed in the banner; switching them at a phase boundary
(compiling the next phase's program and carrying the state over) is not built yet, so a
run keeps its own shape settings throughout and says so.

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
from flax import struct

SHAPE_KEYS = ("minibatch_size", "n_minibatches", "ppo_epochs", "critic_epochs", "dropout",
              "n_heads", "n_layers")


class ScheduleError(ValueError):
    """A schedule file that cannot be followed (one line, naming the file and the phase)."""


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    end: float | None  # timesteps, before the scale (None: end_fraction gives it)
    end_fraction: float | None  # of the run's timesteps
    values: dict[str, tuple[float, float]]  # hyperparameter -> (start, end)
    shapes: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A parsed schedule file (see the module docstring)."""

    path: str
    description: str
    phases: tuple[Phase, ...]

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

    def table(self, scale: float, total_timesteps: int) -> ScheduleTable:
        ends = self.ends(scale, total_timesteps)
        keys = self.keys
        lo = [[p.values[k][0] for k in keys] for p in self.phases]
        hi = [[p.values[k][1] for k in keys] for p in self.phases]
        return ScheduleTable(ends=jnp.asarray(ends, jnp.float32),
                             lo=jnp.asarray(lo, jnp.float32).reshape(len(ends), len(keys)),
                             hi=jnp.asarray(hi, jnp.float32).reshape(len(ends), len(keys)),
                             keys=keys)

    def phase_at(self, timestep: float, scale: float, total_timesteps: int) -> int:
        """Index of the phase that timestep `timestep` is in (host-side)."""
        ends = self.ends(scale, total_timesteps)
        return min(sum(timestep >= e for e in ends), len(ends) - 1)

    def value_at(self, key: str, timestep: float, scale: float, total_timesteps: int) -> float:
        """`key`'s value at `timestep` (host-side, float64: what the table prescribes)."""
        ends = self.ends(scale, total_timesteps)
        p = self.phase_at(timestep, scale, total_timesteps)
        start = 0.0 if p == 0 else ends[p - 1]
        frac = min(max((timestep - start) / (ends[p] - start), 0.0), 1.0)
        a, b = self.phases[p].values[key]
        return a + frac * (b - a)

    def describe(self, scale: float, total_timesteps: int) -> list[str]:
        """Banner lines: the phases, their ends and what follows the schedule."""
        ends = self.ends(scale, total_timesteps)
        head = (f"schedule: {self.path}: {len(self.phases)} phases to {ends[-1]:,.0f} timesteps"
                + (f" (x{scale:g})" if scale != 1 else "") + f"; {', '.join(self.keys)} "
                f"follow it inside the program")
        lines = [head]
        if any(p.shapes for p in self.phases):
            lines.append("schedule: its [phase.shapes] settings are not applied (switching "
                         "shapes at phase boundaries is not built yet): the run keeps its own")
        return lines


@struct.dataclass
class ScheduleTable:
    """The schedule as arrays: phase ends [P] (timesteps) and each controlled
    hyperparameter's value at each phase's start and end [P, K]."""

    ends: jax.Array
    lo: jax.Array
    hi: jax.Array
    keys: tuple[str, ...] = struct.field(pytree_node=False)

    def values_at(self, timestep: jax.Array) -> dict[str, jax.Array]:
        """{hyperparameter: float32 []} at `timestep` (float32 [], inside jit)."""
        t = jnp.asarray(timestep, jnp.float32)
        n = self.ends.shape[0]
        p = jnp.minimum(jnp.searchsorted(self.ends, t, side="right"), n - 1)
        starts = jnp.concatenate([jnp.zeros(1, jnp.float32), self.ends[:-1]])
        frac = jnp.clip((t - starts[p]) / (self.ends[p] - starts[p]), 0.0, 1.0)
        v = self.lo[p] + frac * (self.hi[p] - self.lo[p])
        return {k: v[i] for i, k in enumerate(self.keys)}


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
        values, shapes = {}, {}
        for key, value in entry.items():
            if key in ("name", "end", "end_fraction"):
                continue
            if key == "shapes":
                if not isinstance(value, dict):
                    raise ScheduleError(f"{where}: shapes must be a table")
                bad = set(value) - set(SHAPE_KEYS)
                if bad:
                    raise ScheduleError(f"{where}: unknown shape setting(s) "
                                        f"{', '.join(sorted(bad))}; expected "
                                        f"{', '.join(SHAPE_KEYS)}")
                shapes = {k: _number(f"{where} shapes.{k}", v) for k, v in value.items()}
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
                            None if frac is None else float(frac), values, shapes))
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
    description = str((doc.get("schedule") or {}).get("description", ""))
    return Schedule(path, description, tuple(phases))

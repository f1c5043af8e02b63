"""When a schedule's phase ends early: the plateau rule, host-side and checkpointable.

A phase ends at its end step, or earlier when its transition rule fires at a validation:

* plateau: the validation score has not improved by more than `threshold` (relative to
  the best's magnitude, or absolute: `threshold_mode`) for `patience` timesteps;
* targets: every one of the phase's target metrics is met (`targets`: metric -> the
  value to reach, compared as "at least" or, for names in `LOWER_IS_BETTER`, "at most");
* the last 10%: no significant improvement over the last `tail` (0.1) of the phase's
  planned steps, i.e. the best is older than that many timesteps.

As the well-known plateau schedulers (PyTorch's `ReduceLROnPlateau`, Keras'): `mode`
"max" (a higher score is better) or "min"; `threshold_mode` "rel" (an improvement beats
best + |best| x threshold; PyTorch scales by best itself, which for a negative best in
max mode asks for less than no change, so the magnitude is used here) or "abs" (best +
threshold); `cooldown` timesteps after a phase starts in which the rule watches but does
not fire; `minimum` timesteps a phase lasts at least. Patience and cooldown are counted
in timesteps, not calls, so that a rule means the same at any validation frequency.

`PlateauState` is plain data (`to_dict` / `from_dict`, JSON), saved in a checkpoint's
metadata so that a run resumed mid-phase or mid-cooldown decides exactly as one that was
not interrupted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

LOWER_IS_BETTER = frozenset({"max_drawdown", "val_max_drawdown", "drawdown"})


@dataclasses.dataclass(frozen=True)
class PlateauRule:
    """A phase's transition rule (see the module docstring)."""

    patience: float = 100_000.0  # timesteps without improvement that end the phase
    threshold: float = 0.01
    threshold_mode: str = "rel"  # "rel" or "abs"
    mode: str = "max"  # "max": higher scores are better; "min": lower
    cooldown: float = 0.0  # timesteps after the phase's start in which the rule cannot fire
    minimum: float = 0.0  # timesteps a phase lasts at least
    tail: float = 0.1  # "no improvement over the last `tail` of the phase's planned steps"
    targets: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if self.threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got "
                             f"{self.threshold_mode!r}")
        for name in ("patience", "threshold", "cooldown", "minimum"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not 0 <= self.tail < 1:
            raise ValueError(f"tail must be in [0, 1), got {self.tail!r}")

    def improves(self, score: float, best: float | None) -> bool:
        """Whether `score` beats `best` by more than the threshold."""
        if best is None:
            return True
        margin = self.threshold * (abs(best) if self.threshold_mode == "rel" else 1.0)
        return score > best + margin if self.mode == "max" else score < best - margin

    def targets_met(self, metrics: Mapping[str, float]) -> bool:
        """Whether every target is reached (False without targets, or with one missing)."""
        if not self.targets:
            return False
        for name, target in self.targets.items():
            value = metrics.get(name)
            if value is None or not math.isfinite(value):
                return False
            if (value > target) if name in LOWER_IS_BETTER else (value < target):
                return False
        return True


@dataclasses.dataclass(frozen=True)
class PlateauState:
    """What the rule remembers within a phase (plain data, JSON via `to_dict`)."""

    phase_start: float  # timestep the phase started at
    phase_end: float  # timestep it is planned to end at
    best: float | None = None
    best_at: float | None = None  # timestep of the best score
    fired: str | None = None  # why the phase ended early, once it has

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlateauState:
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})


def start_phase(start: float, end: float) -> PlateauState:
    """The rule's state at the start of a phase planned over timesteps [start, end)."""
    if not end > start:
        raise ValueError(f"a phase must end after it starts, got [{start}, {end})")
    return PlateauState(phase_start=float(start), phase_end=float(end))


def observe(rule: PlateauRule, state: PlateauState, timestep: float, score: float,
            metrics: Mapping[str, float] | None = None) -> PlateauState:
    """The state after a validation at `timestep` scoring `score` (and its `metrics`);
    `fired` says why the phase ends here, or stays None. A state that fired stays so.

    The checks, in order, once the phase has run `minimum` timesteps and is out of its
    `cooldown`: targets met; no improvement for `patience`; no improvement over the last
    `tail` of the phase's planned steps (only within that last stretch)."""
    if state.fired is not None:
        return state
    t = float(timestep)
    if not math.isfinite(score):  # a failed validation neither improves nor counts
        return state
    if rule.improves(score, state.best):
        state = dataclasses.replace(state, best=float(score), best_at=t)
    elapsed = t - state.phase_start
    if elapsed < max(rule.minimum, rule.cooldown):
        return state
    since = t - state.best_at
    length = state.phase_end - state.phase_start
    reason = None
    if rule.targets_met(metrics or {}):
        reason = "targets met: " + ", ".join(f"{k} {v:g}" for k, v in rule.targets.items())
    elif since >= rule.patience:
        reason = (f"plateau: no improvement over {rule.threshold:g} "
                  f"({rule.threshold_mode}) for {since:,.0f} timesteps "
                  f"(patience {rule.patience:,.0f})")
    elif rule.tail > 0 and t >= state.phase_end - rule.tail * length and (
            since >= rule.tail * length):
        reason = (f"no significant improvement over the last {rule.tail:.0%} of the phase "
                  f"({since:,.0f} timesteps)")
    return dataclasses.replace(state, fired=reason) if reason else state

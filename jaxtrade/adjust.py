"""Metric-driven hyperparameter adjustments: the reference rule book as a table, applied at
each validation walk (`--adjust rules`); host-side, pure, no JAX.

`decide(metrics, hparams, shapes, timestep)` checks every rule of `REFERENCE` against one
validation's metrics and returns a `Decision`: the adjustments (at most one per key), the
rules that fired with the values that triggered them, and the rules skipped with why.

What a rule reads. A rule's conditions name quantities, looked up in this order:
* the run's current hyperparameters (`hparams`: actor_lr, critic_lr, ent_coef, clip,
  vf_coef, gae_lambda, gamma, max_grad_norm) and shape settings (`shapes`: ppo_epochs,
  minibatch_size in env steps);
* the metrics row: validation metrics carry a `val_` prefix (`val_sharpe`, annualised;
  `val_max_drawdown`, a positive fraction, 0.25 = a 25% fall from a peak; `val_n_trades`;
  an env whose validation reports leverage names it `val_avg_leverage`), training metrics
  none (`explained_variance`, `entropy`, `value_loss`, `valid_actions`);
* `DERIVED` quantities computed from those: `entropy_ratio` (entropy / log(valid actions),
  0 = deterministic, 1 = uniform) and `value_loss_rise` (value_loss over the previous
  validation's, minus 1; needs `previous`);
* the phase's value-coefficient range `vf_phase_lo` / `vf_phase_hi` (`vf_range`).
A rule that needs a quantity the row lacks (or holds as NaN / inf) is skipped, and
`Decision.skipped` says which and why: the leverage rule is skipped in the portfolio env
(it reports no leverage) and applies to an env whose validation does.

The table, in order (the reference's "Parameter Decision Guide", "Parameter Adjustment
Rules", "Highly Negative Explained Variance" and "Value Function Coefficient Guidelines";
the numbers it does not give are this module's choices, marked *):

  rule                    when                                  then
  negative_explained_var  explained_variance < -0.5*            lr x0.5, vf_coef x2 (<= 2.0),
                                                                epochs max(e - 2, 3),
                                                                max_grad_norm min(m, 0.3)
  poor_performance        val_sharpe < 0, val_max_drawdown      lr x0.8, ent_coef x1.3,
                          > 0.15                                clip min(c x1.2, 0.3),
                                                                minibatch x1.2,
                                                                gae_lambda min(l x1.1, 0.99)
  high_drawdown           val_max_drawdown > 0.15               clip min(c x1.2, 0.3),
                                                                gae_lambda min(l x1.1, 0.99)
  high_leverage           val_avg_leverage > 3                  vf_coef x1.2* (<= 2.0)
  low_trading             val_n_trades < 10*                    ent_coef x1.2*, lr x0.9*
  stable_suboptimal       val_sharpe < 1.0*, val_max_drawdown   lr x0.9, ent_coef x1.1,
                          <= 0.15                               epochs + 1
  good_performance        val_sharpe >= 1.0*, val_max_drawdown  lr x1.1, ent_coef x0.9,
                          <= 0.15                               clip x0.9
  vf_up_negative_ev       explained_variance < 0, vf_coef <     vf_coef x1.2* (<= phase top)
                          vf_phase_hi
  vf_up_value_loss        value_loss_rise > 0.2*, vf_coef <     vf_coef x1.2* (<= phase top)
                          vf_phase_hi
  vf_down_low_entropy     entropy_ratio < 0.2*, vf_coef >       vf_coef x0.8* (>= phase bottom)
                          vf_phase_lo
  vf_down_stable          as stable_suboptimal, vf_coef >       vf_coef x0.8* (>= phase bottom)
                          vf_phase_lo
  vf_into_range_up        vf_coef < vf_phase_lo                 vf_coef = vf_phase_lo
  vf_into_range_down      vf_coef > vf_phase_hi                 vf_coef = vf_phase_hi

"lr" is both `actor_lr` and `critic_lr` (the reference's one learning rate); the
reference's batch_size is the minibatch (`minibatch_size`, env steps) and n_epochs is
`ppo_epochs`. "Low Sharpe" is below 1.0 (annualised), so that stable-but-suboptimal and
good performance split the low-drawdown runs without overlap (the reference's "positive"
Sharpe is read as at least that); a negative Sharpe with a drawdown of at most 15% is
stable but suboptimal. "Highly negative" explained variance is below -0.5 (the value
function explains less than nothing by half the returns' variance); any negative value
raises vf_coef gently within the phase's range. "Low trades" is fewer than 10 trades in
the validation walk. The phase ranges of vf_coef are the reference's (0-1M 0.8-1.2,
1M-3M 0.6-0.8, 3M-5M 0.4-0.6, 5M-10M 0.3-0.5, `VF_PHASES`), their ends in its 10M-step
timeline times the run's `schedule_scale`; its special cases are the sane range of
vf_coef (up to 2.0 for highly negative explained variance, down to 0.2). Its "during high
volatility keep 0.6-0.8" needs a volatility regime the row does not carry: not a rule.

Conflicts: the first rule in the table's order that names a key decides it (the urgent
fixes come first); a later fired rule's change to that key is reported in
`Decision.overridden` and not applied. A rule claims its keys even when its result equals
the current value (e.g. clip already at 0.3): it says where the value should be.

Every result is clamped to `SANE[key]`, and integers (`ppo_epochs`, `minibatch_size`)
are rounded; a minibatch size must still divide the run's batch, which the caller
checks. An adjustment whose clamped value equals the old one is not listed.

`HparamsLog` appends to `RUN_DIR/hparams.jsonl`, one JSON object a line, two kinds:

    {"type": "change", "iteration": 40, "timestep": 163840, "phase": 2,
     "changes": [{"rule": ..., "key": ..., "old": ..., "new": ...}, ...],
     "fired": [{"rule": ..., "metrics": {name: value}}, ...],
     "metrics": {name: value}}          # the union of the fired rules' triggers
    {"type": "effect", "iteration": 50, "timestep": 204800, "of": 40,
     "metrics": {name: value}}          # the same names at the next validation walk

written at a validation where something changed, and at the validation after it: "of"
is the iteration of the change it follows. A resumed run drops the records after its
checkpoint's iteration (`truncate`), so a change whose effect was dropped gets it again
at the next validation. `read(run_dir)` returns the change records, each with its
"effect" (the effect record's metrics, iteration and timestep; None while pending).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxtrade.rows import number

# Sane range of each adjustable value: every result is clamped into it.
SANE: dict[str, tuple[float, float]] = {
    "actor_lr": (1e-6, 1e-2),
    "critic_lr": (1e-6, 1e-2),
    "ent_coef": (0.0, 0.2),
    "clip": (0.05, 0.4),
    "vf_coef": (0.2, 2.0),  # the reference's special cases
    "gae_lambda": (0.8, 0.99),
    "gamma": (0.9, 0.9999),
    "max_grad_norm": (0.1, 10.0),
    "ppo_epochs": (1, 20),
    "minibatch_size": (1, 2**24),
}
INTEGER_KEYS = frozenset({"ppo_epochs", "minibatch_size"})
SHAPE_KEYS = ("ppo_epochs", "minibatch_size")

# The reference's vf_coef range per phase: (end in its 10M-step timeline, lowest, highest).
VF_PHASES: tuple[tuple[float, float, float], ...] = (
    (1_000_000, 0.8, 1.2),
    (3_000_000, 0.6, 0.8),
    (5_000_000, 0.4, 0.6),
    (10_000_000, 0.3, 0.5),
)

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}
_CHANGES: dict[str, Callable[[float, float], float]] = {
    "mul": lambda old, v: old * v, "add": lambda old, v: old + v,
    "set": lambda old, v: v, "min": min,
}


@dataclasses.dataclass(frozen=True)
class Condition:
    """`name op value` holds; `value` is a number or the name of a quantity."""

    name: str
    op: str  # one of "<", "<=", ">", ">="
    value: float | str

    def needs(self) -> tuple[str, ...]:
        return (self.name, *((self.value,) if isinstance(self.value, str) else ()))


@dataclasses.dataclass(frozen=True)
class Change:
    """new = clamp(op(old, value), lo, hi); `value`, `lo`, `hi` are numbers or names."""

    key: str
    op: str  # "mul", "add", "set" or "min"
    value: float | str
    lo: float | str | None = None
    hi: float | str | None = None


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    when: tuple[Condition, ...]  # all must hold
    then: tuple[Change, ...]


@dataclasses.dataclass(frozen=True)
class Adjustment:
    """One change of a hyperparameter (`key`: a runtime hyperparameter, or a shape setting
    `ppo_epochs` / `minibatch_size`) by `rule`."""

    rule: str
    key: str
    old: float
    new: float


@dataclasses.dataclass(frozen=True)
class Fired:
    """A rule whose conditions held, with the values they read."""

    rule: str
    metrics: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Skipped:
    rule: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Decision:
    adjustments: tuple[Adjustment, ...]  # at most one per key, in the table's order
    fired: tuple[Fired, ...]
    skipped: tuple[Skipped, ...]
    overridden: tuple[Adjustment, ...]  # fired rules' changes to keys an earlier rule took

    def hparams(self) -> dict[str, float]:
        """The runtime hyperparameters to set (`jaxtrade.trainer.set_hparams` keywords)."""
        return {a.key: a.new for a in self.adjustments if a.key not in SHAPE_KEYS}

    def shapes(self) -> dict[str, int]:
        """The shape settings to change (a recompile)."""
        return {a.key: int(a.new) for a in self.adjustments if a.key in SHAPE_KEYS}

    def triggers(self) -> dict[str, float]:
        """Every value that fired a rule (the union over `fired`)."""
        return {k: v for f in self.fired for k, v in f.metrics.items()}


def _lr(op: str, value: float) -> tuple[Change, ...]:
    return (Change("actor_lr", op, value), Change("critic_lr", op, value))


_LOW_DD = Condition("val_max_drawdown", "<=", 0.15)
_HIGH_DD = Condition("val_max_drawdown", ">", 0.15)
_STABLE = (Condition("val_sharpe", "<", 1.0), _LOW_DD)

REFERENCE: tuple[Rule, ...] = (
    Rule("negative_explained_var", (Condition("explained_variance", "<", -0.5),),
         (*_lr("mul", 0.5), Change("vf_coef", "mul", 2.0, hi=2.0),
          Change("ppo_epochs", "add", -2, lo=3), Change("max_grad_norm", "min", 0.3))),
    Rule("poor_performance", (Condition("val_sharpe", "<", 0.0), _HIGH_DD),
         (*_lr("mul", 0.8), Change("ent_coef", "mul", 1.3), Change("clip", "mul", 1.2, hi=0.3),
          Change("minibatch_size", "mul", 1.2), Change("gae_lambda", "mul", 1.1, hi=0.99))),
    Rule("high_drawdown", (_HIGH_DD,),
         (Change("clip", "mul", 1.2, hi=0.3), Change("gae_lambda", "mul", 1.1, hi=0.99))),
    Rule("high_leverage", (Condition("val_avg_leverage", ">", 3.0),),
         (Change("vf_coef", "mul", 1.2),)),
    Rule("low_trading", (Condition("val_n_trades", "<", 10),),
         (Change("ent_coef", "mul", 1.2), *_lr("mul", 0.9))),
    Rule("stable_suboptimal", _STABLE,
         (*_lr("mul", 0.9), Change("ent_coef", "mul", 1.1), Change("ppo_epochs", "add", 1))),
    Rule("good_performance", (Condition("val_sharpe", ">=", 1.0), _LOW_DD),
         (*_lr("mul", 1.1), Change("ent_coef", "mul", 0.9), Change("clip", "mul", 0.9))),
    Rule("vf_up_negative_ev",
         (Condition("explained_variance", "<", 0.0), Condition("vf_coef", "<", "vf_phase_hi")),
         (Change("vf_coef", "mul", 1.2, hi="vf_phase_hi"),)),
    Rule("vf_up_value_loss",
         (Condition("value_loss_rise", ">", 0.2), Condition("vf_coef", "<", "vf_phase_hi")),
         (Change("vf_coef", "mul", 1.2, hi="vf_phase_hi"),)),
    Rule("vf_down_low_entropy",
         (Condition("entropy_ratio", "<", 0.2), Condition("vf_coef", ">", "vf_phase_lo")),
         (Change("vf_coef", "mul", 0.8, lo="vf_phase_lo"),)),
    Rule("vf_down_stable", (*_STABLE, Condition("vf_coef", ">", "vf_phase_lo")),
         (Change("vf_coef", "mul", 0.8, lo="vf_phase_lo"),)),
    Rule("vf_into_range_up", (Condition("vf_coef", "<", "vf_phase_lo"),),
         (Change("vf_coef", "set", "vf_phase_lo"),)),
    Rule("vf_into_range_down", (Condition("vf_coef", ">", "vf_phase_hi"),),
         (Change("vf_coef", "set", "vf_phase_hi"),)),
)


def _entropy_ratio(q: Mapping[str, float]) -> float:
    n = q["valid_actions"]
    return q["entropy"] / math.log(n) if n > 1 else math.nan


# Quantities computed from the row: name -> (the names it reads, how). `prev_X` is X at the
# previous validation (`decide`'s `previous`).
DERIVED: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, float]], float]]] = {
    "entropy_ratio": (("entropy", "valid_actions"), _entropy_ratio),
    "value_loss_rise": (("value_loss", "prev_value_loss"),
                        lambda q: q["value_loss"] / q["prev_value_loss"] - 1.0
                        if q["prev_value_loss"] > 0 else math.nan),
}


def vf_range(timestep: float, scale: float = 1.0) -> tuple[float, float]:
    """The reference's vf_coef range for the phase `timestep` is in, its phase ends scaled
    by `scale` (`[run] schedule_scale`); after the last, the last phase's."""
    for end, lo, hi in VF_PHASES:
        if timestep < end * scale:
            return lo, hi
    return VF_PHASES[-1][1:]


def _number(v: Any) -> float | None:
    """`v` as a finite float, or None (missing, not a number, NaN or inf)."""
    x = number(v)
    return x if x is not None and math.isfinite(x) else None


def observed(metrics: Mapping[str, Any], previous: Mapping[str, Any] | None = None
             ) -> dict[str, float]:
    """The finite numbers of `metrics`, `previous`'s as `prev_<name>`, and the `DERIVED`
    quantities that can be computed from them."""
    q = {k: x for k, v in metrics.items() if (x := _number(v)) is not None}
    q.update({f"prev_{k}": x for k, v in (previous or {}).items()
              if (x := _number(v)) is not None})
    for name, (reads, fn) in DERIVED.items():
        if all(r in q for r in reads) and (x := _number(fn(q))) is not None:
            q[name] = x
    return q


def _missing_reason(name: str) -> str:
    if name in DERIVED:
        reads = DERIVED[name][0]
        return f"needs {name}, computed from {', '.join(reads)}, which this row lacks"
    return f"needs {name}, which this row lacks (or holds as NaN)"


def decide(
    metrics: Mapping[str, Any],
    hparams: Mapping[str, float],
    shapes: Mapping[str, float],
    timestep: float,
    scale: float = 1.0,
    book: Sequence[Rule] = REFERENCE,
    previous: Mapping[str, Any] | None = None,
) -> Decision:
    """The adjustments `book` makes at one validation (see the module docstring).

    Args:
        metrics: the validation's metrics row (val_* and training metrics).
        hparams: the current runtime hyperparameters.
        shapes: {"ppo_epochs": int, "minibatch_size": env steps per minibatch}.
        timestep: the run's timestep (places it in a phase of `VF_PHASES`).
        scale: the run's schedule_scale (the phases' ends are scaled by it).
        book: the rules, in priority order.
        previous: the metrics row of the previous validation (for value_loss_rise); None
            at the first.
    """
    lo, hi = vf_range(timestep, scale)
    q = {**observed(metrics, previous), "vf_phase_lo": lo, "vf_phase_hi": hi}
    current = {k: float(v) for k, v in {**shapes, **hparams}.items()}
    q.update(current)  # the live values, not the row's copy of them

    def resolve(v: float | str | None) -> float | None:
        return q[v] if isinstance(v, str) else v

    adjustments, fired, skipped, overridden = [], [], [], []
    taken: set[str] = set()
    for rule in book:
        needs = [n for c in rule.when for n in c.needs()]
        missing = next((n for n in needs if n not in q), None)
        if missing is not None:
            skipped.append(Skipped(rule.name, _missing_reason(missing)))
            continue
        if not all(_OPS[c.op](q[c.name], resolve(c.value)) for c in rule.when):
            continue
        fired.append(Fired(rule.name, {n: q[n] for n in dict.fromkeys(needs)}))
        for change in rule.then:
            if change.key not in current:
                skipped.append(Skipped(rule.name, f"cannot change {change.key}: not among the "
                                                  f"hyperparameters and shapes given"))
                continue
            old = current[change.key]
            new = _CHANGES[change.op](old, resolve(change.value))
            bounds = (resolve(change.lo), resolve(change.hi), *SANE[change.key])
            new = min(max(new, *(b for b in bounds[::2] if b is not None)),
                      *(b for b in bounds[1::2] if b is not None))
            if change.key in INTEGER_KEYS:
                new = float(round(new))
            adjustment = Adjustment(rule.name, change.key, old, new)
            if change.key in taken:
                overridden.append(adjustment)
                continue
            taken.add(change.key)
            if not math.isclose(new, old, rel_tol=1e-6):  # a float32 copy of the same value
                adjustments.append(adjustment)
    return Decision(tuple(adjustments), tuple(fired), tuple(skipped), tuple(overridden))


# ---------------------------------------------------------------------------
# hparams.jsonl

HPARAMS_FILE = "hparams.jsonl"


def _read_records(path: Path) -> list[dict]:
    """The records of `path` (a torn last line, from a process killed mid-write, dropped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class HparamsLog:
    """`RUN_DIR/hparams.jsonl` (the module docstring's format); host-only, append-only."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / HPARAMS_FILE
        self._pending: dict | None = self._last_pending()

    def _last_pending(self) -> dict | None:
        """The last change record, if no effect record follows it."""
        records = _read_records(self.path)
        last = records[-1] if records else None
        return last if last is not None and last.get("type") == "change" else None

    def _append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def record(self, iteration: int, timestep: int, phase: int | None, decision: Decision,
               metrics: Mapping[str, Any], previous: Mapping[str, Any] | None = None) -> None:
        """Call at every validation walk, after `decide`, with the same row (and previous
        row): writes the effect of the last change, if one is waiting for it, and then the
        change `decision` makes, if any."""
        if self._pending is not None:
            q = observed(metrics, previous)
            self._append({"type": "effect", "iteration": iteration, "timestep": timestep,
                          "of": self._pending["iteration"],
                          "metrics": {k: q.get(k) for k in self._pending["metrics"]}})
            self._pending = None
        if decision.adjustments:
            change = {
                "type": "change", "iteration": iteration, "timestep": timestep, "phase": phase,
                "changes": [dataclasses.asdict(a) for a in decision.adjustments],
                "fired": [dataclasses.asdict(f) for f in decision.fired],
                "metrics": decision.triggers(),
            }
            self._append(change)
            self._pending = change

    def truncate(self, iteration: int) -> tuple[int, int]:
        """Keeps the records up to `iteration` (a resumed run's checkpoint), as
        `jaxtrade.checkpoint.truncate_metrics` keeps metrics.jsonl's rows; returns (records
        kept, dropped)."""
        from jaxtrade.checkpoint import truncate_metrics

        counts = truncate_metrics(self.path, iteration)
        self._pending = self._last_pending()
        return counts


def read(run_dir: str | os.PathLike) -> list[dict]:
    """The change records of `run_dir`'s hparams.jsonl in order, each with "effect": the
    effect record that points at it ({"iteration", "timestep", "metrics"}) or None."""
    records = _read_records(Path(run_dir) / HPARAMS_FILE)
    effects = {r["of"]: r for r in records if r.get("type") == "effect"}
    out = []
    for r in records:
        if r.get("type") != "change":
            continue
        e = effects.get(r["iteration"])
        out.append({**r, "effect": None if e is None else
                    {k: e[k] for k in ("iteration", "timestep", "metrics")}})
    return out

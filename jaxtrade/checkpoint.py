"""Checkpoints of a run: Orbax saves of the whole `TrainState` with JSON metadata, resume
and warm starts (host-only: nothing here runs under `jit`; signals during a run are
`jaxtrade.engine.signals`').

A run directory holds `checkpoints/<iteration>/`, each with two Orbax items (and Orbax's
own `metrics` item, the score that ranks it):

    state   the whole TrainState (params, both optimizer states, env states, recurrent states,
            RNG key, hyperparameters, counters); the typed PRNG key is stored as its
            uint32 key data and re-wrapped on restore
    meta    JSON: the resolved config, the latest metrics row and a short history, the
            best score so far, lineage (parent run and checkpoint, generation, timesteps
            trained including ancestors), and whether the save was interrupted or final

Saves are asynchronous and atomic: Orbax writes into `<step>.orbax-checkpoint-tmp-*` and
renames it when every item is written, so a save killed half-way leaves only a tmp
directory that `latest_step()` ignores and the next manager removes. Restoring the whole
state under the same config and device count continues a run bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import shlex
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxtrade import __version__, parallel, ppo
from jaxtrade import config as cfgmod
from jaxtrade.trainer import HPARAM_NAMES, HParams, Trainer, TrainState

CHECKPOINT_DIR = "checkpoints"  # under the run directory
FORMAT = 4  # layout version, bumped when it changes incompatibly (`_legacy_layout` reads
# the older ones). 4: dropout is a runtime hyperparameter (in HParams); 3: max_grad_norm is
# one (in HParams and injected in both optimizer chains); 2: the recurrent state is
# env-first ([B, L, H]); 1: the GRU state was [L, B, H]
SCORE_KEY = "episode_return_mean"  # ranks checkpoints until a validation score exists
VAL_SCORE_KEY = "val_score"  # the validation score, preferred when a metrics row has it
# Rank of a checkpoint without a validation score in a run that evaluates: below every
# val_score (`jaxtrade.metrics.model_score` lies in [-90, 90]), so that the best checkpoint
# is always an evaluated one and scores of different scales are never compared.
UNEVALUATED = -1000.0
# Headline metrics kept per iteration in the metadata (metrics.jsonl has every column).
HISTORY_KEYS = (
    "episode_return_mean", "policy_loss", "value_loss", "entropy", "approx_kl",
    "explained_variance",
)
# Settings a resumed run may not change (`setting(shape=True)` in the config): they fix
# array shapes, the market, or the compiled program's numerics (precision). Start a new run
# from the weights instead (--checkpoint RUN --weights-only).
SHAPE_FIELDS = cfgmod.SHAPE_FIELDS


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or does not fit; the message is one line."""


# ---------------------------------------------------------------------------
# Metadata pieces.


@dataclasses.dataclass(frozen=True)
class Lineage:
    """Where a run's weights came from."""

    parent_run: str | None = None  # run directory this run started from; None = from scratch
    parent_checkpoint: int | None = None  # the parent's checkpoint step (its iteration)
    generation: int = 0  # 0 from scratch; parent's + 1 for each start from a checkpoint
    base_timesteps: int = 0  # timesteps trained by ancestors, not in this run's own counter
    start: str = "new"  # new | checkpoint (whole state) | weights (params only) | fresh

    def total_timesteps(self, timesteps: int) -> int:
        """Timesteps behind the weights after this run trained `timesteps` of its own."""
        return self.base_timesteps + timesteps

    def to_dict(self, timesteps: int) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_timesteps": self.total_timesteps(timesteps)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Lineage:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    @classmethod
    def child(cls, parent: Lineage, parent_run: str, step: int, timesteps: int,
              start: str) -> Lineage:
        """The lineage of a run started from checkpoint `step` (after `timesteps` of the
        parent's own) of `parent_run`, whose lineage is `parent`.

        start: "checkpoint" (whole state: the iteration counter carries on), "weights"
        (params only: counters restart) or "fresh" (nothing inherited).
        """
        if start == "fresh":
            return cls(parent_run, step, 0, 0, start)
        base = parent.base_timesteps if start == "checkpoint" else parent.total_timesteps(timesteps)
        return cls(parent_run, step, parent.generation + 1, base, start)


def score(row: Mapping[str, Any], evaluating: bool = False) -> float:
    """What ranks checkpoints: the validation score when the row has one; else, in a run that
    evaluates (`evaluating`), `UNEVALUATED`, and in one that does not, mean episode return."""
    if VAL_SCORE_KEY in row:
        return float(row[VAL_SCORE_KEY])
    return UNEVALUATED if evaluating else float(row[SCORE_KEY])


def resume_command(run_dir: str | os.PathLike) -> str:
    """The command that continues the run in `run_dir`."""
    return f"python -m jaxtrade.train --run-dir {shlex.quote(os.fspath(run_dir))} --resume"


# ---------------------------------------------------------------------------
# The saved form of a TrainState.


def _saveable(state: TrainState) -> TrainState:
    """`state` with the typed PRNG key as its raw uint32 key data (Orbax stores plain arrays)."""
    return state.replace(rng=jax.random.key_data(state.rng))


def _default_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def abstract_state(trainer: Trainer, sharding: Any = None) -> TrainState:
    """Shapes, dtypes and placement of `trainer`'s TrainState in saved form (restore target).

    `sharding`: one sharding or a tree of them; default `trainer.state_shardings`, so that
    each device (each process, in a multi-process run) reads only its own envs.
    """
    sharding = sharding if sharding is not None else trainer.state_shardings
    shapes = jax.eval_shape(lambda k: _saveable(trainer.init(k)), jax.random.key(0))
    if isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.tree.map(lambda _: sharding, shapes)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, sharding
    )


def _path_str(path: tuple) -> str:
    """'params/encoder/dense_0/kernel' for a key path (dict keys, fields and indices alike)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """{'a/b/c': shape} for every array leaf (arrays, ShapeDtypeStructs or Orbax metadata)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(p): tuple(x.shape) for p, x in leaves}


def first_shape_mismatch(
    saved: Mapping[str, tuple], new: Mapping[str, tuple]
) -> tuple[str, tuple | None, tuple | None] | None:
    """The first path (in sorted order) whose shape differs, as (path, saved, new), or None.

    A path present on one side only has None as its other shape.
    """
    for path in sorted(set(saved) | set(new)):
        if saved.get(path) != new.get(path):
            return path, saved.get(path), new.get(path)
    return None


def _shape_str(shape: tuple | None) -> str:
    return "absent" if shape is None else str(tuple(shape))


# ---------------------------------------------------------------------------
# Finding checkpoints.


def _is_step_dir(p: Path) -> bool:
    return p.is_dir() and p.name.isdigit()


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@dataclasses.dataclass(frozen=True)
class Source:
    """One complete checkpoint: `directory/<step>` (directory is a run's `checkpoints/`)."""

    directory: Path
    step: int
    meta: dict

    @property
    def path(self) -> Path:
        return self.directory / str(self.step)

    @property
    def run_dir(self) -> Path:
        return self.directory.parent

    @property
    def config(self) -> cfgmod.Config:
        """The config the checkpoint was trained with."""
        return cfgmod.from_saved(self.meta["config"], source=self.path / "meta")

    @property
    def model_config(self) -> cfgmod.Config:
        """The config with the network that wrote the checkpoint, to evaluate or deploy it:
        the run's, with the network settings a schedule phase gave the program (a grown
        transformer's heads and layers), as the checkpoint records them (`network`), or
        for a checkpoint saved before it did, as its schedule record's phase implies."""
        saved = self.meta["config"]
        if self.meta.get("network"):
            return cfgmod.from_saved({**saved, "network": self.meta["network"]},
                                     source=self.path / "meta")
        cfg = self.config
        record = self.meta.get("schedule") or {}
        if record.get("phase") is None or cfg.run.schedule is None:
            return cfg
        from jaxtrade import schedule

        try:
            plan = schedule.load(cfg.run.schedule)
        except schedule.ScheduleError:  # the file moved: the run's network is the best guess
            return cfg
        phased = schedule.phase_config(plan, cfg, int(record["phase"]), self.meta.get(
            "n_devices", 1))[0]
        return dataclasses.replace(cfg, network=phased.network)

    @property
    def lineage(self) -> Lineage:
        return Lineage.from_dict(self.meta.get("lineage", {}))


def _item_handlers() -> dict[str, Any]:
    return {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


def _read_only_manager(directory: Path, arrays: tuple[str, ...] = ()) -> ocp.CheckpointManager:
    """A manager that reads `directory` and never writes or deletes there (another run's);
    `arrays`: more items of arrays than `state` (a population checkpoint's `best`)."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    # Orbax warns on every read-only open ("Given directory is read only"); here read-only
    # is the intent, so the warning would only be noise on the CLI's stderr.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        return ocp.CheckpointManager(
            Path(directory).absolute(), options=options,
            item_handlers={**_item_handlers(),
                           **{k: ocp.StandardCheckpointHandler() for k in arrays}},
        )
    finally:
        absl_logger.setLevel(level)


def _read_meta(directory: Path, step: int) -> dict:
    meta_file = directory / str(step) / "meta" / "metadata"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{directory / str(step)}: cannot read checkpoint metadata ({_one_line(e)})"
        ) from None
    if not isinstance(meta, dict) or "config" not in meta or "iteration" not in meta:
        raise CheckpointError(f"{meta_file}: not jaxtrade checkpoint metadata")
    if meta.get("format", 0) > FORMAT:
        raise CheckpointError(
            f"{directory / str(step)}: written by a newer jaxtrade (format {meta['format']}, "
            f"this one reads {FORMAT}); upgrade jaxtrade"
        )
    return meta


def latest(run_dir: str | os.PathLike, *, purpose: str = "to resume from") -> Source:
    """The latest complete checkpoint of the run in `run_dir`; `purpose` words the error.

    Raises:
        CheckpointError: no such directory, no complete checkpoint, or unreadable metadata.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    directory = run_dir / CHECKPOINT_DIR
    step = _read_only_manager(directory).latest_step() if directory.is_dir() else None
    if step is None:
        partial = sorted(p.name for p in directory.glob("*.orbax-checkpoint-tmp*"))
        hint = f" (only unfinished saves: {', '.join(partial)})" if partial else ""
        raise CheckpointError(
            f"{run_dir}: no complete checkpoint{' ' + purpose if purpose else ''} in "
            f"{directory}{hint}"
        )
    return Source(directory, step, _read_meta(directory, step))


def select(run_dir: str | os.PathLike, which: str | int = "best") -> Source:
    """Checkpoint `which` of the run in `run_dir`: "best" (the best-ranked by `score`, as the
    run recorded it), "latest", or an iteration number.

    Raises:
        CheckpointError: no such run, no complete checkpoint, a bad name, or no checkpoint
            at that iteration (the message lists those kept).
    """
    text = str(which).strip()
    if text not in ("best", "latest") and not text.isdigit():
        raise CheckpointError(
            f"checkpoint must be 'best', 'latest' or an iteration number, got {str(which)!r}"
        )
    last = latest(run_dir, purpose="")
    steps = sorted(_read_only_manager(last.directory).all_steps())
    if text == "latest":
        return last
    if text == "best":
        best = last.meta.get("best") or {}
        step = best.get("iteration", last.step)
        if step not in steps:  # the best one was not kept: rank the ones that were
            metas = {s: _read_meta(last.directory, s) for s in steps}
            evaluating = any(VAL_SCORE_KEY in (m.get("metrics") or {}) for m in metas.values())
            ranked = [(score(m["metrics"], evaluating), s) for s, m in metas.items()
                      if m.get("metrics")]
            step = max(ranked)[1] if ranked else last.step
    else:
        step = int(text)
        if step not in steps:
            raise CheckpointError(
                f"{run_dir}: no checkpoint at iteration {step} (kept: "
                f"{', '.join(map(str, steps))})"
            )
    if step == last.step:
        return last
    return Source(last.directory, step, _read_meta(last.directory, step))


def locate(path: str | os.PathLike) -> Source:
    """A checkpoint named by a run directory (its latest), a `checkpoints/` directory (its
    latest) or a step directory (`RUN/checkpoints/12`).

    Raises:
        CheckpointError: the path does not exist, is an unfinished save, or holds no
            complete checkpoint.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint or run directory")
    if ".orbax-checkpoint-tmp" in p.name:
        raise CheckpointError(f"{p}: an unfinished save (the process stopped while writing it)")
    if (p / CHECKPOINT_DIR).is_dir():
        return latest(p)
    if _is_step_dir(p):
        step = int(p.name)
        if step not in _read_only_manager(p.parent).all_steps():
            raise CheckpointError(f"{p}: not a complete checkpoint")
        return Source(p.parent, step, _read_meta(p.parent, step))
    if p.is_dir() and any(_is_step_dir(c) for c in p.iterdir()):
        return latest(p.parent)
    raise CheckpointError(f"{p}: not a run directory or checkpoint")


# ---------------------------------------------------------------------------
# Restoring.


def _quiet_failed_reads() -> Callable[[], None]:
    """Drops the "Event loop is closed" errors of reads still in flight when a restore fails;
    returns the function that puts the previous hook back.

    When one array of a damaged checkpoint fails to read, Orbax's event loop closes while
    TensorStore still completes the other reads; each completion then reports an
    unraisable RuntimeError, dozens of tracebacks around the one-line error. Other
    unraisable errors still reach the previous hook.
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    return lambda: setattr(sys, "unraisablehook", previous)


def _read(source: Source, read: Callable[[ocp.CheckpointManager], Any]) -> Any:
    """`read(manager)` on `source`'s directory; any failure becomes one CheckpointError."""
    put_back = _quiet_failed_reads()
    try:
        result = read(_read_only_manager(source.directory))
    except Exception as e:  # noqa: BLE001 - whatever broke, the message names the checkpoint
        # The hook stays: late reads keep completing after this error is reported.
        raise CheckpointError(f"{source.path}: cannot read checkpoint ({_one_line(e)})") from None
    put_back()
    return result


def _saved_tree_metadata(source: Source) -> Any:
    """The saved state's tree of array metadata (shapes, dtypes), without reading arrays."""
    return _read(source, lambda m: m.item_metadata(source.step)["state"].tree)


def _restore(source: Source, target: Any) -> Any:
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
    return _read(source, lambda m: m.restore(source.step, args=args).state)


def _mismatch(source: Source, what: str, on_mismatch: str, saved: Any, new: Any) -> bool:
    """Reports the first differing leaf of `saved` and `new` (shape trees); True if any.

    on_mismatch: "fresh" warns on stderr; "error" raises, suggesting --on-mismatch fresh;
    "refuse" raises without the suggestion (a resume cannot start fresh).
    """
    mismatch = first_shape_mismatch(leaf_shapes(saved), leaf_shapes(new))
    if mismatch is None:
        return False
    path, saved_shape, new_shape = mismatch
    text = (
        f"{what} mismatch with {source.path}: {path} is {_shape_str(saved_shape)} in the "
        f"checkpoint but {_shape_str(new_shape)} in this run"
    )
    if on_mismatch == "fresh":
        print(f"warning: {text}; starting from fresh weights (--on-mismatch fresh)",
              file=sys.stderr)
        return True
    if on_mismatch == "error":
        text += " (use --on-mismatch fresh to start from fresh weights)"
    raise CheckpointError(text)


def _legacy_layout(source: Source, target: TrainState, trainer: Trainer):
    """(restore target, upgrade) for `source`: the state of an older format is read in its
    own layout (`_legacy_target`), and `upgrade` turns it into today's.

    * format 1 held the GRU state as [L, B, H] (env axis second): read in that shape and
      transposed to [B, L, H];
    * a runtime hyperparameter added since (`ADDED_HPARAMS`: max_grad_norm in format 3,
      in `HParams` and injected in the optimizer chains, where the clip was a constant;
      dropout in format 4, where the rate was a constant of the network) is set to the
      saved config's value, which the old program used.
    """
    fmt = source.meta.get("format", 1)
    upgrades = []
    hidden = target.carry.hidden
    if fmt < 2 and isinstance(hidden, jax.ShapeDtypeStruct) and len(hidden.shape) == 3:
        b, n_layers, h = hidden.shape
        old = jax.ShapeDtypeStruct((n_layers, b, h), hidden.dtype,
                                   sharding=parallel.env_sharding(trainer.mesh, 1))
        target = target.replace(carry=target.carry.replace(hidden=old))
        upgrades.append(lambda state: state.replace(carry=state.carry.replace(
            hidden=jnp.transpose(state.carry.hidden, (1, 0, 2)))))
    if _missing_hparams(fmt):
        upgrades.append(_hparams_upgrade(source, trainer, fmt))
    target = _legacy_target(target, fmt)

    def upgrade(state: TrainState) -> TrainState:
        for step in upgrades:
            state = step(state)
        return state

    return target, upgrade


# Runtime hyperparameters by the format that added them (appended to `HParams`); older
# checkpoints restore them with their saved config's values.
ADDED_HPARAMS = {3: ("max_grad_norm",), 4: ("dropout",)}


def _missing_hparams(fmt: int) -> tuple[str, ...]:
    """The runtime hyperparameters a format-`fmt` state lacks."""
    return tuple(k for added, names in ADDED_HPARAMS.items() if fmt < added for k in names)


def _legacy_target(target: TrainState, fmt: int) -> TrainState:
    """`target` (a state, or its restore target) in the hyperparameter layout of format
    `fmt`: without the hyperparameters added since, its `HParams` as a dict of the others
    (the saved tree has their names, and no leaf for the new ones), and before format 3
    the optimizer states' injected hyperparameters without `max_grad_norm`."""
    missing = _missing_hparams(fmt)
    if not missing:
        return target

    def drop(items):
        return {k: v for k, v in items.items() if k not in missing}

    hp = target.hparams
    target = target.replace(hparams=drop({f.name: getattr(hp, f.name)
                                          for f in dataclasses.fields(hp)}))
    if "max_grad_norm" in missing:
        target = target.replace(
            actor_opt=target.actor_opt._replace(hyperparams=drop(target.actor_opt.hyperparams)),
            critic_opt=target.critic_opt._replace(
                hyperparams=drop(target.critic_opt.hyperparams)))
    return target


def _hparams_upgrade(source: Source, trainer: Trainer, fmt: int
                     ) -> Callable[[TrainState], TrainState]:
    """Completes a state read by `_legacy_target`'s target with the saved config's values
    of the hyperparameters format `fmt` lacks, placed as `trainer` places them (and
    `max_grad_norm` in both optimizer chains, where format 3 put it)."""
    missing = _missing_hparams(fmt)
    where = trainer.state_shardings.hparams

    def value(key: str) -> jax.Array:  # a buffer of its own per leaf: the program donates each
        return jax.device_put(jnp.float32(cfgmod.value_of(source.config, key)),
                              getattr(where, key))

    def upgrade(state: TrainState) -> TrainState:
        state = state.replace(hparams=HParams(**state.hparams, **{k: value(k) for k in missing}))
        if "max_grad_norm" in missing:
            state = state.replace(
                actor_opt=ppo.set_hyperparams(state.actor_opt, max_grad_norm=value(
                    "max_grad_norm")),
                critic_opt=ppo.set_hyperparams(state.critic_opt, max_grad_norm=value(
                    "max_grad_norm")))
        return state

    return upgrade


def restore_state(
    source: Source, trainer: Trainer, on_mismatch: str = "error"
) -> TrainState | None:
    """The whole TrainState of `source`, placed for `trainer` (resume and full-state starts).

    Args:
        on_mismatch: when a leaf's shape differs from `trainer`'s: "error" or "refuse"
            raise (the first suggests --on-mismatch fresh), "fresh" warns on stderr and
            returns None (the caller starts fresh).

    Raises:
        CheckpointError: unreadable, or a shape mismatch (named with both shapes).
    """
    target, upgrade = _legacy_layout(source, abstract_state(trainer), trainer)
    if _mismatch(source, "state", on_mismatch, _saved_tree_metadata(source), target):
        return None
    state = upgrade(_restore(source, target))
    impl = source.meta.get("rng_impl", "threefry2x32")
    return state.replace(rng=jax.random.wrap_key_data(state.rng, impl=impl))


def restore_params(source: Source, trainer: Trainer, on_mismatch: str = "error") -> dict | None:
    """The network parameters of `source` for a warm start of `trainer`'s network.

    Args:
        on_mismatch: when a parameter's shape differs: "error" raises naming the first
            differing parameter with its saved and new shapes; "fresh" warns on stderr and
            returns None (the caller keeps fresh weights).

    Raises:
        CheckpointError: unreadable, or an architecture mismatch with "error".
    """
    tree = _saved_tree_metadata(source)
    new = {"params": abstract_state(trainer).params}
    if _mismatch(source, "architecture", on_mismatch, {"params": tree["params"]}, new):
        return None
    return read_params(source, tree, sharding=parallel.replicated(trainer.mesh))


def read_params(
    source: Source, tree: Any = None, sharding: jax.sharding.Sharding | None = None
) -> dict:
    """The network parameters of `source` at their saved shapes, placed on `sharding`
    (default: the first device).

    The whole saved state is read (at its own shapes: n_envs may differ from any run's
    now) and all but the parameters dropped. `tree`: the saved tree metadata, when the
    caller has it already.

    Raises:
        CheckpointError: unreadable.
    """
    tree = _saved_tree_metadata(source) if tree is None else tree
    sharding = sharding or _default_sharding()
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
    return _restore(source, target)["params"]


def warm_start(fresh: TrainState, params: dict) -> TrainState:
    """`fresh` (new envs, optimizers, counters) with `params` in place of its initial weights."""
    placed = jax.tree.map(lambda p, f: jax.device_put(p, f.sharding), params, fresh.params)
    return fresh.replace(params=placed)


# ---------------------------------------------------------------------------
# Which settings a resume may change.


@dataclasses.dataclass(frozen=True)
class Change:
    """A setting that differs between the checkpoint and the resumed run."""

    key: str
    saved: Any
    new: Any

    def __str__(self) -> str:
        def show(v: Any) -> str:
            return f"{v:.6g}" if isinstance(v, float) else repr(v)

        return f"{self.key} {show(self.saved)} -> {show(self.new)}"




def resume_changes(
    saved: cfgmod.Config,
    new: cfgmod.Config,
    flag_of: Mapping[str, str] | None = None,
    *,
    what: str = "--resume",
) -> list[Change]:
    """The settings `new` changes from `saved`, after refusing any a resume cannot take.

    Hyperparameters (`HPARAM_NAMES`) are among the returned changes; the caller applies
    them to the restored state with `set_hparams`. `run_dir` is not compared.

    Args:
        flag_of: config key -> the CLI flag that sets it, to name it in messages
            (default: the config's `FLAG_OF`).
        what: how the caller started, named in messages.

    Raises:
        CheckpointError: a `SHAPE_FIELDS` setting or the seed differs; the message names
            the flag, the saved value and the new one.
    """
    flag_of = cfgmod.FLAG_OF if flag_of is None else flag_of
    a, b = cfgmod.values_of(saved), cfgmod.values_of(new)
    changes = [Change(k, a[k], b[k]) for k in a if k != "run_dir" and a[k] != b[k]]
    for c in changes:
        flag = flag_of.get(c.key, f"{c.key}=")
        shown = f"{flag} {c.new!r}" if flag.startswith("--") else f"{flag}{c.new!r}"
        if c.key in SHAPE_FIELDS:
            raise CheckpointError(
                f"{shown} would change array shapes or the market: the run was saved with "
                f"{c.key}={c.saved!r}; {what} keeps them (to train a new shape from these "
                f"weights use --checkpoint PATH --weights-only)"
            )
        if c.key == "seed":
            raise CheckpointError(
                f"{shown}: {what} continues the saved random stream of seed={c.saved!r}; a "
                f"new seed needs a new run"
            )
    return changes


def hparam_values(changes: list[Change]) -> dict[str, float]:
    """The hyperparameter changes among `changes`, as `set_hparams` keywords."""
    return {c.key: c.new for c in changes if c.key in HPARAM_NAMES}


# ---------------------------------------------------------------------------
# metrics.jsonl on resume.


def truncate_metrics(path: str | os.PathLike, iteration: int) -> tuple[int, int]:
    """Keeps the rows of `path` up to `iteration`; returns (rows kept, rows dropped).

    Rows after the checkpoint were produced by iterations a resume re-runs; a torn last
    line (a process killed mid-write) is dropped too. The file is replaced atomically.
    """
    path = Path(path)
    if not path.exists():
        return 0, 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if row.get("iteration", math.inf) <= iteration:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return len(kept), dropped


# ---------------------------------------------------------------------------
# Saving.


def _metric(metrics: Mapping[str, float]) -> float:
    return metrics["score"]


class _KeptSteps:
    """An Orbax preservation policy: the checkpoints of a set of steps that grows as the run
    goes (a schedule's phase ends, known only when a phase ends)."""

    def __init__(self, steps=()):
        self.steps = set(steps)

    def should_preserve(self, checkpoints, *, context) -> list[bool]:
        return [c.step in self.steps for c in checkpoints]


def _preservation(keep: int, kept: _KeptSteps) -> Any:
    """Keep the latest `keep` (the final and an interrupted one are always among them), the
    best-scoring checkpoint and those of `kept` (a schedule's phase ends)."""
    pp = ocp.checkpoint_managers
    return pp.AnyPreservationPolicy([
        pp.LatestN(n=keep),
        pp.BestN(get_metric_fn=_metric, reverse=False, n=1),
        kept,
    ])


class RunCheckpoints:
    """This run's `checkpoints/`: saves of the whole TrainState with metadata (host-only).

    Keeps the latest `config.run.keep_checkpoints`, the best by `score` and the final one.
    Saves are asynchronous: `save` returns once the state is copied and the write has
    started; call `close` (it waits) before the process exits.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: cfgmod.Config,
        *,
        lineage: Lineage = Lineage(),
        resumed: Mapping[str, Any] | None = None,
        evaluating: bool = False,
        n_devices: int | None = None,
        keep_steps: tuple[int, ...] = (),
    ):
        """`resumed`: the metadata of the checkpoint this run continues (history, best).
        `evaluating`: the run walks its validation range, so checkpoints rank by val_score
        (see `score`). `n_devices`: the devices the run trains on (default: all).
        `keep_steps`: iterations whose checkpoints are always kept (a schedule's phase ends);
        a save tagged with a phase adds its own.

        In a multi-process run every process creates this and calls `save` and `close`
        together: Orbax writes each process's shards and commits once."""
        self.n_devices = n_devices if n_devices is not None else jax.device_count()
        self.directory = Path(run_dir) / CHECKPOINT_DIR
        self.config = config
        self.lineage = lineage
        self.evaluating = evaluating
        resumed = resumed or {}
        self.history: dict[str, list] = {k: list(v) for k, v in resumed.get("history", {}).items()}
        self.best: dict | None = resumed.get("best")
        if evaluating and self.best and self.best.get("metric") != VAL_SCORE_KEY:
            self.best = None  # ranked by episode return before evaluation was on: not comparable
        self.last_row: dict = dict(resumed.get("metrics") or {})
        self.last_step: int | None = resumed.get("iteration")
        # Every validation walk compares one more candidate: counted for honest statistics
        # (`python -m jaxtrade.evaluate` deflates the chosen one's Sharpe ratio by them).
        self.selection: dict = copy.deepcopy(resumed.get("selection") or {
            "metric": VAL_SCORE_KEY, "validations": 0, "since_best": 0,
            "best_iteration": None, "best_score": None, "sharpes": []})
        self._kept = _KeptSteps(keep_steps)
        options = ocp.CheckpointManagerOptions(
            create=True,
            cleanup_tmp_directories=True,
            preservation_policy=_preservation(config.run.keep_checkpoints, self._kept),
            # Only with best_fn set does Orbax write each step's metrics, which the policy
            # needs to rank checkpoints saved by an earlier process.
            best_fn=_metric,
            best_mode="max",
        )
        # Orbax needs an absolute path; `directory` stays as given, for messages.
        self._manager = ocp.CheckpointManager(self.directory.absolute(), options=options)

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def record(self, row: Mapping[str, Any]) -> bool:
        """Notes one iteration's metrics row (call for every row, in order); True when the
        row holds a validation score above every earlier one (a new best candidate)."""
        self.last_row = dict(row)
        for k in ("iteration", *HISTORY_KEYS):
            if k in row:
                self.history.setdefault(k, []).append(row[k])
        if VAL_SCORE_KEY not in row:
            return False
        sel = self.selection
        sel["validations"] += 1
        sel["sharpes"].append(row.get("val_sharpe"))
        if "val_world_sharpe" in row:  # a worlds run: each candidate's Sharpe per world
            sel.setdefault("world_sharpes", []).append(row["val_world_sharpe"])
        new_best = sel["best_score"] is None or row[VAL_SCORE_KEY] > sel["best_score"]
        if new_best:
            sel.update(best_iteration=row["iteration"], best_score=row[VAL_SCORE_KEY],
                       since_best=0)
        else:
            sel["since_best"] += 1
        return new_best

    def metadata(
        self, iteration: int, *, interrupted: bool, final: bool, rng_impl: str = "threefry2x32",
        phase: str | None = None, extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The JSON saved next to the state of `iteration`; `phase`: the name of the schedule
        phase it ends, `extra`: more of the run's host state by key (the schedule's and the
        adjustment rules', `jaxtrade.engine.run`)."""
        steps = cfgmod.steps_per_iteration(self.config)
        return {
            "format": FORMAT,
            "iteration": iteration,
            "timesteps": iteration * steps,
            "interrupted": interrupted,
            "final": final,
            "saved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "jaxtrade_version": __version__,
            "jax_version": jax.__version__,
            "n_devices": self.n_devices,
            "rng_impl": rng_impl,
            "config": cfgmod.to_dict(self.config),
            "metrics": self.last_row,
            "history": self.history,
            "best": self.best,
            "selection": self.selection,
            "lineage": self.lineage.to_dict(iteration * steps),
            **({"phase": phase} if phase is not None else {}),  # the schedule phase it ends
            **(dict(extra) if extra else {}),
        }

    def save(
        self, state: TrainState, iteration: int, *, interrupted: bool = False, final: bool = False,
        phase: str | None = None, extra: Mapping[str, Any] | None = None,
    ) -> bool:
        """Starts saving `state` (after `iteration` iterations); False when that step exists.

        Call between host calls only, after the metrics rows up to `iteration` were checked
        finite and recorded.
        """
        if self.last_step is not None and iteration <= self.last_step:
            return False
        row_score = score(self.last_row, self.evaluating) if self.last_row else -math.inf
        if self.last_row and (self.best is None or row_score > self.best["score"]):
            self.best = {"iteration": iteration, "score": row_score,
                         "metric": VAL_SCORE_KEY if VAL_SCORE_KEY in self.last_row
                         else "unevaluated" if self.evaluating else SCORE_KEY}
        meta = self.metadata(iteration, interrupted=interrupted, final=final,
                             rng_impl=str(jax.random.key_impl(state.rng)), phase=phase,
                             extra=extra)
        if phase is not None:
            self._kept.steps.add(iteration)
        # A copy: the next host call donates `state`'s buffers while Orbax still reads these.
        snapshot = parallel.copy(_saveable(state))
        items = ocp.args.Composite(
            state=ocp.args.StandardSave(snapshot), meta=ocp.args.JsonSave(meta))
        saved = self._manager.save(
            iteration, args=items, metrics={"score": row_score}, force=True
        )
        if saved:
            self.last_step = iteration
        return saved

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the save in flight and releases the manager."""
        self._manager.close()

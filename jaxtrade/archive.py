"""The model archive: the best models of all runs and populations, kept after the runs
(host-only).

    python -m jaxtrade.archive add ckpt/my-run                 # its best checkpoint
    python -m jaxtrade.archive add ckpt/my-population          # each slot's best-scored model
    python -m jaxtrade.archive list                            # the table, best first
    python -m jaxtrade.archive show m0003                      # everything of one model
    python -m jaxtrade.archive lineage m0003                   # ancestors and descendants
    python -m jaxtrade.archive prune --top 20                  # keep the 20 best

    policy = jaxtrade.load_policy("archive:m0003")             # ckpt/archive's m0003
    policy = jaxtrade.archive.load_policy("m0003", archive="elsewhere/archive")

Layout of an archive directory (default `ckpt/archive`, `--archive DIR`):

    index.json              marks the directory as an archive; the next id; what was pruned
                            (id, parent, generation, score), so lineages stay whole
    models/<id>/            one model, itself a run directory of one checkpoint:
      entry.json            id, parent (an archived id or null), generation, timesteps
                            (its run's and in total with its ancestors'), the checkpoint's
                            validation score, the validation history, the data window,
                            the hyperparameters, test figures, where it came from, when
      config.json, market.json, env.json, ...   the run's records (its top-level .json)
      checkpoints/<step>/   the checkpoint (a run's copied as saved; a population
                            member's written from the population's checkpoint)
      eval/report.json      `python -m jaxtrade.evaluate --run-dir ARCHIVE/models/<id>`'s
                            report; its test figures show in `list` and `show`

Because every model is a run directory, everything that reads runs reads archived models:
`load_policy`, `python -m jaxtrade.evaluate --run-dir`, and continued training with
`python -m jaxtrade.train --checkpoint ARCHIVE/models/<id>`, whose run `add` then links to
its parent by itself (the checkpoint's lineage names the archived model it started from).

Ids are `m0001`, `m0002`, ... in the order added, never reused (a pruned id stays taken).
Models rank by the validation score of their checkpoint (`val_score`); scores are
comparable between runs validated on the same data only, which `list` does not check.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxtrade import checkpoint as ckpt
from jaxtrade.evaluation import EvaluationError

DEFAULT_DIR = "ckpt/archive"
PREFIX = "archive:"  # `load_policy("archive:ID")` / "archive:DIR:ID"
INDEX_FILE = "index.json"
ENTRY_FILE = "entry.json"
LOCK_FILE = ".lock"  # held by a process that adds or prunes
MODELS_DIR = "models"
EVAL_REPORT = Path("eval") / "report.json"  # `python -m jaxtrade.evaluate`'s default output
FORMAT = 1  # layout of the archive
DEFAULT_TOP = 20  # `prune`'s default
# Hyperparameters a metrics row records at the checkpoint (the values it trained with then,
# after any schedule or adjustment); the trainer's runtime ones.
HPARAM_KEYS = ("actor_lr", "critic_lr", "ent_coef", "clip", "vf_coef", "gamma", "gae_lambda",
               "max_grad_norm", "dropout")
# Test figures kept from an evaluation report's policy row.
TEST_KEYS = ("sharpe", "annual_return", "total_return", "max_drawdown", "dsr")


class ArchiveError(ValueError):
    """Not an archive, an unknown id, a run that cannot be archived; one line."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _finite(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _same_path(a: str | os.PathLike | None, b: str | os.PathLike | None) -> bool:
    if a is None or b is None:
        return False
    return os.path.realpath(a) == os.path.realpath(b)


def _rank(entry: Mapping[str, Any]) -> tuple[float, int]:
    """Sort key, best first: validation score (none: last), then the earlier id."""
    score = entry.get("val_score")
    return (-score if score is not None else math.inf, _number(entry["id"]))


def _number(model_id: str) -> int:
    return int(model_id[1:]) if model_id[1:].isdigit() else 0


# ------------------------------------------------------------------------ the archive
class Archive:
    """An archive directory (see the module docstring). `capacity`: after each `add`, keep
    only that many models, the best by validation score (None: keep all)."""

    def __init__(self, path: str | os.PathLike = DEFAULT_DIR, capacity: int | None = None):
        self.path = Path(path)
        self.capacity = capacity

    @property
    def models(self) -> Path:
        return self.path / MODELS_DIR

    # ------------------------------------------------------------------ reading
    def _index(self) -> dict:
        path = self.path / INDEX_FILE
        if not path.exists():
            if self.path.exists() and any(p.name != LOCK_FILE for p in self.path.iterdir()):
                raise ArchiveError(f"{self.path}: not a model archive (no {INDEX_FILE})")
            return {"format": FORMAT, "next_id": 1, "pruned": {}}
        try:
            index = json.loads(path.read_text())
            int(index["next_id"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ArchiveError(f"{path}: not a model archive index ({e})") from None
        if index.get("format", 0) > FORMAT:
            raise ArchiveError(f"{path}: written by a newer jaxtrade; upgrade jaxtrade")
        index.setdefault("pruned", {})
        return index

    def _write_index(self, index: dict) -> None:
        tmp = self.path / (INDEX_FILE + ".tmp")
        tmp.write_text(json.dumps(index, indent=2) + "\n")
        tmp.replace(self.path / INDEX_FILE)

    def exists(self) -> bool:
        return (self.path / INDEX_FILE).exists()

    def check(self) -> None:
        """Raise unless this is an archive (one `add` made it one)."""
        self._index()  # a directory of other things, or a broken index
        if not self.exists():
            raise ArchiveError(f"{self.path}: not a model archive (no {INDEX_FILE}; "
                               f"`python -m jaxtrade.archive add RUN_DIR` starts one)")

    def entries(self) -> list[dict]:
        """Every archived model's entry, best validation score first (test figures from
        an evaluation report in its directory filled in when the entry has none)."""
        if not self.exists():
            return []
        self._index()
        found = []
        for d in sorted(self.models.glob("m*")) if self.models.exists() else ():
            if (d / ENTRY_FILE).exists():
                found.append(self._read_entry(d))
        return sorted(found, key=_rank)

    def _read_entry(self, model_dir: Path) -> dict:
        try:
            entry = json.loads((model_dir / ENTRY_FILE).read_text())
        except (OSError, ValueError) as e:
            raise ArchiveError(f"{model_dir / ENTRY_FILE}: unreadable ({e})") from None
        if entry.get("test") is None:
            entry["test"] = test_figures(model_dir / EVAL_REPORT, entry.get("iteration"))
        return entry

    def entry(self, model_id: str) -> dict:
        """The entry of `model_id`.

        Raises:
          ArchiveError: not an archive, or no such id (pruned ones are named so).
        """
        self.check()
        d = self.models / str(model_id)
        if not (d / ENTRY_FILE).exists():
            pruned = self._index()["pruned"]
            why = " (pruned)" if model_id in pruned else ""
            known = ", ".join(e["id"] for e in self.entries()) or "none"
            raise ArchiveError(f"{self.path}: no model {model_id!r}{why}; archived: {known}")
        return self._read_entry(d)

    def model_dir(self, model_id: str) -> Path:
        """The run directory of archived model `model_id` (raises ArchiveError if unknown)."""
        return self.models / self.entry(model_id)["id"]

    def find_source(self, run_dir: str | os.PathLike, iteration: int | None = None,
                    member: int | None = None) -> dict | None:
        """The archived model that came from `run_dir` (its checkpoint `iteration`; a
        population's `member` id), or that is the model directory `run_dir` itself."""
        for e in self.entries():
            src = e["source"]
            if _same_path(self.models / e["id"], run_dir):
                return e
            if (_same_path(src["run"], run_dir)
                    and (iteration is None or src.get("iteration") == iteration)
                    and (member is None or src.get("member") == member)):
                return e
        return None

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        """The index, under an exclusive lock of the archive (concurrent adds and prunes
        from several processes are serialised); written back on success."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = self._index()
            yield index
            self._write_index(index)

    def add(self, fill, entry: Mapping[str, Any]) -> dict:
        """Archives one model: `fill(model_dir)` writes its run directory (records and one
        checkpoint) into a fresh directory; `entry` (all but id and added) becomes its
        entry.json. The directory appears whole or not at all. With a capacity, the
        archive is then pruned to it (possibly removing this model: see the returned
        entry's `kept`).

        Returns: the entry written, with `kept`.
        """
        with self._locked() as index:
            model_id = f"m{index['next_id']:04d}"
            index["next_id"] += 1
            self.models.mkdir(exist_ok=True)
            tmp = self.models / f".tmp-{model_id}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                fill(tmp)
                full = {"id": model_id, **{k: v for k, v in entry.items()
                                           if k not in ("id", "added", "kept")},
                        "added": _now()}
                full.setdefault("test", None)
                (tmp / ENTRY_FILE).write_text(json.dumps(full, indent=2) + "\n")
                tmp.rename(self.models / model_id)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            kept = True
            if self.capacity is not None:
                kept = model_id not in self._prune(index, self.capacity)
        return {**full, "kept": kept}

    def prune(self, top: int = DEFAULT_TOP) -> list[str]:
        """Keeps the `top` models by validation score, deleting the others' directories;
        returns the ids removed. Their id, parent, generation and score stay in the index,
        so that lineages through them still show."""
        if top < 0:
            raise ArchiveError(f"prune: --top must be >= 0, got {top}")
        self.check()
        with self._locked() as index:
            return self._prune(index, top)

    def _prune(self, index: dict, top: int) -> list[str]:
        removed = []
        for e in self.entries()[top:]:
            index["pruned"][e["id"]] = {k: e.get(k) for k in
                                        ("parent", "generation", "val_score", "total_timesteps")}
            shutil.rmtree(self.models / e["id"])
            removed.append(e["id"])
        return removed

    def set_test(self, model_id: str, figures: Mapping[str, Any] | None) -> dict:
        """Records test figures (e.g. from your own evaluation) in `model_id`'s entry."""
        d = self.model_dir(model_id)
        with self._locked():
            entry = json.loads((d / ENTRY_FILE).read_text())
            entry["test"] = None if figures is None else dict(figures)
            (d / ENTRY_FILE).write_text(json.dumps(entry, indent=2) + "\n")
        return entry

    def parent_of(self, model_id: str) -> str | None:
        """The parent id of an archived or pruned model (None: a root or unknown)."""
        d = self.models / model_id / ENTRY_FILE
        if d.exists():
            return json.loads(d.read_text()).get("parent")
        return (self._index()["pruned"].get(model_id) or {}).get("parent")


# ------------------------------------------------------------------ what an entry holds
def test_figures(report_path: Path, iteration: int | None) -> dict | None:
    """The test figures of an evaluation report (`python -m jaxtrade.evaluate`'s
    report.json) of checkpoint `iteration` on the test range: the policy's Sharpe ratio,
    returns, drawdown, deflated Sharpe ratio, the baseline and model score. None when
    there is no such report (another checkpoint, another range, unreadable)."""
    try:
        report = json.loads(Path(report_path).read_text())
        if (report.get("range") or {}).get("name") != "test":
            return None
        if iteration is not None and (report.get("checkpoint") or {}).get("iteration") != iteration:
            return None
        policy = (report.get("strategies") or {}).get("policy") or {}
    except (OSError, ValueError, AttributeError):
        return None
    figures = {k: _finite(policy[k]) for k in TEST_KEYS if k in policy}
    figures["model_score"] = _finite(report.get("model_score"))
    figures["baseline"] = (report.get("baseline") or {}).get("name")
    figures["range"] = {k: report["range"].get(k) for k in ("start", "end", "bars")}
    figures["evaluated_at"] = report.get("created_at")
    return figures


def data_window(run_dir: Path, config: Mapping[str, Any]) -> dict:
    """What the model was trained and validated on: the market kind and source, symbols
    and date ranges (market.json), and for procedural worlds the world streams."""
    data = config.get("data", {})
    window = {"market": data.get("market"), "path": data.get("path")}
    try:
        record = json.loads((run_dir / "market.json").read_text())
    except (OSError, ValueError):
        record = {}
    window["source"] = record.get("source")
    window["symbols"] = record.get("symbols")
    for name in ("train", "validation", "test"):
        if isinstance(record.get(name), Mapping):
            window[name] = {k: record[name].get(k) for k in ("start", "end", "bars")}
    if data.get("market") == "worlds":
        window["worlds"] = data.get("worlds")
        window["synthetic_seed"] = data.get("synthetic_seed")
    elif data.get("path") is None:
        window["synthetic_seed"] = data.get("synthetic_seed")
    return window


def _hyperparameters(row: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
    ppo = dict(config.get("ppo", {}))
    hp = {k: ppo[k] for k in HPARAM_KEYS if k in ppo}
    hp.update({k: _finite(row[k]) for k in HPARAM_KEYS if k in row})
    hp.update({k: ppo[k] for k in ("n_envs", "n_steps", "n_minibatches", "ppo_epochs",
                                   "critic_epochs") if k in ppo})
    return hp


def _network(config: Mapping[str, Any]) -> dict:
    return dict(config.get("network", {}))


def _copy_records(run_dir: Path, model_dir: Path) -> None:
    """The run's small top-level records (config.json, market.json, env.json, summary.json,
    ...): what loading and evaluating the model read."""
    model_dir.mkdir(parents=True)
    for f in sorted(run_dir.glob("*.json")):
        if f.is_file():
            shutil.copy2(f, model_dir / f.name)


def _validation_history(run_dir: Path, up_to: int) -> list[dict]:
    """The run's validation walks up to iteration `up_to` (metrics.jsonl's rows with a
    val_score): iteration, timesteps, score, Sharpe ratio."""
    path = run_dir / "metrics.jsonl"
    history = []
    if not path.exists():
        return history
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a killed process
        if ckpt.VAL_SCORE_KEY in row and row.get("iteration", 0) <= up_to:
            history.append({"iteration": row["iteration"], "timesteps": row.get("timesteps"),
                            "score": _finite(row[ckpt.VAL_SCORE_KEY]),
                            "sharpe": _finite(row.get("val_sharpe"))})
    return history


def _resolve_parent(archive: Archive, parent: str | None) -> dict | None:
    if parent is None:
        return None
    return archive.entry(parent)


# --------------------------------------------------------------------------- runs
def add_run(archive: Archive, run_dir: str | os.PathLike, checkpoint: str | int = "best",
            parent: str | None = None, generation: int | None = None,
            test: Mapping[str, Any] | None = None) -> dict:
    """Archives checkpoint `checkpoint` ("best", "latest" or an iteration) of the training
    run in `run_dir`: its directory and records copied, its validation history read from
    metrics.jsonl.

    Args:
      parent: the archived id it descends from; default: the archived model its
        checkpoint's lineage started from (`--checkpoint` of an archived model, or of a
        run and checkpoint that is archived), else none.
      generation: default: the parent's + 1 when `parent` is given, else the lineage's.
      test: test figures; default: those of RUN_DIR/eval/report.json when it reports
        this checkpoint on the test range.

    Returns: the entry (see `Archive.add`).

    Raises:
      ArchiveError: an unknown parent; CheckpointError: no such run or checkpoint.
    """
    run_dir = Path(run_dir)
    source = ckpt.select(run_dir, checkpoint)
    meta, lineage = source.meta, source.lineage
    parent_entry = _resolve_parent(archive, parent)
    if parent_entry is None and parent is None and lineage.parent_run is not None:
        parent_entry = archive.find_source(lineage.parent_run, lineage.parent_checkpoint)
    if generation is None:
        generation = (parent_entry["generation"] + 1 if parent is not None
                      else lineage.generation)
    row = meta.get("metrics") or {}
    report = run_dir / EVAL_REPORT
    entry = {
        "parent": parent_entry["id"] if parent_entry else None,
        "generation": int(generation),
        "iteration": source.step,
        "timesteps": int(meta.get("timesteps", 0)),
        "total_timesteps": int(lineage.total_timesteps(int(meta.get("timesteps", 0)))),
        "val_score": _finite(row.get(ckpt.VAL_SCORE_KEY)),
        "validation": _validation_history(run_dir, source.step),
        "window": data_window(run_dir, meta["config"]),
        "hparams": _hyperparameters(row, meta["config"]),
        "network": _network(meta["config"]),
        "env": meta["config"].get("env", {}).get("name"),
        "test": dict(test) if test is not None else test_figures(report, source.step),
        "source": {"kind": "run", "run": str(run_dir.absolute()), "iteration": source.step,
                   "checkpoint": str(source.path.absolute()),
                   "parent_run": lineage.parent_run,
                   "parent_checkpoint": lineage.parent_checkpoint},
    }

    def fill(model_dir: Path) -> None:
        _copy_records(run_dir, model_dir)
        shutil.copytree(source.path, model_dir / ckpt.CHECKPOINT_DIR / str(source.step))
        if entry["test"] is not None and test is None:  # the report it came from
            (model_dir / EVAL_REPORT.parent).mkdir()
            shutil.copy2(report, model_dir / EVAL_REPORT)

    return archive.add(fill, entry)


# --------------------------------------------------------------------- populations
def _population_state(run_dir: Path) -> tuple[Any, dict, int]:
    """(saved population tree, its meta, its interval) of the run's latest population
    checkpoint, read without a trainer (plain arrays at their saved shapes)."""
    import orbax.checkpoint as ocp

    from jaxtrade.population_run import CHECKPOINT_DIR

    directory = run_dir / CHECKPOINT_DIR
    manager = ckpt._read_only_manager(directory, ("best",)) if directory.is_dir() else None
    step = manager.latest_step() if manager is not None else None
    if step is None:
        raise ArchiveError(f"{run_dir}: no complete population checkpoint in {directory}")
    items = {"state": ocp.args.StandardRestore(), "meta": ocp.args.JsonRestore()}
    if (directory / str(step) / "best").is_dir():  # each slot's best-scored state
        items["best"] = ocp.args.StandardRestore()
    out = manager.restore(step, args=ocp.args.Composite(**items))
    return out.state, out.meta, step, (out.best if "best" in items else None)


LEARNED = ("params", "actor_opt", "critic_opt", "hparams", "iteration")  # a kept state's


def kept_members(records: Sequence[Sequence[dict]], score, interval, ids) -> list[dict]:
    """The population.jsonl records of each slot's best-scored state (`population.
    BestStates`' score, interval and ids, [N] each): one per slot that has one."""
    by_slot = {(r["interval"], r["slot"]): r for rs in records for r in rs}
    out = []
    for s, (v, i, m) in enumerate(zip(np.asarray(score), np.asarray(interval),
                                      np.asarray(ids), strict=True)):
        r = by_slot.get((int(i), s))
        if np.isfinite(v) and r is not None and r["id"] == int(m):
            out.append(r)
    return out


def _saved_form(members: Any) -> Any:
    """A population's members (a stacked TrainState, typed PRNG keys) as saved: keys as
    their uint32 data. A tree read from a checkpoint is already so."""
    import jax

    rng = members["rng"] if isinstance(members, Mapping) else getattr(members, "rng", None)
    if rng is not None and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return members.replace(rng=jax.random.key_data(rng))
    return members


def _write_checkpoint(model_dir: Path, step: int, state: Any, meta: Mapping[str, Any]) -> None:
    """One checkpoint in a single run's layout (`jaxtrade.checkpoint`): `state` (the
    saved form of one member's TrainState) and `meta`."""
    import orbax.checkpoint as ocp

    directory = (model_dir / ckpt.CHECKPOINT_DIR).absolute()
    manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})
    try:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(dict(meta))),
                     force=True)
        manager.wait_until_finished()
    finally:
        manager.close()


def final_members(records: Sequence[Sequence[dict]]) -> list[dict]:
    """The members of a population's last interval that were scored and kept their slot:
    the models its final checkpoint holds as scored (a replaced slot holds a copy of
    another member's weights, archived as that member)."""
    if not records:
        return []
    return [r for r in records[-1] if r["replaced_by"] is None and r["score"] is not None]


def _founder_of(records: Sequence[Sequence[dict]]):
    """`founder(id)`: the founder a population member descends from (its id if a founder),
    by the parents its records and copies name."""
    links: dict[int, int | None] = {}
    for interval in records:
        for r in interval:
            links.setdefault(r["id"], r.get("parent"))
            if (c := r.get("replaced_by")) is not None and "id" in c:
                links.setdefault(c["id"], c.get("parent"))

    def founder(i: int) -> int:
        seen = set()
        while links.get(i) is not None and i not in seen:
            seen.add(i)
            i = links[i]
        return i

    return founder


def add_population(archive: Archive, run_dir: str | os.PathLike,
                   members: Sequence[Mapping[str, Any]] | None = None,
                   states: Any = None, founders: Mapping[int, Mapping[str, Any]] | None = None,
                   extra: Mapping[str, Any] | None = None,
                   earlier_trials: Sequence[float | None] = (),
                   extra_of: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
                   ) -> list[dict]:
    """Archives members of the population run in `run_dir` (`python -m
    jaxtrade.population`), each as a single run's checkpoint that `load_policy` and
    `--checkpoint` read.

    Call it when the run has ended (its last checkpoint written), e.g. at the end of
    `population_run.main`:

        archive.add_population(archive.Archive(args.archive), run_dir)

    Args:
      members: population.jsonl records to archive (default `final_members`: every
        scored member of the last interval that kept its slot); with `states`, records of
        any interval, each the state its slot holds in `states` (e.g. each slot's
        best-scored state, `population.BestStates`).
      states: the population's members (`Population.members`: a TrainState stacked on
        the member axis, as after the last interval's exploit/explore, or with each slot's
        learned parts at its record's interval); default: read from the run's latest
        population checkpoint.

      founders: founder member id -> the archived entry that founder continued (a
        population started from archived models, `population.continue_population`): a
        member descended from such a founder links to that model when no closer
        ancestor of this run is archived, its generation counts on from the model's
        (+ 1, + its copies in this run) and its total timesteps include the model's.
      extra: fields added to every entry (e.g. the league's round and category).
      earlier_trials: validation Sharpe ratios of candidates compared before this run
        (a league's earlier populations): trials of every member's deflated Sharpe, as
        this run's validations are.
      extra_of: `extra_of(m)`: fields added to member m's entry (m: its population.jsonl
        record), after `extra`'s (e.g. the assets its slot trained on).

    Returns: the entries added, in the order of `members`. A member's parent is the
    archived model of its parent member in this run, if there is one (else, see
    `founders`); its validation history is its records' scores.

    Raises:
      ArchiveError: no population.jsonl or population checkpoint, members that the
        checkpoint does not hold (an interval other than its last), or a walk-forward run.
    """
    from jaxtrade.population_run import POPULATION_FILE, read_records
    from jaxtrade.walk_forward import WALK_FORWARD_FILE

    run_dir = Path(run_dir)
    if not (run_dir / POPULATION_FILE).exists():
        raise ArchiveError(f"{run_dir}: not a population run (no {POPULATION_FILE})")
    if (run_dir / WALK_FORWARD_FILE).exists():  # --archive is refused with --walk-forward
        raise ArchiveError(f"{run_dir}: a walk-forward run ({WALK_FORWARD_FILE}): its members "
                           f"trained on different bars and their validation slices hold the "
                           f"other folds' test bars, so no score ranks them; evaluate it with "
                           f"python -m jaxtrade.evaluate --run-dir {run_dir}")
    records = read_records(run_dir / POPULATION_FILE)
    kept = None
    if states is None:
        tree, pop_meta, step, kept = _population_state(run_dir)
    if members is None and kept is not None:  # each slot's best-scored state
        members = kept_members(records, kept["score"], kept["interval"], kept["ids"])
    members = list(final_members(records) if members is None else members)
    if not members:
        raise ArchiveError(f"{run_dir}: no scored member to archive in {POPULATION_FILE}")
    last = records[-1][0]["interval"]
    if states is None and kept is None and any(m["interval"] != last for m in members):
        raise ArchiveError(f"{run_dir}: only the last interval's ({last}) members can be "
                           f"archived: the population checkpoint holds those")
    rng_impl = "threefry2x32"
    if states is None:
        if step != last:
            raise ArchiveError(f"{run_dir}: the latest population checkpoint is of interval "
                               f"{step}, population.jsonl ends at {last}")
        ids = np.asarray(tree["ids"] if kept is None else kept["ids"])
        for m in members:
            if (m["replaced_by"] is None or kept is not None) and int(ids[m["slot"]]) != m["id"]:
                raise ArchiveError(f"{run_dir}: slot {m['slot']} holds id {int(ids[m['slot']])}"
                                   f", not member {m['id']}")
        states, rng_impl = tree["members"], pop_meta.get("rng_impl", rng_impl)
        if kept is not None:  # the kept states' learned parts, the last state's envs
            states = {**states, **{k: kept[k] for k in LEARNED}}
    states = _saved_form(states)
    import jax

    config = json.loads((run_dir / "config.json").read_text())
    scored = [r for interval in records for r in interval if r["score"] is not None]
    sharpes = [*earlier_trials, *((r.get("val") or {}).get("sharpe") for r in scored)]
    added = []
    founder = _founder_of(records)
    # parents first (a copy's generation is its parent's + 1), so every link can be found
    for m in sorted(members, key=lambda m: m["generation"]):
        state = jax.tree.map(lambda x, s=m["slot"]: np.asarray(x)[s], states)
        iteration = int(np.asarray(state["iteration"] if isinstance(state, Mapping)
                                   else state.iteration))
        own = [r for interval in records for r in interval if r["id"] == m["id"]]
        history = [{"interval": r["interval"], "timesteps": r["timesteps"],
                    "score": r["score"], "sharpe": _finite((r.get("val") or {}).get("sharpe"))}
                   for r in own]
        parent = None if m["parent"] is None else archive.find_source(run_dir, member=m["parent"])
        continued = (founders or {}).get(founder(m["id"]))
        generation, base = int(m["generation"]), 0
        if continued is not None:
            parent = parent or continued
            generation += int(continued["generation"]) + 1
            base = int(continued["total_timesteps"])
        val = {f"val_{k}": v for k, v in (m.get("val") or {}).items() if k != "score"}
        row = {"iteration": iteration, "timesteps": m["timesteps"], **m["hparams"], **val,
               ckpt.VAL_SCORE_KEY: m["score"]}
        if continued is None:
            lineage = ckpt.Lineage(parent_run=None, generation=generation, start="new")
        else:  # its weights and optimizer states, fresh envs and counters
            lineage = ckpt.Lineage(parent_run=str((archive.models / continued["id"]).absolute()),
                                   parent_checkpoint=int(continued["iteration"]),
                                   generation=generation, base_timesteps=base,
                                   start="weights")
        meta = {
            "format": ckpt.FORMAT, "iteration": iteration, "timesteps": m["timesteps"],
            "interrupted": False, "final": True, "saved_at": _now(),
            "jaxtrade_version": _version(), "n_devices": 1, "rng_impl": rng_impl,
            "config": config, "metrics": row, "history": {},
            "best": {"iteration": iteration, "score": m["score"],
                     "metric": ckpt.VAL_SCORE_KEY},
            # Every member's every validation walk was a candidate (honest statistics).
            "selection": {"metric": ckpt.VAL_SCORE_KEY, "validations": len(sharpes),
                          "since_best": 0, "best_iteration": iteration,
                          "best_score": m["score"], "sharpes": sharpes},
            "lineage": lineage.to_dict(m["timesteps"]),
            "population": {"run": str(run_dir.absolute()), "interval": m["interval"],
                           "slot": m["slot"], "id": m["id"], "parent": m["parent"]},
        }
        entry = {
            "parent": parent["id"] if parent else None,
            "generation": generation,
            "iteration": iteration,
            "timesteps": int(m["timesteps"]),
            "total_timesteps": base + int(m["timesteps"]),
            "val_score": _finite(m["score"]),
            "validation": history,
            "window": data_window(run_dir, config),
            "hparams": {**_hyperparameters({}, config), **m["hparams"]},
            "network": _network(config),
            "env": config.get("env", {}).get("name"),
            "source": {"kind": "population", "run": str(run_dir.absolute()),
                       "iteration": iteration, "interval": m["interval"], "slot": m["slot"],
                       "member": m["id"], "parent_member": m["parent"]},
            **(extra or {}),
            **(extra_of(m) if extra_of is not None else {}),
        }

        def fill(model_dir: Path, state=state, iteration=iteration, meta=meta) -> None:
            _copy_records(run_dir, model_dir)
            _write_checkpoint(model_dir, iteration, state, meta)

        added.append(archive.add(fill, entry))
    order = {m["id"]: i for i, m in enumerate(members)}
    return sorted(added, key=lambda e: order[e["source"]["member"]])


def set_selection_trials(archive: Archive, model_id: str,
                         sharpes: Sequence[float | None]) -> None:
    """Sets the deflated-Sharpe trials of archived model `model_id` (its checkpoint's
    `selection`: `validations` and their `sharpes`, which `python -m jaxtrade.evaluate`
    reads) to `sharpes`: the candidates it has been compared with, e.g. every validation
    of a league whose champion is chosen again after each round.

    Raises:
      ArchiveError: unknown id, or a checkpoint whose metadata cannot be rewritten.
    """
    d = archive.model_dir(model_id)
    try:
        source = ckpt.latest(d, purpose="")
    except ckpt.CheckpointError as e:
        raise ArchiveError(f"{model_id}: {e}") from None
    path = source.directory / str(source.step) / "meta" / "metadata"  # JsonCheckpointHandler's
    with archive._locked():
        meta = dict(source.meta)
        meta["selection"] = {**(meta.get("selection") or {}), "validations": len(sharpes),
                             "sharpes": list(sharpes)}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(path)


def read_learned(archive: Archive, model_id: str, like: Any) -> dict:
    """What training learned in archived model `model_id`: its parameters, optimizer states
    and runtime hyperparameters, as trees typed like `like` (one member's `TrainState`, or
    its shapes, e.g. `jax.eval_shape` of the trainer's `init`, with concrete `hparams`),
    numpy arrays. Its envs, RNG
    and counters are not read into it (a continuation starts them afresh).

    Returns: {"params", "actor_opt", "critic_opt", "hparams"}; a hyperparameter that the
    checkpoint predates takes `like`'s value.

    Raises:
      ArchiveError: unknown id, unreadable checkpoint, or a leaf whose shape differs from
        `like`'s (one line naming the first: the model was trained with other shapes).
    """
    import jax
    import orbax.checkpoint as ocp

    entry = archive.entry(model_id)
    try:
        source = ckpt.select(archive.models / entry["id"], entry["iteration"])
        saved = ckpt._read(source, lambda m: m.restore(source.step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore())).state)
    except ckpt.CheckpointError as e:
        raise ArchiveError(f"{model_id}: {e}") from None
    flat = {ckpt._path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
    out = {}
    for part in ("params", "actor_opt", "critic_opt", "hparams"):
        paths, treedef = jax.tree_util.tree_flatten_with_path(getattr(like, part))
        leaves = []
        for path, want in paths:
            name = f"{part}/{ckpt._path_str(path)}"
            got = flat.get(name)
            if got is None and part == "hparams":
                got = want
            if got is None or tuple(np.shape(got)) != tuple(want.shape):
                have = "absent" if got is None else str(tuple(np.shape(got)))
                raise ArchiveError(
                    f"archived model {entry['id']} does not fit this config: {name} is "
                    f"{have} in it but {tuple(want.shape)} here (trained with other "
                    f"shapes: network {_network_text(entry)})")
            leaves.append(np.asarray(got, dtype=want.dtype))
        out[part] = jax.tree.unflatten(treedef, leaves)
    return out


def _network_text(entry: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in (entry.get("network") or {}).items()
                     if v is not None) or "unknown"


def _version() -> str:
    from jaxtrade import __version__

    return __version__


def add_any(archive: Archive, run_dir: str | os.PathLike, checkpoint: str | int = "best",
            parent: str | None = None, generation: int | None = None) -> list[dict]:
    """`add_population` for a population run (each slot's best-scored model), else
    `add_run`."""
    from jaxtrade.population_run import POPULATION_FILE

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ArchiveError(f"{run_dir}: no such run directory")
    if (run_dir / POPULATION_FILE).exists():
        if parent is not None or generation is not None or str(checkpoint) != "best":
            raise ArchiveError(f"{run_dir}: a population run's members are archived "
                               f"as recorded; --checkpoint, --parent and --generation are "
                               f"for single runs")
        return add_population(archive, run_dir)
    return [add_run(archive, run_dir, checkpoint, parent, generation)]


# ------------------------------------------------------------------------- loading
def split_reference(ref: str) -> tuple[str, str]:
    """"archive:ID" -> (DEFAULT_DIR, ID); "archive:DIR:ID" -> (DIR, ID)."""
    rest = ref[len(PREFIX):] if ref.startswith(PREFIX) else ref
    directory, _, model_id = rest.rpartition(":")
    return directory or DEFAULT_DIR, model_id


def load_policy(model_id: str, archive: str | os.PathLike | Archive = DEFAULT_DIR,
                seed: int | None = None):
    """The policy of archived model `model_id` ("m0003", or "archive:[DIR:]m0003"): what
    `jaxtrade.load_policy` returns for the run and checkpoint it was archived from.

    Raises:
      ArchiveError: not an archive or no such id; as `jaxtrade.load_policy`.
    """
    from jaxtrade.policy import load_policy as load_run

    if str(model_id).startswith(PREFIX):
        archive, model_id = split_reference(str(model_id))
    archive = archive if isinstance(archive, Archive) else Archive(archive)
    entry = archive.entry(model_id)
    return load_run(archive.models / entry["id"], entry["iteration"], seed)


# ---------------------------------------------------------------------------- output
def _fmt(x, spec: str, missing: str = "-") -> str:
    return missing if x is None else format(x, spec)


def _short(path: str) -> str:
    """`path` relative to the working directory when it lies below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def table(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """`list`'s lines: one row per model, best validation score first."""
    rows = [("id", "parent", "gen", "timesteps", "val score", "test Sharpe", "source", "added")]
    for e in entries:
        src = e["source"]
        where = _short(src["run"]) + (f" #{src['iteration']}" if src["kind"] == "run"
                              else f" member {src['member']}")
        rows.append((e["id"], e["parent"] or "-", str(e["generation"]),
                     f"{e['total_timesteps']:,}", _fmt(e["val_score"], "+.2f"),
                     _fmt((e.get("test") or {}).get("sharpe"), "+.2f"), where,
                     e["added"][:16].replace("T", " ")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5}
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                      for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip()
            for r in rows]


def describe(entry: Mapping[str, Any], model_dir: Path) -> list[str]:
    """`show`'s lines: every field of the entry."""
    e = entry
    lines = [f"{e['id']}: {model_dir}",
             f"  parent        {e['parent'] or '-'} (generation {e['generation']})",
             f"  checkpoint    iteration {e['iteration']}, {e['timesteps']:,} timesteps "
             f"({e['total_timesteps']:,} with its ancestors')",
             f"  val score     {_fmt(e['val_score'], '+.3f')}",
             f"  env           {e.get('env')}",
             f"  added         {e['added']}"]
    src = e["source"]
    lines.append("  source        " + ", ".join(
        f"{k} {_short(v) if k in ('run', 'checkpoint', 'parent_run') else v}"
        for k, v in src.items() if v is not None))
    w = e["window"]
    lines.append(f"  data          {w.get('market')} market, {w.get('source')}")
    if w.get("symbols"):
        lines.append(f"  symbols       {', '.join(w['symbols'])}")
    for name, label in (("train", "train range"), ("validation", "val range"),
                        ("test", "test range")):
        if name in w:
            r = w[name]
            lines.append(f"  {label:<13} {r.get('start')} .. {r.get('end')} "
                         f"({r.get('bars')} bars)")
    if "worlds" in w:
        lines.append("  worlds        " + ", ".join(f"{k} {v}" for k, v in w["worlds"].items()))
    lines.append("  hparams       " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float)
                                                  else f"{k} {v}" for k, v in e["hparams"].items()))
    lines.append("  network       " + ", ".join(f"{k} {v}" for k, v in e["network"].items()
                                                  if v is not None))
    test = e.get("test")
    if test:
        lines.append("  test figures  " + ", ".join(
            f"{k} {v:+.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in test.items()
            if v is not None and k != "range")
            + (f" ({test['range']['start']} .. {test['range']['end']})"
               if test.get("range") else ""))
    else:
        lines.append(f"  test figures  - (python -m jaxtrade.evaluate --run-dir {model_dir})")
    lines.append(f"  validation    {len(e['validation'])} walks:")
    for v in e["validation"]:
        at = (f"iteration {v['iteration']:>6}" if "iteration" in v
              else f"interval {v['interval']:>4}")
        lines.append(f"    {at}  {v.get('timesteps') or 0:>12,} steps  score "
                     f"{_fmt(v['score'], '+.2f', 'n/a'):>7}  Sharpe "
                     f"{_fmt(v.get('sharpe'), '+.2f', 'n/a')}")
    return lines


def lineage(archive: Archive, model_id: str) -> list[str]:
    """`lineage`'s lines: the chain of ancestors from the root down to `model_id` (marked
    `*`), then its descendants as a tree. Pruned ancestors show as such."""
    archive.entry(model_id)
    entries = {e["id"]: e for e in archive.entries()}
    chain = [model_id]
    while (p := archive.parent_of(chain[-1])) is not None and p not in chain:
        chain.append(p)
    chain.reverse()
    children: dict[str, list[str]] = {}
    for e in sorted(entries.values(), key=lambda e: _number(e["id"])):
        if e["parent"] is not None:
            children.setdefault(e["parent"], []).append(e["id"])

    def label(i: str) -> str:
        e = entries.get(i)
        if e is None:
            return f"{i} (pruned)"
        return (f"{i}{' *' if i == model_id else ''}  gen {e['generation']}  "
                f"{e['total_timesteps']:,} steps  val {_fmt(e['val_score'], '+.2f')}  "
                f"test Sharpe {_fmt((e.get('test') or {}).get('sharpe'), '+.2f')}")

    lines = []
    for depth, i in enumerate(chain):
        lines.append(("    " * (depth - 1) + "└── " if depth else "") + label(i))

    def below(i: str, prefix: str) -> None:
        kids = children.get(i, [])
        for n, k in enumerate(kids):
            last = n == len(kids) - 1
            lines.append(prefix + ("└── " if last else "├── ") + label(k))
            below(k, prefix + ("    " if last else "│   "))

    below(model_id, "    " * (len(chain) - 1))
    return lines


# ------------------------------------------------------------------------ the command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jaxtrade.archive",
        description="The model archive: the best models of all runs and populations, with "
                    "their lineage, validation history and test figures.")
    p.add_argument("--archive", metavar="DIR", default=DEFAULT_DIR,
                   help=f"the archive directory [{DEFAULT_DIR}]")
    # --archive after the command too (`list --archive DIR`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--archive", metavar="DIR", default=argparse.SUPPRESS,
                        help="the archive directory")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common],
                   help="the archived models, best validation score first")
    show = sub.add_parser("show", parents=[common], help="everything recorded of one model")
    show.add_argument("id")
    tree = sub.add_parser("lineage", parents=[common],
                          help="a model's ancestors and descendants as a tree")
    tree.add_argument("id")
    prune = sub.add_parser("prune", parents=[common], help="keep the best models only")
    prune.add_argument("--top", type=int, default=DEFAULT_TOP, metavar="K",
                       help=f"models kept, by validation score [{DEFAULT_TOP}]")
    add = sub.add_parser("add", parents=[common],
                         help="archive a run's checkpoint or each slot's best-scored model of a "
                              "population (of one saved before best states were kept: its last "
                              "interval's members)")
    add.add_argument("run_dir", metavar="RUN_DIR")
    add.add_argument("--checkpoint", default="best", metavar="best|latest|N",
                     help="which checkpoint of a single run [best]")
    add.add_argument("--parent", metavar="ID", help="the archived model it descends from "
                     "[the one its checkpoint's lineage names, if archived]")
    add.add_argument("--generation", type=int, metavar="G",
                     help="[the parent's + 1, or the checkpoint's lineage's]")
    add.add_argument("--keep", type=int, metavar="K", help="then keep the K best only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    archive = Archive(args.archive)
    try:
        if args.command == "list":
            archive.check()
            entries = archive.entries()
            print("\n".join(table(entries)))
            print(f"{len(entries)} model(s) in {archive.path}")
        elif args.command == "show":
            entry = archive.entry(args.id)
            print("\n".join(describe(entry, archive.models / entry["id"])))
        elif args.command == "lineage":
            print("\n".join(lineage(archive, args.id)))
        elif args.command == "prune":
            removed = archive.prune(args.top)
            print(f"pruned {len(removed)} model(s)" + (f": {', '.join(removed)}" if removed
                                                        else "")
                  + f"; {len(archive.entries())} kept in {archive.path}")
        else:
            if args.keep is not None and args.keep < 1:
                raise ArchiveError(f"--keep must be at least 1, got {args.keep}")
            archive.capacity = args.keep
            for e in add_any(archive, args.run_dir, args.checkpoint, args.parent,
                             args.generation):
                print(f"archived {e['id']}: {_short(e['source']['run'])} "
                      + (f"checkpoint {e['iteration']}" if e["source"]["kind"] == "run"
                         else f"member {e['source']['member']} at interval "
                              f"{e['source']['interval']}")
                      + f", val score {_fmt(e['val_score'], '+.2f')}, parent "
                        f"{e['parent'] or '-'}, generation {e['generation']}"
                      + ("" if e["kept"] else " (then pruned: not among the best)"))
    except (ArchiveError, ckpt.CheckpointError, EvaluationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

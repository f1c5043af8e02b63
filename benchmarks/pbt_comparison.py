"""Does PBT help? PBT's best member against the best of as many independent members, at
equal timesteps, on the CPU preset's procedural worlds, over several seeds (issue 16's
learning proof).

    python -m benchmarks.pbt_comparison [--seeds 0 1 2] [--population 4] [--iterations 40]
        [--intervals 4] [--config configs/cpu-small.toml] [--run-root runs/pbt_comparison]
        [--out benchmarks/results]

For each seed, two runs of `python -m jaxtrade.population --config CONFIG --population N
--iterations I --seed S --archive DIR`, identical but for the interval:

* pbt: `--pbt-interval` of I / `--intervals` iterations (4 intervals by default, each
  ending in exploit/explore);
* independent: `--pbt-interval` of all I iterations, one interval: N independent runs in
  one program. Its one exploit/explore comes after all training (the CLI runs one at the
  end of every interval, the last too), so it changes no training: it only keeps the
  worst-scored member, which cannot be chosen, out of the archive, as in the PBT arm.

Both start from the same members: `init_population` draws the members' keys and
hyperparameters from the seed alone, whatever the interval; the script checks it (the
hyperparameters each slot holds in the first interval's records of the two runs, and the
final score of every founder PBT never replaced, which trained exactly as in the
independent run) and records it. Each run archives its final members; the one with the
best validation score (the last interval's walk of the validation worlds, the archive
entry's `val_score`) is chosen, and only it is evaluated on the run's 128 test worlds
(`python -m jaxtrade.evaluate --run-dir ARCHIVE/models/<id>`): test median Sharpe, the
baseline chosen on validation, their paired median difference with a 90% bootstrap
interval, worlds won, median deflated Sharpe (PBT counts every member's every validation
as a candidate: N x intervals, against N). Nothing about the test worlds reaches the
choice. Both arms' chosen members are then compared world by world (the same test worlds:
same seed): the median of PBT - independent per-world Sharpe, its bootstrap interval and a
sign test.

Subprocesses, one after another; a seed whose runs and evaluations are already in
`--run-root` is read, not retrained. Writes benchmarks/results/pbt_comparison_<device>_
<date>.json after every seed (one row per seed and arm; settings hold the per-seed
comparisons, the hyperparameter check, the load averages and the summary over seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

from benchmarks.common import device_info, save, table

ARMS = ("pbt", "independent")


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def run(cmd: list[str]) -> float:
    """Runs `cmd` (output to this process's), returns its wall seconds; a failure stops."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def steps_per_iteration(config: Path) -> int:
    """n_envs x n_steps of a config file (one member's timesteps per iteration)."""
    ppo = tomllib.loads(config.read_text()).get("ppo", {})
    return int(ppo.get("n_envs", 64)) * int(ppo.get("n_steps", 64))


def pbt_intervals(iterations: int, intervals: int, steps: int) -> dict[str, int]:
    """Each arm's `--pbt-interval` in timesteps per member."""
    if iterations % intervals:
        raise SystemExit(f"--iterations {iterations} does not split into {intervals} intervals")
    return {"pbt": iterations // intervals * steps, "independent": iterations * steps}


def archived(archive: Path) -> list[dict]:
    """The entries of an archive directory (entry.json of each model)."""
    return [json.loads(p.read_text()) for p in sorted(archive.glob("models/*/entry.json"))]


def best_entry(entries: list[dict]) -> dict:
    """The archived member with the best validation score (the choice; test figures, if any,
    are not looked at)."""
    scored = [e for e in entries if e.get("val_score") is not None]
    if not scored:
        raise SystemExit("no archived member has a validation score")
    return max(scored, key=lambda e: e["val_score"])


def initial_hparams(population_jsonl: Path) -> list[dict]:
    """The hyperparameters each slot started with: the first interval's records (taken
    before that interval's exploit/explore), in slot order."""
    first = None
    out = {}
    for line in population_jsonl.read_text().splitlines():
        rec = json.loads(line)
        first = rec["interval"] if first is None else first
        if rec["interval"] == first:
            out[rec["slot"]] = rec["hparams"]
    return [out[s] for s in sorted(out)]


def untouched_founders(pbt_jsonl: Path, independent_jsonl: Path) -> list[dict]:
    """Founders that PBT never replaced, by their last scores in both arms: one trained with
    the same key, hyperparameters and timesteps in both, so equal scores confirm that the
    arms started from the same members."""
    def last(path):
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        end = max(r["interval"] for r in recs)
        return {r["id"]: r for r in recs if r["interval"] == end}

    pbt, ind = last(pbt_jsonl), last(independent_jsonl)
    return [{"id": i, "pbt_score": r["score"], "independent_score": ind[i]["score"],
             "equal": r["score"] == ind[i]["score"]}
            for i, r in sorted(pbt.items()) if r["generation"] == 0 and i in ind]


def test_figures(report: dict) -> dict:
    """What `python -m jaxtrade.evaluate` reports of a member on the test worlds."""
    st = report["statistics"]
    diff = st["sharpe_difference"]
    return {
        "baseline": report["baseline"]["name"],
        "test_policy_sharpe": st["policy_sharpe"]["median"],
        "test_baseline_sharpe": st["baseline_sharpe"]["median"],
        "test_difference": diff["estimate"],
        "test_difference_ci": [diff["ci_low"], diff["ci_high"]],
        "test_share_won": st["share_won"],
        "test_dsr_median": st["policy_dsr"]["median"],
        "dsr_candidates": st["dsr_trials"]["candidates"],
        "test_turnover_median": report["strategies"]["policy"]["turnover_total"]["median"],
    }


def head_to_head(pbt: list[dict], independent: list[dict], seed: int) -> dict:
    """PBT's chosen member against the independent one on the same test worlds: the median
    per-world Sharpe difference (PBT - independent), its bootstrap interval (worlds
    resampled), the share of worlds PBT wins and a one-sided sign test."""
    from jaxtrade.engine.worlds_report import median_interval, sign_test

    a = {w["world"]: w["sharpe_policy"] for w in pbt}
    b = {w["world"]: w["sharpe_policy"] for w in independent}
    if a.keys() != b.keys():
        raise SystemExit("the two arms were evaluated on different test worlds")
    d = np.asarray([a[w] - b[w] for w in sorted(a)], np.float64)
    d = d[np.isfinite(d)]
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    return {"worlds": int(d.size), "median_difference": median_interval(d, seed),
            "pbt_wins": wins, "pbt_losses": losses, "ties": int(d.size - wins - losses),
            "pbt_share_won": wins / d.size, "sign_test_p": sign_test(wins, losses)}


def summarise(rows: list[dict], comparisons: list[dict]) -> dict:
    """Over seeds: the mean PBT - independent of the test median Sharpe, of the difference
    against the baseline and of the validation score, and the seeds PBT won on each."""
    by = {(r["seed"], r["arm"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows if (r["seed"], "pbt") in by
                    and (r["seed"], "independent") in by})

    def deltas(key):
        return [by[s, "pbt"][key] - by[s, "independent"][key] for s in seeds]

    out = {"seeds": seeds}
    for key in ("test_policy_sharpe", "test_difference", "val_score"):
        d = deltas(key)
        out[key] = {"pbt_minus_independent": d,
                    "mean": statistics.fmean(d) if d else None,
                    "pbt_won_seeds": sum(x > 0 for x in d)}
    out["head_to_head_median"] = [c["head_to_head"]["median_difference"]["estimate"]
                                  for c in comparisons]
    out["head_to_head_intervals_above_0"] = sum(
        c["head_to_head"]["median_difference"]["ci_low"] > 0 for c in comparisons)
    out["head_to_head_intervals_below_0"] = sum(
        c["head_to_head"]["median_difference"]["ci_high"] < 0 for c in comparisons)
    out["beats_baseline"] = {arm: sum(by[s, arm]["test_difference_ci"][0] > 0 for s in seeds)
                             for arm in ARMS}
    return out


def run_arm(args, seed: int, arm: str, interval: int) -> dict:
    """Trains (unless done), archives, chooses and evaluates one arm of one seed."""
    run_dir = args.run_root / f"seed{seed}" / arm
    archive = args.run_root / f"seed{seed}" / f"{arm}-archive"
    summary_path = run_dir / "summary.json"
    done = (summary_path.exists() and json.loads(summary_path.read_text())["status"] == "completed"
            and archived(archive))
    load_before, train_s = load(), None
    if not done:
        for d in (run_dir, archive):
            shutil.rmtree(d, ignore_errors=True)
        train_s = run([sys.executable, "-m", "jaxtrade.population", "--config", str(args.config),
                       "--population", str(args.population), "--iterations",
                       str(args.iterations), "--pbt-interval", str(interval), "--seed",
                       str(seed), "--run-dir", str(run_dir), "--archive", str(archive)])
    entries = archived(archive)
    best = best_entry(entries)  # on validation only: no report has been read
    model = archive / "models" / best["id"]
    report_path = model / "eval" / "report.json"
    eval_s = None
    if not report_path.exists():
        eval_s = run([sys.executable, "-m", "jaxtrade.evaluate", "--run-dir", str(model)])
    report = json.loads(report_path.read_text())
    summary = json.loads(summary_path.read_text())
    return {
        "seed": seed, "arm": arm, "pbt_interval": interval,
        "intervals": summary["intervals"], "timesteps": summary["timesteps"],
        "members_val_scores": {e["id"]: e["val_score"] for e in entries},
        "chosen": best["id"], "chosen_member": best["source"]["member"],
        "chosen_generation": best["generation"], "val_score": best["val_score"],
        "chosen_hparams": best["hparams"],
        **test_figures(report),
        "train_wall_s": train_s, "run_wall_s": summary["wall_s"],
        "compile_s": summary["compile_s"], "sps": summary["sps"], "eval_s": eval_s,
        "load_before": load_before, "load_after": load(),
        "run_dir": str(run_dir), "model_dir": str(model),
        "_initial_hparams": initial_hparams(run_dir / "population.jsonl"),
        "_per_world": report["per_world"],
    }


COLUMNS = [("arm", "arm", "s"), ("chosen", "model", "s"), ("chosen_generation", "gen", "d"),
           ("val_score", "val score", "+.2f"), ("test_policy_sharpe", "test Sharpe", "+.3f"),
           ("test_baseline_sharpe", "baseline", "+.3f"), ("test_difference", "difference", "+.3f"),
           ("ci", "90% interval", "s"), ("test_share_won", "won", ".2f"),
           ("test_dsr_median", "DSR", ".2f"), ("dsr_candidates", "cands", "d"),
           ("test_turnover_median", "turnover", ".1f")]


def print_seed(rows: list[dict], comparison: dict) -> None:
    same = [f"id {u['id']} {'equal' if u['equal'] else 'DIFFERENT'} ({u['pbt_score']:+.2f})"
            for u in comparison["untouched_founders"]]
    print(f"\nseed {comparison['seed']}: initial hyperparameters identical: "
          f"{comparison['same_initial_hparams']}; founders PBT never replaced, final score "
          f"against the independent arm's: {', '.join(same) or 'none'}")
    print(table([{**r, "ci": "[{:+.3f}, {:+.3f}]".format(*r["test_difference_ci"])}
                 for r in rows], COLUMNS))
    h = comparison["head_to_head"]
    m = h["median_difference"]
    print(f"PBT - independent, world by world: median Sharpe difference {m['estimate']:+.3f} "
          f"[{m['ci_low']:+.3f}, {m['ci_high']:+.3f}], PBT won {h['pbt_wins']} of "
          f"{h['worlds']} worlds (sign test p {h['sign_test_p']:.3f})", flush=True)


def print_summary(s: dict) -> None:
    print(f"\nover seeds {s['seeds']} (PBT - independent):")
    for key, name in (("val_score", "validation score"),
                      ("test_policy_sharpe", "test median Sharpe"),
                      ("test_difference", "difference vs baseline")):
        d = s[key]
        if d["mean"] is not None:
            each = ", ".join(f"{x:+.3f}" for x in d["pbt_minus_independent"])
            print(f"  {name}: mean {d['mean']:+.3f} ({each}); PBT ahead in "
                  f"{d['pbt_won_seeds']} of {len(s['seeds'])} seeds")
    print(f"  world-by-world intervals above 0: {s['head_to_head_intervals_above_0']}, "
          f"below 0: {s['head_to_head_intervals_below_0']}; interval of the difference vs "
          f"baseline above 0: {s['beats_baseline']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--population", type=int, default=4, help="members per arm [4]")
    p.add_argument("--iterations", type=int, default=40, help="per member [40]")
    p.add_argument("--intervals", type=int, default=4, help="PBT's intervals [4]")
    p.add_argument("--config", type=Path, default=Path("configs/cpu-small.toml"))
    p.add_argument("--run-root", type=Path, default=Path("runs/pbt_comparison"),
                   help="run and archive directories [runs/pbt_comparison]")
    p.add_argument("--out", type=Path, default=None, help="results directory [benchmarks/results]")
    args = p.parse_args(argv)
    steps = steps_per_iteration(args.config)
    intervals = pbt_intervals(args.iterations, args.intervals, steps)
    settings = {"config": str(args.config), "population": args.population,
                "iterations": args.iterations, "pbt_intervals": args.intervals,
                "steps_per_iteration": steps, "pbt_interval_timesteps": intervals,
                "timesteps_per_arm": args.population * args.iterations * steps,
                "selection": "best archived final member by val_score (validation worlds)",
                "seeds": args.seeds, "load_start": load()}
    rows, comparisons, clean = [], [], []
    t0 = time.perf_counter()
    for seed in args.seeds:
        arm_rows = [run_arm(args, seed, arm, intervals[arm]) for arm in ARMS]
        hp = [r.pop("_initial_hparams") for r in arm_rows]
        worlds = [r.pop("_per_world") for r in arm_rows]
        same = hp[0] == hp[1]
        untouched = untouched_founders(*(Path(r["run_dir"]) / "population.jsonl"
                                         for r in arm_rows))
        comparison = {"seed": seed, "same_initial_hparams": same,
                      "initial_hparams": hp[0] if same else dict(zip(ARMS, hp, strict=True)),
                      "untouched_founders": untouched,
                      "head_to_head": head_to_head(*worlds, seed)}
        rows += arm_rows
        comparisons.append(comparison)
        print_seed(arm_rows, comparison)
        if not comparison["same_initial_hparams"]:
            print(f"warning: seed {seed}: the arms started from different hyperparameters",
                  file=sys.stderr)
        clean.append(comparison["same_initial_hparams"])
        summary = summarise(rows, comparisons)
        path = save("pbt_comparison", device_info(), rows, out_dir=args.out, settings={
            **settings, "load_end": load(), "wall_s": time.perf_counter() - t0,
            "comparisons": comparisons, "summary": summary})
    print_summary(summary)
    print(f"saved {path}")
    return 0 if all(clean) else 1


if __name__ == "__main__":
    sys.exit(main())

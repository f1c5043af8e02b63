"""Constant hyperparameters, the reference schedule, and the schedule with the rule book, at
equal timesteps, on the CPU preset's procedural worlds; GRU and transformer.

    python -m benchmarks.schedule_comparison [--timesteps 204800] [--scale 0.02]
        [--networks gru,transformer] [--seed 0] [--out-dir runs/schedule_comparison]

Each of the 2 x 3 runs is `python -m jaxtrade.train --config configs/cpu-small.toml`
(worlds, set encoder) for `--timesteps`, walking its validation worlds every
`--eval-every` iterations, which choose its best checkpoint:

* constant: the preset's hyperparameters throughout;
* schedule: `configs/schedules/reference.toml` at `--scale` (its 10M timesteps times the
  scale; the default 0.02 ends it at 200K), with its phase shapes and plateau rule;
* schedule+adjust: the same with `--adjust rules`.

The transformer runs use `--network transformer` at the reference's first size (4 heads x
2 blocks, grown by the schedule to 8 x 3). Then `python -m jaxtrade.evaluate` reports each
best checkpoint on the test worlds (a seed stream no run generates) against the baseline
chosen on the validation worlds: the median Sharpe over worlds, the paired median
difference with its bootstrap interval, the share of worlds won, and the deflated Sharpe
counting the run's validation candidates. Subprocesses, one after another; writes
benchmarks/results/schedule_comparison_<device>_<date>.json. A measurement of one seed at
a small budget: it says what this budget shows, not what 10M timesteps would.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import device_info, result_path, save, table

VARIANTS = {
    "constant": [],
    "schedule": ["--schedule", "configs/schedules/reference.toml"],
    "schedule+adjust": ["--schedule", "configs/schedules/reference.toml", "--adjust", "rules"],
}
NETWORKS = {
    "gru": [],
    "transformer": ["--network", "transformer", "--n-heads", "4", "--n-layers", "2",
                    "--context", "16"],
}


def run(cmd: list[str]) -> float:
    """Runs `cmd` (output to this process's), returns its wall seconds; a failure stops."""
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def figures(run_dir: Path) -> dict:
    """What a trained and evaluated run reports: validation (its choice) and test."""
    summary = json.loads((run_dir / "summary.json").read_text())
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    stats = report["statistics"]
    diff = stats["sharpe_difference"]
    sel = summary["selection"]
    return {
        "best_iteration": sel["best_iteration"],
        "val_score": sel["best_score"],
        "candidates": sel["validations"],
        "baseline": report["baseline"]["name"],
        "test_policy_sharpe": stats["policy_sharpe"]["median"],
        "test_baseline_sharpe": stats["baseline_sharpe"]["median"],
        "test_difference": diff["estimate"],
        "test_difference_ci": [diff["ci_low"], diff["ci_high"]],
        "test_share_won": stats["share_won"],
        "test_dsr_median": stats["policy_dsr"]["median"],
        "sps": summary["sps"],
    }


def earlier_rows(path: Path, settings: dict, rows: list[dict]) -> list[dict]:
    """The rows of today's result file, measured with the same settings, of the (network,
    variant) pairs `rows` does not have: a run of one network keeps the other's figures."""
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    if {k: record["settings"].get(k) for k in settings} != settings:
        return []
    done = {(r["network"], r["variant"]) for r in rows}
    return [r for r in record["results"] if (r["network"], r["variant"]) not in done]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--timesteps", type=int, default=204_800)
    p.add_argument("--scale", type=float, default=0.02, help="--schedule-scale [0.02]")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--networks", default="gru,transformer")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("runs/schedule_comparison"))
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: collect the figures of the runs already in --out-dir")
    args = p.parse_args(argv)
    rows, failed = [], []
    for network in args.networks.split(","):
        for variant in args.variants.split(","):
            run_dir = args.out_dir / f"{network}-{variant.replace('+', '-')}"
            extra = VARIANTS[variant] + (["--schedule-scale", str(args.scale)]
                                         if VARIANTS[variant] else [])
            if args.report_only:
                if (run_dir / "eval" / "report.json").exists():
                    rows.append({"network": network, "variant": variant,
                                 "run_dir": str(run_dir), **figures(run_dir)})
                continue
            try:
                train_s = run([sys.executable, "-m", "jaxtrade.train", "--config",
                               "configs/cpu-small.toml", "--timesteps", str(args.timesteps),
                               "--eval-every", str(args.eval_every), "--seed", str(args.seed),
                               "--log-every", "10", "--run-dir", str(run_dir),
                               *NETWORKS[network], *extra])
                eval_s = run([sys.executable, "-m", "jaxtrade.evaluate", "--run-dir",
                              str(run_dir)])
            except subprocess.CalledProcessError as e:  # recorded; the others still run
                failed.append({"network": network, "variant": variant, "error": str(e)})
                continue
            rows.append({"network": network, "variant": variant, "run_dir": str(run_dir),
                         "train_s": train_s, "eval_s": eval_s, **figures(run_dir)})
    settings = {"timesteps": args.timesteps, "scale": args.scale, "eval_every": args.eval_every,
                "seed": args.seed, "config": "configs/cpu-small.toml"}
    rows = earlier_rows(result_path("schedule_comparison", device_info()), settings, rows) + rows
    for f in failed:
        print(f"failed: {f['network']} {f['variant']}: {f['error']}")
    print(table(rows, [("network", "network", "s"), ("variant", "variant", "s"),
                       ("val_score", "val score", "+.3f"),
                       ("test_policy_sharpe", "test Sharpe", "+.3f"),
                       ("test_baseline_sharpe", "baseline", "+.3f"),
                       ("test_difference", "difference", "+.3f"),
                       ("test_share_won", "won", ".2f"),
                       ("test_dsr_median", "DSR", ".2f")]))
    path = save("schedule_comparison", device_info(), rows,
                settings={**settings, "failed": failed})
    print(f"saved {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

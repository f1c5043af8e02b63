#!/usr/bin/env bash
# The GPU checks: one script, under 8 minutes on a fresh GPU machine.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# 1. install: `pip install -e ".[cuda12]"`, unless the Python in use already has a JAX
#    that sees a GPU (an image with JAX preinstalled, or a machine without internet);
#    wheels in .whl/ (if any) are installed offline first, for images that lack a
#    dependency (arch, tensorboardX);
# 2. the throughput sweep: 4,096 / 16,384 / 65,536 envs, bf16, the reference network
#    (python -m benchmarks.throughput), into benchmarks/results/throughput_<device>_<date>.json;
# 3. a --high-vram training smoke run of a few iterations (65,536 envs x 512 steps, bf16)
#    whose summary (throughput, compile time, measured peak memory beside the estimate)
#    goes to benchmarks/results/train_smoke_<device>_<date>.json;
# 4. the population sweep (python -m benchmarks.population_sweep --gpu): 1, 4, 16, 64
#    members x 64 envs, reference network, bf16, each against one run of the same env
#    count, into benchmarks/results/population_sweep_<device>_<date>.json (the 64-member
#    row first, so a time limit keeps it);
# 5. where an iteration's time goes (python -m benchmarks.phases): 65,536 envs, bf16, the
#    reference network, each part of the iteration compiled and timed alone, and the joint
#    epochs' op time per minibatch step by part of the network, traced (its `op_profile`), into
#    benchmarks/results/phases_<device>_<date>.json; skipped when the steps before it left
#    less than PHASES_TIMEOUT of the 8 minutes.
#
# Each step has its own time limit, so one that fails or runs long leaves the others'
# figures. Logs go to $OUT (the device tool's folder) when set, else /tmp/gpu_check.
# Settings (environment variables): PYTHON (python3), SWEEP_ENVS ("4096 16384 65536"),
# SWEEP_ARGS (more benchmark flags), SMOKE_ARGS ("--high-vram --iterations 2"),
# POP_ARGS (more population-sweep flags), SWEEP_TIMEOUT (210 s), SMOKE_TIMEOUT (150 s),
# POP_TIMEOUT (90 s), PHASES_ARGS ("--n-envs 65536 --precision bf16"), PHASES_TIMEOUT
# (100 s, whole seconds), RESULTS (benchmarks/results), STEPS ("sweep smoke population phases": the
# checks to run, e.g. "smoke" to rerun one), SKIP_INSTALL
# (non-empty: no install step; for trying the script on a CPU).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp/gpu_check}
RESULTS=${RESULTS:-benchmarks/results}
SWEEP_ENVS=${SWEEP_ENVS:-"4096 16384 65536"}
SWEEP_ARGS=${SWEEP_ARGS:-}
SMOKE_ARGS=${SMOKE_ARGS:-"--high-vram --iterations 2"}
POP_ARGS=${POP_ARGS:-}
SWEEP_TIMEOUT=${SWEEP_TIMEOUT:-210}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-150}
POP_TIMEOUT=${POP_TIMEOUT:-90}
PHASES_ARGS=${PHASES_ARGS:-"--n-envs 65536 --precision bf16"}
PHASES_TIMEOUT=${PHASES_TIMEOUT:-100}
STEPS=${STEPS:-"sweep smoke population phases"}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS" "$RESULTS"
status=0
t0=$(date +%s)
stamp() { echo "== [$(($(date +%s) - t0)) s] $*"; }

stamp "install"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site .whl/*.whl && export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -n "${SKIP_INSTALL:-}" ]; then
    echo "SKIP_INSTALL set: using the Python in use as it is"
elif "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
    echo "JAX already sees a GPU; not installing (the cuda12 extra is for a fresh environment)"
else
    "$PY" -m pip install -q -e ".[cuda12]" || { echo "install failed"; exit 1; }
fi
"$PY" - <<'EOF' | tee "$LOGS/device.txt"
import jax, flax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__)
print("devices:", jax.devices())
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm \
    --format=csv | tee -a "$LOGS/device.txt"

if [[ " $STEPS " == *" sweep "* ]]; then
stamp "throughput sweep: n_envs $SWEEP_ENVS, bf16, reference network"
# shellcheck disable=SC2086
timeout "$SWEEP_TIMEOUT" "$PY" -m benchmarks.throughput --n-envs $SWEEP_ENVS --precision bf16 \
    --out "$RESULTS" $SWEEP_ARGS 2>&1 | tee "$LOGS/throughput.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "throughput sweep FAILED or timed out"; status=1; }
fi

if [[ " $STEPS " == *" smoke "* ]]; then
stamp "training smoke run: $SMOKE_ARGS"
rm -rf /tmp/gpu_check_smoke
# shellcheck disable=SC2086
timeout "$SMOKE_TIMEOUT" "$PY" -m jaxtrade.train $SMOKE_ARGS --run-dir /tmp/gpu_check_smoke \
    2>&1 | tee "$LOGS/smoke.log"
if [ "${PIPESTATUS[0]}" -eq 0 ] && [ -f /tmp/gpu_check_smoke/summary.json ]; then
    SMOKE_ARGS="$SMOKE_ARGS" "$PY" - "$RESULTS" <<'EOF' | tee -a "$LOGS/smoke.log"
import json, os, sys
from pathlib import Path
from benchmarks.common import device_info, save
from jaxtrade.memory import format_bytes
s = json.loads(Path("/tmp/gpu_check_smoke/summary.json").read_text())
m = s["memory"]
row = {k: s[k] for k in ("iterations", "timesteps", "n_envs", "n_params", "sps", "compile_s",
                         "init_s", "train_s", "wall_s", "market", "device")}
row.update(peak_bytes=m["peak_bytes"], peak_source=m["peak_source"],
           estimated_bytes=m["estimated_bytes"], budget_bytes=m["budget_bytes"],
           peak_over_estimate=(m["peak_bytes"] / m["estimated_bytes"]
                               if m["peak_bytes"] and m["estimated_bytes"] else None))
path = save("train_smoke", device_info(), [row], Path(sys.argv[1]),
            settings={"args": os.environ["SMOKE_ARGS"]})
print(f"smoke: {row['sps']:,.0f} steps/s over {row['timesteps']:,} steps, compile "
      f"{row['compile_s']:.1f} s, peak {format_bytes(m['peak_bytes'] or 0)} "
      f"({m['peak_source']}) vs estimate {format_bytes(m['estimated_bytes'])} -> {path}")
EOF
else
    echo "training smoke run FAILED or timed out"; status=1
fi
fi

if [[ " $STEPS " == *" population "* ]]; then
stamp "population sweep: --gpu (members 1 4 16 64 x 64 envs, reference network, bf16) $POP_ARGS"
# shellcheck disable=SC2086
timeout "$POP_TIMEOUT" "$PY" -m benchmarks.population_sweep --gpu --out "$RESULTS" $POP_ARGS \
    2>&1 | tee "$LOGS/population.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "population sweep FAILED or timed out (rows measured so far are saved)"; status=1; }
fi

if [[ " $STEPS " == *" phases "* ]]; then
[[ $PHASES_TIMEOUT =~ ^[0-9]+$ ]] || { echo "PHASES_TIMEOUT is seconds ($PHASES_TIMEOUT): 100 used"; PHASES_TIMEOUT=100; }
if [ $(($(date +%s) - t0 + PHASES_TIMEOUT)) -gt 480 ]; then
    stamp "phases: skipped, less than ${PHASES_TIMEOUT} s of the 8 minutes left (STEPS=phases runs it alone)"
else
stamp "phases: where an iteration's time goes, $PHASES_ARGS"
# shellcheck disable=SC2086
timeout "$PHASES_TIMEOUT" "$PY" -m benchmarks.phases --out "$RESULTS" $PHASES_ARGS \
    2>&1 | tee "$LOGS/phases.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "phases FAILED or timed out"; status=1; }
fi
fi

stamp "done, status $status"
find "$RESULTS" -name '*.json' -newer "$LOGS/device.txt" -exec cp {} "$LOGS"/ \;
exit $status

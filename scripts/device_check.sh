#!/usr/bin/env bash
# One prepared check of coco_jax on a machine with an accelerator (GPU or TPU).
#
#   bash scripts/device_check.sh                 # on the accelerator machine, <= 8 minutes
#   bash scripts/device_check.sh --cpu-smoke     # the same plumbing, shrunk, on a CPU (~2-4 min)
#   bash scripts/device_check.sh --out DIR       # where the JSON, logs and results go
#                                                # (default: $OUT if set, else a new temp dir)
#
# Steps, each timed and bounded by `timeout`:
#   1. platform: the JAX backend, its devices, jax/jaxlib versions (fails if the backend
#      is CPU, unless --cpu-smoke);
#   2. tests: the subset that matters on a device - the engine equals the NumPy
#      references and a hand-computed example, vmapped runs equal runs one by one, a
#      sweep equals single runs (mixed groups, chunking, memory batches), and a sweep
#      sharded over every local device equals single runs (tests/test_paper_scale.py);
#   3. bench: `coco-jax bench --quick --json` (step throughput, sweep throughput, roofline);
#   4. grid: the bench's grid section at the device's widths: one group of 8,192 paper-linreg
#      configurations (M = 100, d = 200, coco-ef; lr x p x seed), config-steps/s against
#      the cost model's bound (issue 17's target: >= 1,000,000 on one H200);
#   5. methods: the full methods study (100 devices, both paper settings).
# It ends with one short table. It installs nothing and downloads nothing: it needs the
# project installed with its test extra (pip install -e ".[test,cuda12]" or ".[test,tpu]").
set -euo pipefail

MODE=device
OUT_DIR="${OUT:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu-smoke) MODE=cpu-smoke; shift ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "device_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [[ -z "$OUT_DIR" ]]; then
    OUT_DIR="$(mktemp -d -t coco-jax-device-check-XXXXXX)"
fi
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# nothing is installed or fetched: the script calls no pip, and a pip that something
# might start finds no index
export PIP_NO_INDEX=1
# a fresh compilation cache: compile times are cold and nothing of the user's is touched
export COCO_JAX_CACHE_DIR="$OUT_DIR/xla-cache"

BENCH_SECTIONS=throughput,redundancy,sweep,compile,roofline
if [[ "$MODE" == cpu-smoke ]]; then
    export JAX_PLATFORMS=cpu
    PLATFORM_LIMIT=120 TESTS_LIMIT=400 BENCH_LIMIT=300 GRID_LIMIT=300 METHODS_LIMIT=600
    BENCH_ARGS=(--tiny --sections "$BENCH_SECTIONS")
    GRID_ARGS=(tiny 64 3 "4,8")
    METHODS_ARGS=(--quick)
    # two host devices, so that the sharded-sweep test really shards (and pads 5 -> 6)
    TEST_ENV=(XLA_FLAGS=--xla_force_host_platform_device_count=2)
    TEST_IDS=(
        "tests/test_engine.py::test_hand_computed_example"
        "tests/test_engine.py::test_references_match_engine"
        "tests/test_paper_scale.py::test_sweep_sharded_over_local_devices_equals_single_runs"
    )
else
    # 40 + 110 + 80 + 70 + 180 = 480 s at most: the 8-minute budget
    PLATFORM_LIMIT=40 TESTS_LIMIT=110 BENCH_LIMIT=80 GRID_LIMIT=70 METHODS_LIMIT=180
    BENCH_ARGS=(--quick --sections "$BENCH_SECTIONS")
    GRID_ARGS=(quick 8192 50 "1024,8192")
    METHODS_ARGS=()
    TEST_ENV=()
    TEST_IDS=(
        "tests/test_engine.py::test_hand_computed_example"
        "tests/test_engine.py::test_identity_without_stragglers_is_gradient_descent"
        "tests/test_engine.py::test_optimal_decoder_recovers_gradient_with_decodable_stragglers"
        "tests/test_engine.py::test_vmapped_runs_equal_runs_one_by_one"
        "tests/test_engine.py::test_dynamic_values_do_not_recompile"
        "tests/test_engine.py::test_references_match_engine"
        "tests/test_sweep.py::test_mixed_grid_equals_run_one_compilation_per_group"
        "tests/test_sweep.py::test_chunking_and_tail_interval_equal_run"
        "tests/test_sweep.py::test_memory_budget_batches_do_not_change_results"
        "tests/test_paper_scale.py"
    )
fi

declare -a ROWS=()
STATUS=0
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# run NAME LIMIT CMD...: time one step, keep its log, never stop the script on failure
run() {
    local name="$1" limit="$2"; shift 2
    local log="$OUT_DIR/$name.log" t0 t1 rc=0
    echo "== $name (limit ${limit}s): $*" >&2
    t0="$(now)"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1 || rc=$?
    t1="$(now)"
    tr '\r' '\n' <"$log" | grep -v '^[[:space:]]*$' | tail -n 3 >&2 || true
    LAST_RC=$rc
    LAST_SECS="$(secs "$t0" "$t1")"
    if [[ $rc -ne 0 ]]; then STATUS=1; fi
}

verdict() { if [[ "$1" -eq 0 ]]; then echo ok; elif [[ "$1" -eq 124 || "$1" -eq 137 ]]; then echo "timeout"; else echo "FAIL($1)"; fi; }

T_START="$(now)"

# 1. platform
run platform "$PLATFORM_LIMIT" "$PY" -c '
import jax, jaxlib, coco_jax
d = jax.devices()
print(f"platform={jax.default_backend()} devices={len(d)} kind={d[0].device_kind} jax={jax.__version__} jaxlib={jaxlib.__version__} coco_jax={coco_jax.__file__}")
'
PLATFORM_LINE="$(grep -m1 '^platform=' "$OUT_DIR/platform.log" || echo 'platform=?')"
echo "$PLATFORM_LINE" >&2
ROWS+=("platform|$(verdict $LAST_RC)|$LAST_SECS|$PLATFORM_LINE")
if [[ "$MODE" == device && "$PLATFORM_LINE" == platform=cpu* ]]; then
    echo "device_check.sh: JAX sees no accelerator (backend cpu); install jax[cuda12] or jax[tpu], or pass --cpu-smoke" >&2
    STATUS=1
fi

# 2. tests on the device (engine and sweep equal their references); float32 matmuls at
# full precision so that TF32 on a GPU does not hide behind the tolerances
run tests "$TESTS_LIMIT" env JAX_DEFAULT_MATMUL_PRECISION=highest "${TEST_ENV[@]}" \
    "$PY" -m pytest -q -p no:cacheprovider -n 0 "${TEST_IDS[@]}"  # one process: it owns the device
TESTS_LINE="$(grep -E '[0-9]+ (passed|failed)' "$OUT_DIR/tests.log" | tail -n1 || true)"
ROWS+=("tests|$(verdict $LAST_RC)|$LAST_SECS|${TESTS_LINE:-no summary line}")

# 3. bench
run bench "$BENCH_LIMIT" "$PY" -m coco_jax.cli bench "${BENCH_ARGS[@]}" --json "$OUT_DIR/bench.json"
BENCH_LINE="$("$PY" - "$OUT_DIR/bench.json" <<'EOF' 2>/dev/null || echo "no bench.json"
import json, sys
b = json.load(open(sys.argv[1]))
rows = [r for r in b.get("throughput") or [] if isinstance(r, dict) and "engine" in r]
if rows:
    r = max(rows, key=lambda r: r.get("M", 0) * r.get("d", 0))
    ms = 1e3 * r["engine"]["step_s"]
    xv = r.get("x_vectorized")
    print(f"largest case {r.get('task')} M={r.get('M')} d={r.get('d')}: engine {ms:.3g} ms/step"
          + (f", {xv:.2f}x vectorised NumPy" if isinstance(xv, (int, float)) else ""))
else:
    print("bench.json written (" + ", ".join(sorted(b)[:6]) + ")")
EOF
)"
ROWS+=("bench|$(verdict $LAST_RC)|$LAST_SECS|$BENCH_LINE")

# 4. the grid section at the device's widths (mode, configurations, steps, widths)
run grid "$GRID_LIMIT" "$PY" - "$OUT_DIR/grid.json" "${GRID_ARGS[@]}" <<'EOF'
import json, sys
from coco_jax.bench.grid import bench_grid
from coco_jax.bench.plan import make_plan
from coco_jax.bench.roofline import bench_roofline, combine_calibrations
path, mode, configs, steps, widths = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
plan = make_plan(mode, grid_configs=configs, grid_steps=steps, grid_widths=tuple(int(w) for w in widths.split(",")), grid_reps=3)
log = lambda m: print(m, file=sys.stderr, flush=True)
machine = combine_calibrations([bench_roofline(plan, log)])
result = bench_grid(plan, machine, log)
json.dump(result, open(path, "w"), indent=2, default=str)
best = max(result["rows"], key=lambda r: r["config_steps_per_s"])
share = "" if best["of_bound"] is None else f", {100 * best['of_bound']:.0f}% of the model bound"
print(f"grid {best['configs']} x {best['steps']}: {best['config_steps_per_s']:,.0f} cfg-steps/s at width {best['width']}{share}")
EOF
GRID_LINE="$(grep -m1 '^grid ' "$OUT_DIR/grid.log" || echo 'no grid line')"
ROWS+=("grid|$(verdict $LAST_RC)|$LAST_SECS|$GRID_LINE")

# 5. the full methods study (100 devices) into the output directory
run methods "$METHODS_LIMIT" "$PY" -m coco_jax.cli run experiments/methods.py "${METHODS_ARGS[@]}" \
    --out "$OUT_DIR/methods" --overwrite
METHODS_LINE="$("$PY" - "$OUT_DIR/methods/experiment.json" <<'EOF' 2>/dev/null || echo "no experiment.json"
import json, sys
m = json.load(open(sys.argv[1]))
parts = m.get("parts", {})
configs = sum(p.get("configs") or 0 for p in parts.values())
comp = sum(p.get("compile_s") or 0 for p in parts.values())
run = sum(p.get("run_s") or 0 for p in parts.values())
print(f"{configs} configs, compile {comp:.1f} s, run {run:.1f} s, total {m['wall_time_s']['total']:.1f} s, "
      f"{len(m.get('figures', {}))} figures")
EOF
)"
ROWS+=("methods|$(verdict $LAST_RC)|$LAST_SECS|$METHODS_LINE")

T_END="$(now)"
ROWS+=("total|$([[ $STATUS -eq 0 ]] && echo ok || echo FAIL)|$(secs "$T_START" "$T_END")|mode=$MODE, logs and JSON in $OUT_DIR")

echo
printf '%-9s %-10s %8s  %s\n' step status seconds detail
for row in "${ROWS[@]}"; do
    IFS='|' read -r a b c d <<<"$row"
    printf '%-9s %-10s %8s  %s\n' "$a" "$b" "$c" "$d"
done
exit $STATUS

#!/usr/bin/env bash
# GPU verification, everything under OUTDIR, in stages (in order of priority for a short GPU lease):
#   tests            the `gpu` test tier (kernels, bf16 runtime, CUDA-graph replay == eager, token statistics)
#   kernels          bench/run.py for $KERNEL_DTYPES (default "bf16 fp16 fp32")
#   runtime-small10  bench/runtime.py, magnet-small geometry, 10 s, B 1 4 16 64 (eager/graphs/triton/fused)
#   e2e              bench/e2e.py --device cuda vs audiocraft 1.3.0, small geometry, B 1 4 16
#   runtime-small30  30 s (1500 frames), B 1 4 16
#   runtime-medium10 magnet-medium geometry, B 1 4 16
#   ("runtime" = the three runtime stages; default: all stages)
#
#   bash bench/gpu_check.sh OUTDIR [STAGE...]
#
# The GPU machine is offline: first run `bash bench/gpu_wheels.sh` HERE and name `.whl` in the device
# tool's carry; this script installs soundfile, julius, audiocraft & co. from it and installs this repo
# without dependencies. One device call may run 10 minutes and returns at most 8 files, so set
# GPU_CHECK_TAR: the OUTDIR is packed into it after every stage and every stage runs under a time limit
# (STAGE_LIMIT_S, default 420 s), so a call that runs out of time still returns what finished. E.g.
#   run(command="GPU_CHECK_TAR=$OUT/gc1.tgz timeout 590 bash bench/gpu_check.sh /tmp/gc tests kernels",
#       carry=[".whl"])
#   run(command="GPU_CHECK_TAR=$OUT/gc2.tgz timeout 590 bash bench/gpu_check.sh /tmp/gc runtime-small10 e2e",
#       carry=[".whl"])
# then unpack into bench/results/ here and regenerate the README tables (python bench/report.py).
set -uo pipefail
OUT="${1:?usage: bench/gpu_check.sh OUTDIR [tests|kernels|runtime|runtime-small10|runtime-small30|runtime-medium10|e2e ...]}"
shift
STAGES="${*:-tests kernels runtime-small10 e2e runtime-small30 runtime-medium10}"
STAGES=" ${STAGES} "
STAGES="${STAGES// runtime / runtime-small10 runtime-small30 runtime-medium10 }"
LIMIT="${STAGE_LIMIT_S:-420}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
export PYTHONUNBUFFERED=1
pack() { if [ -n "${GPU_CHECK_TAR:-}" ]; then tar czf "$GPU_CHECK_TAR" -C "$(dirname "$OUT")" "$(basename "$OUT")"; fi; }
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 2
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import magnet_fast.kernels" 2>/dev/null || \
    python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1
{ nvidia-smi || true; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; \
  git rev-parse HEAD; git status --short | head -20; } > "$OUT/env.txt" 2>&1
pack
rc=0
has() { [[ "$STAGES" == *" $1 "* ]]; }
# unset TRITON_INTERPRET: conftest only sets it without CUDA, but an inherited value would hide the GPU
run_stage() {   # name, command...: time-limited, logged, packed
    local name=$1; shift
    env -u TRITON_INTERPRET timeout "$LIMIT" "$@" > "$OUT/$name.log" 2>&1 || { echo "$name: rc=$?"; rc=1; }
    tail -2 "$OUT/$name.log"
    pack
}
has tests && run_stage pytest-gpu python3 -m pytest -m gpu tests -p no:cacheprovider -rA --durations=20 \
    --junitxml "$OUT/pytest-gpu.xml"
if has kernels; then
    for dt in ${KERNEL_DTYPES:-bf16 fp16 fp32}; do
        run_stage "bench-$dt" python3 bench/run.py --dtype "$dt" --out "$OUT/bench-$dt"
    done
fi
has runtime-small10 && run_stage runtime-small-10s python3 bench/runtime.py --geometry small --duration 10 \
    --batches 1 4 16 64 --out "$OUT/runtime-small-10s"
if has e2e; then
    if python3 -c "import sys; sys.path.insert(0, 'tests/fixtures'); import ac_stubs; ac_stubs.install(); import audiocraft.models.loaders" 2>/dev/null; then
        cfgdir=.whl/ac-config; [ -d "$cfgdir" ] || cfgdir=.ac-dl/audiocraft-1.3.0/config
        run_stage e2e-cuda-small python3 bench/e2e.py --device cuda --config-dir "$cfgdir" --dim 1024 --heads 16 \
            --layers 24 --steps 20,10,10,10 --batches 1 4 16 --out "$OUT/e2e-cuda-small"
    else
        echo "e2e skipped: audiocraft not importable (run bench/gpu_wheels.sh here and carry .whl)" | tee "$OUT/e2e-skipped.txt"
        rc=1
    fi
fi
has runtime-small30 && run_stage runtime-small-30s python3 bench/runtime.py --geometry small --duration 30 \
    --batches 1 4 16 --out "$OUT/runtime-small-30s"
has runtime-medium10 && run_stage runtime-medium-10s python3 bench/runtime.py --geometry medium --duration 10 \
    --batches 1 4 16 --out "$OUT/runtime-medium-10s"
python3 bench/plot.py "$OUT"/*/results.json > "$OUT/plot.log" 2>&1 || echo "plots skipped (matplotlib?)"
pack
echo "gpu_check rc=$rc, stages:$STAGES results in $OUT"
exit $rc

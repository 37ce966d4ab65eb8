#!/usr/bin/env bash
# One-shot GPU verification, everything under OUTDIR:
#   tests    the `gpu` test tier (kernels, bf16 runtime, CUDA-graph replay == eager)
#   kernels  bench/run.py for fp16, bf16, fp32 (Triton vs SDPA / FlexAttention; fused sampler vs torch ops)
#   runtime  bench/runtime.py: small 10 s (B 1 4 16 64), small 30 s, medium 10 s; eager vs graphs, fused
#   e2e      bench/e2e.py --device cuda vs audiocraft 1.3.0 (needs audiocraft: carry .whl from gpu_wheels.sh)
#
#   bash bench/gpu_check.sh OUTDIR [STAGE...]       (default: all stages; needs CUDA)
#
# Before a GPU session, run `bash bench/gpu_wheels.sh` here and name `.whl` in the device tool's carry:
# this script then installs soundfile, julius, audiocraft & co. from it (the GPU machine is offline) and
# installs this repo without dependencies if it is not importable. One call is limited to 10 minutes:
# if everything does not fit, run `tests kernels` and `runtime e2e` as two calls. The device tool returns
# at most 8 files, so pack the folder: run(command="bash bench/gpu_check.sh /tmp/gc tests kernels;
# tar czf $OUT/gc.tgz -C /tmp gc", carry=[".whl"]), then unpack the results into bench/results/.
set -uo pipefail
OUT="${1:?usage: bench/gpu_check.sh OUTDIR [tests|kernels|runtime|e2e ...]}"
shift
STAGES="${*:-tests kernels runtime e2e}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
export PYTHONUNBUFFERED=1
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 2
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import magnet_fast.kernels" 2>/dev/null || \
    python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1
{ nvidia-smi || true; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; \
  git rev-parse HEAD; git status --short | head -20; } > "$OUT/env.txt" 2>&1
rc=0
has() { [[ " $STAGES " == *" $1 "* ]]; }
if has tests; then
    # unset TRITON_INTERPRET: conftest only sets it without CUDA, but an inherited value would hide the GPU
    env -u TRITON_INTERPRET python3 -m pytest -m gpu tests -p no:cacheprovider -rA --durations=20 \
        --junitxml "$OUT/pytest-gpu.xml" > "$OUT/pytest-gpu.log" 2>&1 || rc=1
    tail -3 "$OUT/pytest-gpu.log"
fi
if has kernels; then
    for dt in fp16 bf16 fp32; do
        env -u TRITON_INTERPRET python3 bench/run.py --dtype "$dt" --out "$OUT/bench-$dt" > "$OUT/bench-$dt.log" 2>&1 || rc=1
        tail -1 "$OUT/bench-$dt.log"
    done
fi
if has runtime; then
    for spec in "small 10 1 4 16 64" "small 30 1 4 16" "medium 10 1 4 16"; do
        set -- $spec
        geo=$1; dur=$2; shift 2
        env -u TRITON_INTERPRET python3 bench/runtime.py --geometry "$geo" --duration "$dur" --batches "$@" \
            --out "$OUT/runtime-$geo-${dur}s" > "$OUT/runtime-$geo-${dur}s.log" 2>&1 || rc=1
        tail -1 "$OUT/runtime-$geo-${dur}s.log"
    done
fi
if has e2e; then
    if python3 -c "import sys; sys.path.insert(0, 'tests/fixtures'); import ac_stubs; ac_stubs.install(); import audiocraft.models.loaders" 2>/dev/null; then
        cfgdir=.whl/ac-config; [ -d "$cfgdir" ] || cfgdir=.ac-dl/audiocraft-1.3.0/config
        env -u TRITON_INTERPRET python3 bench/e2e.py --device cuda --config-dir "$cfgdir" --dim 1024 --heads 16 \
            --layers 24 --steps 20,10,10,10 --batches 1 4 16 --out "$OUT/e2e-cuda-small" > "$OUT/e2e-cuda-small.log" 2>&1 || rc=1
        tail -2 "$OUT/e2e-cuda-small.log"
    else
        echo "e2e skipped: audiocraft not importable (run bench/gpu_wheels.sh here and carry .whl)" | tee "$OUT/e2e-skipped.txt"
        rc=1
    fi
fi
python3 bench/plot.py "$OUT"/*/results.json > "$OUT/plot.log" 2>&1 || echo "plots skipped (matplotlib?)"
echo "gpu_check rc=$rc, stages: $STAGES, results in $OUT"
exit $rc

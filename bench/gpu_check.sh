#!/usr/bin/env bash
# One-shot GPU verification: the `gpu` test tier (kernels + runtime), all kernel benchmarks and the runtime
# benchmark (bench/runtime.py), everything under OUTDIR.
#   bash bench/gpu_check.sh OUTDIR          (run from anywhere; needs CUDA, the package installed editable)
set -uo pipefail
OUT="${1:?usage: bench/gpu_check.sh OUTDIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 2
{ nvidia-smi || true; python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; \
  git rev-parse HEAD; } > "$OUT/env.txt" 2>&1
rc=0
# unset TRITON_INTERPRET: conftest only sets it without CUDA, but an inherited value would hide the GPU
env -u TRITON_INTERPRET pytest -m gpu tests \
    -p no:cacheprovider -rA --durations=20 --junitxml "$OUT/pytest-gpu.xml" > "$OUT/pytest-gpu.log" 2>&1 || rc=1
tail -3 "$OUT/pytest-gpu.log"
for dt in fp16 bf16 fp32; do
    env -u TRITON_INTERPRET python bench/run.py --dtype "$dt" --out "$OUT/bench-$dt" > "$OUT/bench-$dt.log" 2>&1 || rc=1
    tail -1 "$OUT/bench-$dt.log"
done
# runtime latency/throughput (random weights, released geometries); sdpa vs triton banded attention
for spec in "small 10 1 4 16 64" "small 30 1 4 16" "medium 10 1 4 16"; do
    set -- $spec
    geo=$1; dur=$2; shift 2
    env -u TRITON_INTERPRET python bench/runtime.py --geometry "$geo" --duration "$dur" --batches "$@" \
        --out "$OUT/runtime-$geo-${dur}s" > "$OUT/runtime-$geo-${dur}s.log" 2>&1 || rc=1
    tail -1 "$OUT/runtime-$geo-${dur}s.log"
done
python bench/plot.py "$OUT"/*/results.json > "$OUT/plot.log" 2>&1 || echo "plots skipped (matplotlib?)"
echo "gpu_check rc=$rc, results in $OUT"
exit $rc

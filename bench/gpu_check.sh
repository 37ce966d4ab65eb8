#!/usr/bin/env bash
# GPU verification in stages, everything under OUTDIR, sized for a 15-minute device lease: ONE call of
# <= 9 minutes (the plan below), leaving time for one retry of what failed.
#
#   bash bench/gpu_check.sh OUTDIR [STAGE...]
#
# Stages (in plan order; docs/gpu-plan.md says what each answers and its limit):
#   tests        the `gpu` test tier on the GPU test files (kernels, bf16 runtime at head dim 16 and 64,
#                CUDA-graph replay == eager for plain MAGNeT, rescoring, hybrid, long-form, stride-1 spans
#                and MusicGen, token statistics vs CPU fp32)                                      limit 100 s
#   runtime      bench/runtime.py: small geometry, 10 s, B 1/16/64, triton+graphs and
#                triton+fused+graphs (replays timed: policy True, warm-up with the same shape)    limit 110 s
#   profile      bench/profile_step.py: one replayed step (and its eager twin) by kernel kind,
#                small, B 1, triton+fused+graphs                                                  limit 35 s
#   e2e          bench/e2e.py vs audiocraft 1.3.0 (fp16 autocast, same weights), small, B 1 and 16  limit 110 s
#   musicgen     bench/e2e.py --model musicgen vs audiocraft's MusicGen, small, 10 s, B 1           limit 70 s
#   paper        bench/paper.py: MAGNeT, +rescoring, Hybrid 1/3/5 s, MusicGen alone, small, 10 s, B 1,
#                graphs recorded in a warm-up round, 3 timed rounds of replays                    limit 90 s
#   kernels      bench/run.py --dtype bf16 at the release shapes (not in the plan: kernel microbenchmarks)
#   optional (only with time left after the plan and a retry): kernels-more (fp16, fp32), runtime-small30,
#                runtime-medium10
#   plan         = tests runtime profile e2e musicgen paper (the default)
#   quick        = every stage above at toy sizes (the dry run CI rehearses: GPU_CHECK_DRY=1)
#
# The one-call plan (15 min of device time in all; the machine start, ~1-2 min, counts). Before it, HERE:
# `bash bench/gpu_wheels.sh` (the audiocraft wheels and configs the device cannot download), then:
#     run(command="GPU_CHECK_TAR=$OUT/gc.tgz timeout 540 bash bench/gpu_check.sh /tmp/gc plan",
#         carry=[".whl"], timeout_s=570)
# Stage limits sum to 515 s (+ ~20 s install/env); each stage runs under its own limit (STAGE_LIMIT_S
# overrides all) and OUTDIR is packed into $GPU_CHECK_TAR (a temp file, then mv) after every stage, so a
# call killed at its limit still returns what finished; the benchmark scripts also write their results
# after every case. A second call only retries the stages in $OUT/FAILED.txt, e.g.
#     run(command="GPU_CHECK_TAR=$OUT/gc2.tgz timeout 240 bash bench/gpu_check.sh /tmp/gc paper", ...)
# Then, here: unpack each tarball into bench/results/ (tar xzf; one folder per stage), `python bench/report.py`.
#
# Dry run on CPU (CI runs it through tests/bench/test_gpu_check_dry.py): every stage and the plumbing at toy
# sizes: the wheels installed from .whl/ into a target dir for CPython 3.12, the kernels under the Triton
# interpreter, runtime, profile, e2e, musicgen and paper at a toy geometry, packing, results JSON, plots,
# README tables:
#   GPU_CHECK_DRY=1 bash bench/gpu_check.sh OUTDIR quick
set -uo pipefail
# started from a test of an xdist run: its pytest stages are sessions of their own (pytest-benchmark
# disables itself when it sees an xdist worker's variables)
unset PYTEST_XDIST_WORKER PYTEST_XDIST_WORKER_COUNT PYTEST_XDIST_TESTRUNUID
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
OUT="${1:?usage: bench/gpu_check.sh OUTDIR [plan|quick|tests|runtime|profile|e2e|musicgen|paper|kernels|kernels-more|runtime-small30|runtime-medium10 ...]}"
shift
DRY="${GPU_CHECK_DRY:-0}"
STAGES=" ${*:-plan} "
STAGES="${STAGES// plan / tests runtime profile e2e musicgen paper }"
STAGES="${STAGES// quick / tests kernels runtime profile e2e musicgen paper }"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # the checkout under test, never an installed copy
PY="${PYTHON:-python3}"
pack() {   # atomic: a kill during tar leaves the previous archive intact
    if [ -n "${GPU_CHECK_TAR:-}" ]; then
        tar czf "$GPU_CHECK_TAR.tmp" -C "$(dirname "$OUT")" "$(basename "$OUT")" && mv -f "$GPU_CHECK_TAR.tmp" "$GPU_CHECK_TAR"
    fi
}
fail() { echo "gpu_check: $*" | tee -a "$OUT/FAILED.txt"; pack; exit 2; }

if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
    DEVICE=cpu
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || fail "no CUDA device"
    DEVICE=cuda
fi

# --- offline install: carried wheels into a target dir, this repo without deps, then verify the imports
if [ -d .whl ]; then
    if [ "$DRY" = 1 ]; then    # the device's CPython 3.12: check the set installs there, import the pure ones
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$OUT/site312" \
            --python-version 3.12 --implementation cp --only-binary=:all: \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            .whl/*.whl > "$OUT/wheels.log" 2>&1 || fail "wheel install failed (see wheels.log)"
        # the pure-Python ones must import from the target dir itself (not from this machine's packages)
        PYTHONPATH="$OUT/site312" "$PY" -c "import importlib, sys; bad = [m for m in ('omegaconf', 'num2words', 'docopt') if not importlib.import_module(m).__file__.startswith(sys.argv[1])]; sys.exit(f'not from the wheels: {bad}' if bad else 0)" "$OUT/site312" \
            >> "$OUT/wheels.log" 2>&1 || fail "a carried wheel is missing or broken (see wheels.log)"
        for w in soundfile cffi pycparser julius audiocraft; do
            ls .whl/"$w"-*.whl > /dev/null 2>&1 || fail "no $w wheel in .whl (run bench/gpu_wheels.sh)"
        done
        rm -rf "$OUT/site312"
    else
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl > "$OUT/wheels.log" 2>&1 || fail "wheel install failed (see wheels.log)"
        export PYTHONPATH=$PYTHONPATH:/tmp/site
    fi
fi
if ! "$PY" -c "import magnet_fast.kernels.banded_attn, magnet_fast.engines.magnet" 2> /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . > "$OUT/install.log" 2>&1
    "$PY" -c "import magnet_fast.kernels.banded_attn, magnet_fast.engines.magnet" >> "$OUT/install.log" 2>&1 \
        || { tail -20 "$OUT/install.log"; fail "magnet_fast does not import after installing (see install.log)"; }
fi
{ nvidia-smi 2>/dev/null || echo "no nvidia-smi (dry run: $DRY)"
  "$PY" -c "import sys, torch, triton, transformers; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
  git rev-parse HEAD; git status --short | head -20; date -u; } > "$OUT/env.txt" 2>&1
pack

rc=0
has() { [[ "$STAGES" == *" $1 "* ]]; }
run_stage() {   # name, limit_s, command...: time-limited, logged, packed
    local name=$1 limit=${STAGE_LIMIT_S:-$2}; shift 2
    [ "$DRY" = 1 ] && [ -z "${STAGE_LIMIT_S:-}" ] && limit=300   # toy sizes on a shared CPU: time is not the test
    local t0=$SECONDS
    if [ "$DRY" = 1 ]; then
        timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    else   # conftest sets TRITON_INTERPRET only without CUDA; an inherited value would hide the GPU
        env -u TRITON_INTERPRET timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    fi
    local code=$?
    [ "$code" = 0 ] || { rc=1; echo "$name: rc=$code$([ "$code" = 124 ] && echo " (time limit ${limit}s)")" | tee -a "$OUT/FAILED.txt"; }
    echo "$name: $((SECONDS - t0)) s"; tail -2 "$OUT/$name.log"
    pack
}
GPU_TESTS="tests/kernel_ops/test_banded_attn.py tests/kernel_ops/test_sample.py tests/engines/test_gpu_runtime.py tests/engines/test_musicgen.py"
if [ "$DRY" = 1 ]; then   # collection of the GPU files (all skip) + the D=16 and fused-sampler interpreter tests
    has tests && run_stage pytest-gpu 300 "$PY" -m pytest $GPU_TESTS -p no:cacheprovider -q -rA \
        -k "gpu or D16 or single_inf" --junitxml "$OUT/pytest-gpu.xml"
    KERNEL_ARGS=(--device cpu --dtype fp32 --tiny --min-rounds 1 --max-time 0.01)   # plumbing, not timings
    RUNTIME_ARGS=(--device cpu --geometry tiny --batches 1 --steps 2,1,1,1 --repeats 1 --variants windowed --no-codec)
    PROFILE_ARGS=(--device cpu --geometry tiny --steps 2,1,1,1 --variant windowed)
    E2E_PY=.venv-audiocraft/bin/python
    E2E_ARGS=(--dim 64 --heads 4 --layers 2 --steps 2,1,1,1 --batches 1 --repeats 1 --providers audiocraft windowed)
    CFG_DIR=.ac-dl/audiocraft-1.3.0/config
else
    has tests && run_stage pytest-gpu 100 "$PY" -m pytest -m gpu $GPU_TESTS -p no:cacheprovider -rA \
        --durations=15 --junitxml "$OUT/pytest-gpu.xml"
    KERNEL_ARGS=(--device cuda --dtype bf16)
    RUNTIME_ARGS=(--device cuda --geometry small --duration 10 --batches 1 16 64 --repeats 3
                  --variants triton+graphs triton+fused+graphs)
    PROFILE_ARGS=(--device cuda --geometry small --batch 1 --variant triton+fused+graphs)
    E2E_PY="$PY"
    E2E_ARGS=(--device cuda --dim 1024 --heads 16 --layers 24 --steps 20,10,10,10 --batches 1 16 --repeats 3
              --providers audiocraft triton+graphs triton+fused+graphs)
    CFG_DIR=.whl/ac-config; [ -d "$CFG_DIR" ] || CFG_DIR=.ac-dl/audiocraft-1.3.0/config
fi
has kernels && run_stage bench-bf16 130 "$PY" bench/run.py "${KERNEL_ARGS[@]}" --out "$OUT/bench-bf16"
has runtime && run_stage runtime-small-10s 110 "$PY" bench/runtime.py "${RUNTIME_ARGS[@]}" --out "$OUT/runtime-small-10s"
has profile && run_stage profile-step 35 "$PY" bench/profile_step.py "${PROFILE_ARGS[@]}" --out "$OUT/profile-step"
e2e() {   # name, extra args...
    local name=$1; shift
    if "$E2E_PY" -c "import sys; sys.path.insert(0, 'tests/fixtures'); import ac_stubs; ac_stubs.install(); import audiocraft.models.loaders" > "$OUT/$name-import.log" 2>&1; then
        run_stage "$name" 110 "$E2E_PY" bench/e2e.py --config-dir "$CFG_DIR" "${E2E_ARGS[@]}" "$@" --out "$OUT/$name"
    else
        tail -4 "$OUT/$name-import.log"
        echo "$name skipped: audiocraft not importable (see $name-import.log; run bench/gpu_wheels.sh here and carry .whl)" | tee -a "$OUT/FAILED.txt"
        rc=1
    fi
}
has e2e && e2e e2e-cuda-small
if has musicgen; then      # MusicGen vs audiocraft's (static KV-cache step + CUDA graph on the GPU)
    if [ "$DRY" = 1 ]; then MG_ARGS=(--dim 64 --heads 4 --layers 2 --seconds 0.5 --batches 1 --repeats 1 --providers audiocraft sdpa)
    else MG_ARGS=(--device cuda --dim 1024 --heads 16 --layers 24 --seconds 10 --batches 1 --repeats 3 --providers audiocraft sdpa); fi
    run_stage e2e-musicgen 70 "$E2E_PY" bench/e2e.py --model musicgen --config-dir "$CFG_DIR" "${MG_ARGS[@]}" \
        --out "$OUT/e2e-musicgen"
fi
if has paper; then         # the paper's latency trade-off on this engine (rescoring / hybrid / MusicGen)
    # dry: 1 s has 16 spans (the model is built with --steps as its defaults); stage 1 needs 2 steps for a
    # rescored step to time
    if [ "$DRY" = 1 ]; then PAPER_ARGS=(--dim 64 --heads 4 --layers 2 --duration 1 --steps 2,2,1,1 --repeats 1 --hybrid-seconds 0.2)
    else PAPER_ARGS=(--device cuda --dim 1024 --heads 16 --layers 24 --repeats 3); fi
    run_stage paper 90 "$PY" bench/paper.py "${PAPER_ARGS[@]}" --out "$OUT/paper"
fi
# optional stages (GPU only; not in the plan)
if has kernels-more; then
    for dt in fp16 fp32; do run_stage "bench-$dt" 120 "$PY" bench/run.py --device cuda --dtype "$dt" --out "$OUT/bench-$dt"; done
fi
if has kernels-bwd; then   # banded-attention backward: its GPU tests, then Triton vs SDPA/Flex backward (bf16)
    run_stage pytest-gpu-bwd 200 "$PY" -m pytest -m gpu tests/kernel_ops/test_banded_attn_bwd.py -p no:cacheprovider \
        -rA --junitxml "$OUT/pytest-gpu-bwd.xml"
    run_stage bench-bwd 240 "$PY" -m pytest bench/test_kernels_bwd.py --benchmark-only -p no:cacheprovider -q \
        --kernel-dtype bf16 --benchmark-max-time 0.3 --benchmark-json "$OUT/bench-bwd.json"
fi
has runtime-small30 && run_stage runtime-small-30s 200 "$PY" bench/runtime.py --device cuda --geometry small \
    --duration 30 --batches 1 4 --out "$OUT/runtime-small-30s"
has runtime-medium10 && run_stage runtime-medium-10s 200 "$PY" bench/runtime.py --device cuda --geometry medium \
    --duration 10 --batches 1 16 --out "$OUT/runtime-medium-10s"
"$PY" bench/plot.py "$OUT"/*/results.json > "$OUT/plot.log" 2>&1 || echo "plots skipped (matplotlib?)"
pack
echo "gpu_check rc=$rc dry=$DRY stages:$STAGES results in $OUT"
exit $rc

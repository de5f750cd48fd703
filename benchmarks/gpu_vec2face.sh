#!/usr/bin/env bash
# Vec2Face rendering speed on one GPU (H100/H200): the full-size generator with random
# deterministic weights (speed only), images/s of the pipeline and of a bare forward loop at batch
# 64-1024 in bf16 and fp16 with SDPA attention, then torch.compile; peak memory and the share of the
# chip's dense bf16 peak (VEC2FACE_PEAK_TFLOPS, default 989 for an H100/H200 SXM). Goal: >= 3,000
# images/s. Needs only torch with CUDA (no wheels to carry); finishes in under 5 minutes and leaves
# gpu_vec2face.json and gpu_vec2face.log in $OUT (else out/gpu-vec2face/).
#
#   device tool: bash benchmarks/gpu_vec2face.sh            (timeout_s 330)
#
# Knobs: VEC2FACE_SECONDS (hard limit, default 280), PYTHON (default python3); extra arguments go to
# benchmarks/bench_vec2face.py.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
RESULTS=${OUT:-out/gpu-vec2face}
mkdir -p "$RESULTS"
exec > >(tee "$RESULTS/gpu_vec2face.log") 2>&1

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_vec2face: no CUDA GPU visible to $PY; on a CPU run: python benchmarks/bench_vec2face.py"
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LIMIT=${VEC2FACE_SECONDS:-280}
START=$(date +%s)
PYTHONUNBUFFERED=1 timeout --kill-after=10 "$LIMIT" "$PY" benchmarks/bench_vec2face.py --device cuda \
    --batch 64 256 1024 --precision bf16 fp16 --attention sdpa --compile --repeats 5 \
    --peak-tflops "${VEC2FACE_PEAK_TFLOPS:-989}" --out "$RESULTS/gpu_vec2face.json" "$@"
rc=$?
(( rc == 124 || rc == 137 )) && echo "gpu_vec2face: killed at the ${LIMIT} s limit; no JSON written"
echo "gpu_vec2face: exit $rc after $(( $(date +%s) - START )) s; results in $RESULTS/gpu_vec2face.json"
exit $rc

#!/usr/bin/env bash
# Vec2Face rendering speed on one GPU (H100/H200): the full-size generator with random
# deterministic weights (speed only), images/s of the pipeline and of a bare forward loop at batch
# 64-1024 in bf16 and fp16 with SDPA attention, then torch.compile; peak memory and the share of the
# chip's dense bf16 peak (VEC2FACE_PEAK_TFLOPS, default 989 for an H100/H200 SXM). Goal: >= 3,000
# images/s. Needs the wheels of gpu_suite.sh (device tool: carry [".whl"]); finishes in under 5 minutes and leaves
# gpu_vec2face.json and gpu_vec2face.log in $OUT (else out/gpu-vec2face/).
#
#   device tool: bash benchmarks/gpu_vec2face.sh            (carry [".whl"], timeout_s 330)
#
# Knobs: VEC2FACE_SECONDS (hard limit, default 280), PYTHON (default python3); extra arguments go to
# benchmarks/bench_vec2face.py.
set -uo pipefail
cd "$(dirname "$0")/.."

source benchmarks/gpu_common.sh
# synthface.generators imports diffusers (the Arc2Face pipeline beside Vec2Face's): carry the wheels.
gpu_setup gpu_vec2face 'import diffusers, scipy, safetensors, synthface.generators.vec2face.pipeline'
LIMIT=${VEC2FACE_SECONDS:-280}
PYTHONUNBUFFERED=1 timeout --kill-after=10 "$LIMIT" "$PY" benchmarks/bench_vec2face.py --device cuda \
    --batch 64 256 1024 --precision bf16 fp16 --attention sdpa --compile --repeats 5 \
    --peak-tflops "${VEC2FACE_PEAK_TFLOPS:-989}" --out "$RESULTS/gpu_vec2face.json" "$@"
gpu_finish gpu_vec2face $? "$RESULTS/gpu_vec2face.json"

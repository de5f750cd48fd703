#!/usr/bin/env bash
# IDiff-Face sampling speed on one GPU (H100/H200): the published architecture (216M-parameter UNet,
# VQ-f4 decoder) with random deterministic weights built on the machine (speed only; no downloads:
# the GPU machine reaches nothing outside it). images/s of whole pipeline calls at 50 DDIM steps
# (decoded 112 x 112 images back on the CPU) for sampler "cfg" (IDperturb) and "uiface" (UIFace's
# two stages), batch 1, 8, 32, 64, 128, bf16 then fp32, with peak memory, TFLOP/s and the share of
# the chip's dense bf16 peak (IDIFF_PEAK_TFLOPS, default 989 for an H100/H200 SXM). Then, as the
# budget allows, at bf16, batch 1 and 64: the pipeline against a bare loop of the same UNet calls,
# the two-stage sampler's one forward per step against two, and per-image vs global rng.
# One 50-step cfg image is 100 NFE x 13.95 GFLOP + a 161 GFLOP decode = 1.56 TFLOP. The sweep is
# about 700 images per sampler and precision (3 timed calls per config): at an assumed 150 TFLOP/s in
# bf16 and 40 in fp32 that is ~2 minutes of sampling in all, plus the latency-bound small batches,
# the build (~20 s) and the ratios; an estimate, as no GPU was lent when this was written, so
# bench_idiff.py also skips whatever its budget (IDIFF_SECONDS - 60 s) would not fit, and the hard
# limit (timeout) is IDIFF_SECONDS. Needs the wheels of gpu_suite.sh (diffusers); finishes in under
# 7 minutes and leaves gpu_idiff.json and gpu_idiff.log in $OUT (else out/gpu-idiff/).
#
#   device tool: bash benchmarks/gpu_idiff.sh            (carry [".whl"], timeout_s 420)
#
# Without a CUDA GPU it exits 2 with a message. IDIFF_GPU_CPU=1 is a dry run of this script on a CPU
# (tiny models, 3 steps, batch 1 and 2). Knobs: IDIFF_SECONDS (hard limit, default 360),
# IDIFF_BUDGET (bench_idiff's own budget, default IDIFF_SECONDS - 60), PYTHON (default python3);
# extra arguments go to benchmarks/bench_idiff.py (e.g. --batch 8 64 --precision bf16).
set -uo pipefail
cd "$(dirname "$0")/.."

source benchmarks/gpu_common.sh
DEVICE_ARGS=(--device cuda)
if [[ "${IDIFF_GPU_CPU:-}" == 1 ]]; then
    export GPU_CPU_DRY_RUN=1
    DEVICE_ARGS=(--device cpu --tiny --steps 3 --batch 1 2 --ratio-batch 2)
fi
# synthface.generators.idiff.pipeline is a diffusers pipeline: carry the wheels.
gpu_setup gpu_idiff 'import diffusers, scipy, safetensors, synthface.generators.idiff.pipeline'
LIMIT=${IDIFF_SECONDS:-360}
BUDGET=${IDIFF_BUDGET:-$(( LIMIT - 60 ))}
PYTHONUNBUFFERED=1 timeout --kill-after=10 "$LIMIT" "$PY" benchmarks/bench_idiff.py --sweep "${DEVICE_ARGS[@]}" \
    --budget "$BUDGET" --peak-tflops "${IDIFF_PEAK_TFLOPS:-989}" --out "$RESULTS/gpu_idiff.json" "$@"
gpu_finish gpu_idiff $? "$RESULTS/gpu_idiff.json"
